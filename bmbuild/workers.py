"""Stage work in worker processes, so that `-j N` runs N stages truly in parallel.

Tracing and the TorchScript ONNX exporter hold the GIL and keep process-wide state (they take
turns behind `modelsource.TORCH_LOCK` within one process), so threads alone gave `-j 2` no
speed-up. With `-j N > 1` each stage's work runs in one of N spawned worker processes; the
parent keeps deciding, restoring, hashing and publishing. A worker gets plain data (the
validated recipe, parameters, folders) and returns the stage's metrics or its error text.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.errors import BmbuildError, StageFailed
from bmbuild.recipe import LoadedRecipe

if TYPE_CHECKING:
    from bmbuild.stagelog import StageLog


class WorkerStageError(BmbuildError):
    """A stage failed in a worker; carries the error text (and whether it holds a tool's output)."""

    exit_code = 1

    def __init__(self, message: str, output_tail: str = ""):
        super().__init__(message)
        self.output_tail = output_tail


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
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bmbuild-parent-watch").start()


def _init_worker(threads: int) -> None:
    """Share the cores between the workers: N workers x all cores each only thrash."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # torch reads it at import
    os.environ["BMBUILD_THREADS"] = str(threads)             # onnxruntime sessions (reference.py)
    _die_with_parent()


def execute_job(job: StageJob, log: "StageLog", toolchain: Any = None) -> dict[str, Any]:
    """Run one stage's work with its output routed to `log`; returns its metrics (raises on failure).

    The one place a stage is run, in this process (`-j 1`) or in a worker (`run_job`).
    """
    from bmbuild.stagelog import bind_log
    from bmbuild.stages import StageContext, all_stages
    from bmbuild.toolchains.base import load_toolchain

    stage = {s.name: s for s in all_stages()}[job.stage]
    if toolchain is None and job.toolchain:
        toolchain = load_toolchain(job.toolchain)
    ctx = StageContext(job.loaded, job.params, job.inputs, job.out_dir, job.work_dir, log, toolchain)
    with bind_log(log):
        stage.run(ctx)
    return ctx.metrics


def run_job(job: StageJob) -> tuple[str, Any, str]:
    """In the worker: ('ok', metrics, '') or ('failed', message, output_tail)."""
    from bmbuild.stagelog import StageLog

    log = StageLog(job.log_path, append=True)
    try:
        return "ok", execute_job(job, log), ""
    except BmbuildError as exc:
        return "failed", str(exc), str(getattr(exc, "output_tail", "") or "")
    except Exception as exc:  # user model code or a library raised: keep the traceback in the log
        log.write_raw(traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}", ""
    finally:
        log.close()


class WorkerPool:
    """A lazily started pool of spawned processes (spawn: safe with threads and torch)."""

    def __init__(self, size: int):
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                threads = max(1, (os.cpu_count() or 1) // self.size)
                self._pool = ProcessPoolExecutor(max_workers=self.size, initializer=_init_worker,
                                                 initargs=(threads,),
                                                 mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def run(self, job: StageJob) -> dict[str, Any]:
        """Run one stage in a worker; its metrics, or WorkerStageError."""
        try:
            status, value, tail = self._executor().submit(run_job, job).result()
        except BrokenProcessPool:
            with self._lock:
                self._pool = None  # the next stage gets a fresh pool
            raise StageFailed("the worker process running this stage died (out of memory or killed)") from None
        if status != "ok":
            raise WorkerStageError(value, tail)
        return value

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
