"""Stage work in worker processes, so that `-j N` runs N stages truly in parallel.

Tracing and the TorchScript ONNX exporter hold the GIL and keep process-wide state (they take
turns behind `modelsource.TORCH_LOCK` within one process), so threads alone gave `-j 2` no
speed-up. With `-j N > 1` each stage's work runs in one of N spawned worker processes; the
parent keeps deciding, restoring, hashing and publishing. A worker gets plain data (the
validated recipe, parameters, folders) and returns the stage's metrics or its error text.

User code cannot fake success (`execute_job`): while a stage runs, `sys.exit()` and `os._exit()`
fail the stage instead of ending bmbuild with their status, and a worker that dies without a
result fails its stage. Stages stay in this process with `-j 1`: a worker there would cost every
run that traces a spawn and a torch import (measured: a 2-stage tiny build 2.4 s -> 3.9 s), so
`os._exit` is replaced while stage code runs instead. What that cannot stop (a C library's
`exit()`, a signal) still ends a `-j 1` run, with a non-zero status unless the code chose 0.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import shutil
import textwrap
import threading
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

from bmbuild.errors import BmbuildError, InternalError, StageFailed, UserCodeError
from bmbuild.recipe import LoadedRecipe

if TYPE_CHECKING:
    from bmbuild.progress import StageProgress
    from bmbuild.stagelog import StageLog

_REAL_EXIT = os._exit
_EXIT_MODULES = (os, importlib.import_module(os.name))  # os._exit is posix._exit (nt._exit)


class WorkerStageError(BmbuildError):
    """A stage failed in a worker; carries the error text, exit code and whether to show the log tail."""

    def __init__(self, result: "JobResult"):
        super().__init__(result.error)
        self.exit_code = result.exit_code
        self.shows_log_tail = result.shows_log_tail


@dataclass(frozen=True)
class JobResult:
    """What a worker sends back: the stage's metrics, or its error."""

    metrics: dict[str, Any] | None = None  # None: the stage failed
    error: str = ""
    exit_code: int = 1
    shows_log_tail: bool = True


@dataclass(frozen=True)
class StageJob:
    """Everything a worker needs to run one stage (picklable)."""

    loaded: LoadedRecipe
    stage: str
    toolchain: str | None
    params: dict[str, Any]
    inputs: dict[str, Path]
    out_dir: Path
    work_dir: Path
    log_path: Path
    progress_path: Path | None = None  # where a worker writes the stage's progress (bmbuild.progress)


def _die_with_parent() -> None:
    """A worker exits when bmbuild dies (killed, say), so no orphan keeps writing.

    (PR_SET_PDEATHSIG would fire when the *thread* that started the worker ends, and doit's
    worker threads end all the time.)
    """
    import os
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        _REAL_EXIT(1)  # not the os._exit a running stage sees (_exits_refused)

    threading.Thread(target=watch, daemon=True, name="bmbuild-parent-watch").start()


def _init_worker(threads: int) -> None:
    """Share the cores between the workers: N workers x all cores each only thrash."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # torch reads it at import
    os.environ["BMBUILD_THREADS"] = str(threads)             # onnxruntime sessions (reference.py)
    _die_with_parent()


class _ExitCalled(SystemExit):
    """Raised in place of `os._exit(status)` while a stage's code runs."""


@contextmanager
def _exits_refused() -> Iterator[list[str]]:
    """While the block runs, `os._exit(n)` raises instead of ending the process; yields the calls.

    A stage runs alone in its process (`-j 1` runs one stage at a time; a worker one stage), so
    replacing the function for the whole process is safe; the parent-watch thread of a worker
    keeps the real one, and so does a process the stage's code forks.
    """
    calls: list[str] = []
    pid = os.getpid()

    def refuse(status: int) -> NoReturn:
        if os.getpid() != pid:  # a child the code forked (multiprocessing ends them with os._exit)
            _REAL_EXIT(status)
        calls.append(f"os._exit({status!r})")
        raise _ExitCalled(status)

    for module in _EXIT_MODULES:
        module._exit = refuse  # type: ignore[attr-defined]
    try:
        yield calls
    finally:
        for module in _EXIT_MODULES:
            module._exit = _REAL_EXIT  # type: ignore[attr-defined]


def _exit_message(call: str) -> str:
    return f"the code called {call}: a stage must return or raise, not end the process; nothing was published"


def _exit_call(exc: SystemExit) -> str:
    if isinstance(exc, _ExitCalled):
        return f"os._exit({exc.code!r})"
    return "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"


def _user_code_error(message: str, exc: BaseException, log: "StageLog") -> UserCodeError:
    """`message` and the user's frames of `exc`; the full traceback goes to the stage's log."""
    from bmbuild.modelsource import user_traceback

    log.write_raw("".join(traceback.format_exception(exc)))
    frames = user_traceback(exc)
    return UserCodeError(message + ("\n" + textwrap.indent(frames, "  ") if frames else ""))


def _raised_by_bmbuild(exc: BaseException) -> bool:
    """True when `exc` was raised in bmbuild's own code and no user frame is on its way: a bug."""
    from bmbuild.modelsource import user_traceback

    frames = traceback.extract_tb(exc.__traceback__)
    package = Path(__file__).resolve().parent
    return bool(frames) and not user_traceback(exc) and Path(frames[-1].filename).resolve().is_relative_to(package)


def _internal_error(exc: BaseException, log: "StageLog") -> InternalError:
    """A bug in bmbuild: its traceback in the message and in the stage's log."""
    text = "".join(traceback.format_exception(exc))
    log.write_raw(text)
    return InternalError(f"internal error (a bug in bmbuild, please report it):\n{textwrap.indent(text.rstrip(), '  ')}")


def _with_user_frames(exc: BmbuildError, log: "StageLog") -> BmbuildError:
    """A StageFailed raised on catching the user's exception (`torch.jit.trace failed: ...`) gains
    the frames of the user's code in that exception; any other error stays as it is."""
    from bmbuild.modelsource import user_traceback

    cause = exc.__cause__ or exc.__context__
    if type(exc) is not StageFailed or cause is None or isinstance(cause, BmbuildError) or not user_traceback(cause):
        return exc
    return _user_code_error(str(exc), cause, log)


def execute_job(job: StageJob, log: "StageLog", toolchain: Any = None,
                on_progress: "Callable[[StageProgress], None] | None" = None) -> dict[str, Any]:
    """Run one stage's work with its output routed to `log`; returns its metrics (raises on failure).

    The one place a stage is run, in this process (`-j 1`) or in a worker (`run_job`). What the
    stage's code (the model's, or a library's) raises becomes a UserCodeError naming the user's
    frames; `sys.exit()` and `os._exit()` fail the stage, even when the code swallows the exit.
    The stage's progress goes to `on_progress` (in this process) or to `job.progress_path`.
    """
    from bmbuild.progress import ProgressReporter
    from bmbuild.stagecontext import StageContext
    from bmbuild.stagelog import bind_log
    from bmbuild.stages import all_stages
    from bmbuild.toolchains.base import load_toolchain

    stage = {s.name: s for s in all_stages()}[job.stage]
    if toolchain is None and job.toolchain:
        toolchain = load_toolchain(job.toolchain)
    ctx = StageContext(job.loaded, job.params, job.inputs, job.out_dir, job.work_dir, log, toolchain)
    if on_progress is None and job.progress_path is not None:
        ctx.reporter = ProgressReporter.to_file(log, job.progress_path)
    else:
        ctx.reporter = ProgressReporter(log, on_progress)
    try:
        with bind_log(log), _exits_refused() as exits:
            stage.run(ctx)
    except BmbuildError as exc:
        raise _with_user_frames(exc, log) from None
    except SystemExit as exc:
        raise _user_code_error(_exit_message(_exit_call(exc)), exc, log) from None
    except Exception as exc:
        if _raised_by_bmbuild(exc):
            raise _internal_error(exc, log) from None
        text = str(exc)
        raise _user_code_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, exc, log) from None
    if exits:  # the code caught the exception that stood for its exit
        raise UserCodeError(_exit_message(exits[0]))
    return ctx.metrics


def run_job(job: StageJob) -> JobResult:
    """In the worker: the stage's metrics, or its error as plain data."""
    from bmbuild.stagelog import StageLog

    log = StageLog(job.log_path, append=True)
    try:
        return JobResult(metrics=execute_job(job, log))
    except BmbuildError as exc:
        return JobResult(error=str(exc), exit_code=exc.exit_code, shows_log_tail=exc.shows_log_tail)
    except Exception as exc:  # bmbuild's own code around the stage failed: keep the traceback in the log
        log.write_raw(traceback.format_exc())
        return JobResult(error=f"{type(exc).__name__}: {exc}")
    finally:
        log.close()


POLL_SECONDS = 0.2


def _await(future: "Future[JobResult]", progress_path: Path | None,
           on_progress: "Callable[[StageProgress], None] | None") -> JobResult:
    """The future's result; meanwhile each new progress the worker wrote goes to `on_progress`
    (the last one too, even when the stage finished between two polls)."""
    from bmbuild.progress import read_progress

    if progress_path is None or on_progress is None:
        return future.result()
    last = None
    while True:
        try:
            result = future.result(timeout=POLL_SECONDS)
        except FuturesTimeout:
            result = None
        progress = read_progress(progress_path)
        if progress is not None and progress != last:
            last = progress
            on_progress(progress)
        if result is not None:
            return result


class WorkerPool:
    """A lazily started pool of spawned processes (spawn: safe with threads and torch).

    A worker that dies breaks the whole pool: every stage running in it fails at once, and which
    worker died is not known. So each of them runs again in a worker of its own: a stage whose
    sibling died then succeeds, a stage that kills its worker fails with its own message.
    """

    def __init__(self, size: int):
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()

    def _new_pool(self, size: int) -> ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self.size)
        pool = ProcessPoolExecutor(max_workers=size, initializer=_init_worker, initargs=(threads,),
                                   mp_context=multiprocessing.get_context("spawn"))
        # Start every worker with the pool, as the executor does under fork, so that its manager
        # thread watches every worker's death. Spawned on demand (3.11's default for spawn), a
        # worker starts after `submit` has woken the manager, which may then wait without that
        # worker's sentinel: its death goes unnoticed until some other result arrives (a sibling
        # stage finished minutes later; seen under CI load).
        pool._safe_to_dynamically_spawn_children = False
        return pool

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool(self.size)
            return self._pool

    def run(self, job: StageJob, on_progress: "Callable[[StageProgress], None] | None" = None) -> dict[str, Any]:
        """Run one stage in a worker; its metrics, or WorkerStageError. While it runs, the progress
        the worker writes to `job.progress_path` is polled and handed to `on_progress`."""
        pool = self._executor()
        try:
            result = _await(pool.submit(run_job, job), job.progress_path, on_progress)
        except BrokenProcessPool:
            self._discard(pool)
            result = self._run_alone(job, on_progress)
        if result.metrics is None:
            raise WorkerStageError(result)
        return result.metrics

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool (the next stage gets a fresh one) once its workers are gone."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        with self._shutdown_lock:  # every stage of a broken pool gets here; concurrent shutdowns close twice
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_alone(self, job: StageJob, on_progress: "Callable[[StageProgress], None] | None" = None) -> JobResult:
        """The stage again, from empty folders, in a worker of its own."""
        from bmbuild.stagelog import StageLog

        for folder in (job.out_dir, job.work_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        log = StageLog(job.log_path, append=True)
        log.info("# a worker process died (this stage's or another's): running the stage again in a worker "
                 "of its own")
        log.close()
        with self._new_pool(1) as solo:
            try:
                return _await(solo.submit(run_job, job), job.progress_path, on_progress)
            except BrokenProcessPool:
                raise StageFailed("the worker process running this stage died without a result (killed, out of "
                                  "memory, or the stage's code ended the process); nothing was published") from None

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
