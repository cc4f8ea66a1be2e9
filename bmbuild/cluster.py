"""The stage graph on a Dask cluster, artifacts through the shared remote cache (`--executor dask`).

The client (this process) keeps deciding, as in a local build, with the planner and the action cache:

    up to date            recorded; nothing is submitted
    in a cache            restored by the client; nothing is submitted
    must run              one Dask task, with the futures of its upstream tasks as arguments

A task (`run_task`, on a worker) works in a private folder on the worker: it restores its upstream
outputs from the remote cache by their digests, checks that the worker sees what the client
planned with (input digests, toolchain versions, a usable toolchain), and runs the stage through
the same Executor and `execute_job` as a local build, which pushes the objects and then the entry.
It returns the entry; the client restores it into the workspace like a cache hit, recorded as
executed on that worker. Meanwhile the stage's `ctx.progress` reaches the client as Dask events of
the run's topic (`Worker.log_event`, `Client.subscribe_topic`), shown like a local stage's progress. A task first looks the key up in the remote cache: a stage someone else
finished meanwhile is never executed again.

What cannot corrupt anything: a worker killed mid-stage leaves its private folder behind and no
entry (objects are pushed before the entry), and Dask runs the task again elsewhere; a killed
client publishes nothing half-done (each folder is swapped in whole) and a rerun restores what the
workers pushed.

`distributed` is imported only here and only when a cluster build is asked for (`bmbuild[dask]`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bmbuild.cache import ActionEntry, BadEntry, action_key
from bmbuild.engine import RunResult
from bmbuild.errors import BmbuildError, StageFailed, ToolchainError
from bmbuild.executor import Decision, Executor, NodeRecord, Outcome, Status, explain_change, read_manifest
from bmbuild.graph import Node
from bmbuild.progress import parse_progress
from bmbuild.recipe import LoadedRecipe
from bmbuild.snapshot import forget
from bmbuild.store import LocalStore
from bmbuild.workspace import ExecutorConfig, Workspace, WorkspaceConfig

# Requested by a stage of these toolchains when some worker declares the resource (`dask worker
# --resources tpu-mlir=1`): one such stage at a time per worker. bmbuild.yaml `executor.resources`
# adds to or replaces these.
DEFAULT_RESOURCES: dict[str, dict[str, float]] = {"tpu-mlir": {"tpu-mlir": 1}}
LOG_LIMIT = 1 << 20  # bytes of a failed stage's log sent back to the client (its end)
PROGRESS_INTERVAL = 0.5  # seconds between two progress events of a stage (coarse steps always go)
INSTALL_HINT = "the dask executor needs dask's `distributed` package: pip install 'bmbuild[dask]'"


class ClusterError(BmbuildError):
    """A cluster build cannot start: no scheduler, no remote cache, a resource no worker has."""


@dataclass(frozen=True)
class ClusterConfig:
    scheduler: str
    resources: dict[str, dict[str, float]] = field(default_factory=dict)


def cluster_config(config: ExecutorConfig, kind: str | None = None, scheduler: str | None = None) -> ClusterConfig | None:
    """The cluster to build on (None: build locally). The command line beats bmbuild.yaml;
    `--scheduler` alone means `--executor dask`."""
    kind = kind or ("dask" if scheduler else config.kind)
    if kind == "local":
        if scheduler:
            raise ClusterError("--scheduler is for --executor dask")
        return None
    address = scheduler or config.scheduler
    if not address:
        raise ClusterError("the dask executor needs a scheduler: pass --scheduler tcp://host:8786 "
                           "or set `executor: {kind: dask, scheduler: ...}` in bmbuild.yaml")
    return ClusterConfig(address, dict(config.resources))


def stage_resources(stage: str, toolchain: str | None, configured: dict[str, dict[str, float]],
                    declared: set[str]) -> dict[str, float]:
    """The Dask resources one stage requests: what is set for its toolchain (when it uses one) and
    for its name; the defaults only for resources some worker declares."""
    table = {name: wants for name, wants in DEFAULT_RESOURCES.items() if set(wants) <= declared}
    table.update(configured)
    wanted: dict[str, float] = {}
    for name in (toolchain, stage):
        if name is not None:
            wanted.update(table.get(name, {}))
    return wanted


# --- what travels between the client and the workers (plain, picklable data) ---------------
@dataclass(frozen=True)
class RemoteSettings:
    url: str
    options: dict[str, Any]
    timeout: float


@dataclass(frozen=True)
class StageTask:
    """One stage to run on a worker. `expected` is the client's key components without `upstream`
    (the worker computes that from the entries it gets); `upstream` holds the entries of upstream
    stages settled by the client, the others arrive as results of their tasks."""

    session: str
    loaded: LoadedRecipe
    stage: str
    toolchain: str
    expected: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    remote: RemoteSettings
    force: bool = False

    @property
    def node_id(self) -> str:
        return f"{self.loaded.name}:{self.stage}"


@dataclass(frozen=True)
class TaskResult:
    """What a task returns: the entry it produced or found, or why the stage failed or did not run."""

    node_id: str
    stage: str
    worker: str
    entry: dict[str, Any] | None = None   # None: failed or blocked
    ran: bool = False                     # executed on `worker` (False: found in the remote cache)
    blocked: bool = False                 # an upstream stage failed: nothing ran
    message: str = ""
    exit_code: int = 1
    show_tail: bool = True
    seconds: float = 0.0
    log: bytes = b""

    @property
    def ok(self) -> bool:
        return self.entry is not None


# --- on a worker --------------------------------------------------------------------------
class TaskExecutor(Executor):
    """The Executor on a worker: the client's environment in the key, and how a stage failed."""

    def __init__(self, workspace: Workspace, task: StageTask, worker: str, pool: Any = None):
        super().__init__(workspace, force=task.force, pool=pool, on_event=progress_events(task.session))
        self.warnings: list[str] = []
        self.store = _task_store(workspace, task.remote, worker, self.warnings)
        self.client_env = task.expected.get("env", {})
        self.failure: dict[str, Any] = {}

    def components(self, node: Node, upstream_outputs: dict[str, dict[str, str]]) -> dict[str, Any]:
        return {**super().components(node, upstream_outputs), "env": self.client_env}

    def _fail(self, node: Node, message: str, log_path: Path, show_tail: bool = True,
              seconds: float = 0.0, exit_code: int = 1) -> StageFailed:
        self.failure = {"message": message, "show_tail": show_tail, "seconds": seconds, "exit_code": exit_code}
        return super()._fail(node, message, log_path, show_tail, seconds, exit_code)

    def publish_upstream(self, node: Node, entry: ActionEntry, url: str) -> None:
        """An upstream stage's outputs, from the shared cache into this task's build folder."""
        tmp = self.ws.new_temp_dir(node.recipe_name, node.stage.name)
        try:
            if not self._restore(entry, tmp, self.ws.log_path(node.recipe_name, node.stage.name)):
                raise StageFailed(f"the outputs of {node.id} are missing or corrupt in the remote cache {url}"
                                  + (f" ({self.warnings[-1]})" if self.warnings else ""))
            self._publish(node, tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


_pool_lock = threading.Lock()
_pool: Any = None


def _stage_pool(threads: int) -> Any:
    """With several threads per worker, stages run in processes of their own (as with `-j N`):
    a stage owns its process (`execute_job`). One thread: in the worker itself (as with `-j 1`)."""
    global _pool
    if threads <= 1:
        return None
    from bmbuild.workers import WorkerPool

    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(threads)
        return _pool


def _this_worker() -> tuple[str, Path, int]:
    """(address, scratch folder, threads) of the Dask worker running this task."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker.address, Path(worker.local_directory) / "bmbuild", int(getattr(worker.state, "nthreads", 1))
    except (ImportError, ValueError):  # not in a worker (called directly)
        return f"pid {os.getpid()}", Path(tempfile.gettempdir()) / "bmbuild-worker", 1


def _announce(task: StageTask, worker: str) -> None:
    """Tell the client that the stage starts here (its console shows where each stage runs)."""
    try:
        from distributed import get_worker

        get_worker().log_event(f"bmbuild-{task.session}", {"node": task.node_id, "worker": worker})
    except (ImportError, ValueError):
        pass


def progress_events(session: str) -> Any:
    """The worker side of a stage's progress: `ctx.progress` updates become events of the run's topic,
    which the client shows as it shows a local stage's (ClusterRun.on_event). At most one per
    PROGRESS_INTERVAL seconds, but every coarse step and the end always: plain output prints those."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a worker (called directly)
        return None
    sent: dict[str, tuple[float, Any]] = {}  # node id -> (when, coarse step) last sent

    def on_event(event: str, node: Node, progress: Any) -> None:
        if event != "progress" or progress is None:
            return
        now, mark = time.monotonic(), (progress.label, progress.step)
        when, last = sent.get(node.id, (0.0, None))
        if mark == last and now - when < PROGRESS_INTERVAL and progress.done < progress.total:
            return
        sent[node.id] = (now, mark)
        worker.log_event(f"bmbuild-{session}", {"node": node.id, "progress": progress.to_json()})

    return on_event


def run_task(task: StageTask, *upstream: TaskResult) -> TaskResult:
    """The Dask task of one stage: its TaskResult, never an exception (a bug is a failed result)."""
    worker, scratch, threads = _this_worker()
    failed = [result for result in upstream if not result.ok]
    if failed:
        return TaskResult(task.node_id, task.stage, worker, blocked=True, message=f"upstream {failed[0].node_id} failed")
    _announce(task, worker)
    started = time.monotonic()
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="task-", dir=scratch))
    executor: TaskExecutor | None = None
    try:
        ws = Workspace(root=scratch, build_dir=folder / "build", cache_dir=folder / "cache", config=WorkspaceConfig())
        executor = TaskExecutor(ws, task, worker, _stage_pool(threads))
        return _run_stage(executor, task, upstream, worker)
    except BmbuildError as exc:
        return _failure(task, worker, executor, str(exc), exc.exit_code, started)
    except Exception as exc:  # a bug in bmbuild: the traceback goes to the client
        return _failure(task, worker, executor, f"internal error on worker {worker}: {type(exc).__name__}: {exc}\n"
                        f"{traceback.format_exc()}", 3, started)
    finally:
        if executor is not None:
            executor.stat.close()
        shutil.rmtree(folder, ignore_errors=True)


def _task_store(ws: Workspace, remote: RemoteSettings, worker: str, warnings: list[str]) -> Any:
    """A private local store over the shared remote; its warnings become the task's error."""
    from bmbuild.remote import RemoteUnreachable, TieredStore, open_remote

    try:
        opened = open_remote(remote.url, remote.options, remote.timeout)
    except RemoteUnreachable as exc:
        raise RemoteUnreachable(f"on worker {worker}: {exc}") from None
    return TieredStore(LocalStore(ws.cache_dir), opened, warn=warnings.append)


def _run_stage(executor: TaskExecutor, task: StageTask, upstream: tuple[TaskResult, ...], worker: str) -> TaskResult:
    from bmbuild.graph import recipe_nodes
    from bmbuild.stages import all_stages

    node = next(n for n in recipe_nodes(task.loaded, task.toolchain, all_stages()) if n.stage.name == task.stage)
    if node.stage.uses_toolchain:
        _require_toolchain(executor, node.toolchain, worker)
    entries = {**task.upstream, **{result.stage: result.entry for result in upstream}}
    for dep in node.deps:
        executor.publish_upstream(dep, _entry(entries.get(dep.stage.name), dep.id), task.remote.url)
    try:
        decision = executor.decide(node)
    except OSError as exc:
        raise BmbuildError(f"worker {worker} cannot read {exc.filename or exc}: {exc.strerror or exc}; workers must "
                           "see the workspace (recipes, model sources, data) at the same paths as the client") from None
    mine = {k: v for k, v in (decision.components or {}).items() if k != "upstream"}
    if mine != task.expected:
        raise BmbuildError(f"worker {worker} does not see what the client planned with: "
                           f"{explain_change(task.expected, mine)}; workers need the same input files and "
                           "toolchain versions as the client")
    if decision.status is Status.RESTORE and decision.entry is not None:  # finished meanwhile: not again
        return TaskResult(task.node_id, task.stage, worker, entry=decision.entry.to_json())
    store = executor.store
    pushed = store.pushed
    executor._decisions[node.id] = replace(decision, status=Status.RUN)
    record = executor.execute(node)
    entry = store.local.get_action(record.key)
    if entry is None or store.pushed == pushed:
        from bmbuild.remote import RemoteUnreachable

        raise RemoteUnreachable(f"worker {worker} could not push {node.id} to the remote cache {task.remote.url}"
                                + (f": {executor.warnings[0]}" if executor.warnings else ""))
    return TaskResult(task.node_id, task.stage, worker, entry=entry.to_json(), ran=True, seconds=entry.seconds)


def _require_toolchain(executor: Executor, name: str, worker: str) -> None:
    try:
        status = executor.toolchain(name).availability()
    except ToolchainError as exc:
        raise ToolchainError(f"on worker {worker}: {exc}") from None
    if not status.usable:
        raise ToolchainError(f"toolchain {name!r} is not usable on worker {worker}: {status.reason}")


def _entry(data: Any, node_id: str) -> ActionEntry:
    """An upstream entry handed to this task; checked like anything read back from a cache."""
    try:
        return ActionEntry.from_json(data)
    except BadEntry as exc:
        raise BmbuildError(f"the entry of upstream {node_id} is unusable: {exc}") from None


def _failure(task: StageTask, worker: str, executor: TaskExecutor | None, message: str, exit_code: int,
             started: float) -> TaskResult:
    """A failed stage as data; its log (the end of it) goes along."""
    failure = executor.failure if executor is not None else {}
    log = b""
    if executor is not None:
        path = executor.ws.log_path(task.loaded.name, task.stage)
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - LOG_LIMIT))
                log = handle.read()
        except OSError:
            pass
    return TaskResult(task.node_id, task.stage, worker, message=failure.get("message", message),
                      exit_code=failure.get("exit_code", exit_code), show_tail=failure.get("show_tail", False),
                      seconds=failure.get("seconds", time.monotonic() - started), log=log)


# --- on the client ------------------------------------------------------------------------
class ClientExecutor(Executor):
    """The Executor of a cluster build's client: stages that must run go to the cluster."""

    def __init__(self, workspace: Workspace, force: bool, on_event: Any, cluster: "ClusterRun"):
        super().__init__(workspace, force=force, on_event=on_event)
        self.cluster = cluster

    def settle(self, node: Node) -> Decision | None:
        """None when `node` is up to date (recorded); else its decision, to restore or to run.
        Raises StageFailed (recorded) when it cannot be decided."""
        if self.is_up_to_date(node):
            return None
        with self._lock:
            decision = self._decisions.get(node.id)
        if decision is None:  # deciding raised: execute decides again and reports it
            self.execute(node)
        return decision

    def take(self, node: Node) -> Decision:
        with self._lock:
            return self._decisions.pop(node.id)

    def adopt(self, node: Node, result: TaskResult) -> NodeRecord:
        """Publish what a worker produced (or found) for `node`, once the client agrees on its key."""
        log_path = self.ws.log_path(node.recipe_name, node.stage.name)
        try:
            entry = ActionEntry.from_json(result.entry)
            upstream = {dep.stage.name: self.published_outputs(dep) for dep in node.deps}
            components = self.components(node, upstream)
        except (BmbuildError, BadEntry, OSError) as exc:
            raise self._fail(node, f"{exc} (the stage ran on worker {result.worker})", log_path,
                             exit_code=getattr(exc, "exit_code", 2)) from None
        key = action_key(components)
        if entry.key != key:
            raise self._fail(node, f"worker {result.worker} returned the entry of another key: "
                             f"{explain_change(entry.components, components)}", log_path, show_tail=False)
        reason = f"ran on {result.worker}" if result.ran else "finished meanwhile (found by the worker)"
        with self._lock:
            self._decisions[node.id] = Decision(Status.RESTORE, reason, key, components, entry,
                                                ran_on=result.worker if result.ran else "")
        return self.execute(node)

    def failed(self, node: Node, result: TaskResult) -> StageFailed:
        """A stage that failed on a worker, recorded here with the worker's log."""
        log_path = self.ws.log_path(node.recipe_name, node.stage.name)
        message = result.message if result.worker in result.message else f"{result.message} (on worker {result.worker})"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(result.log or f"# {node.id} on worker {result.worker}\nFAILED: {message}\n".encode())
        error = self._fail(node, message, log_path, show_tail=result.show_tail and bool(result.log),
                           seconds=result.seconds, exit_code=result.exit_code)
        self.records[node.id].worker = result.worker
        return error

    def _run(self, node: Node, decision: Decision, out_dir: Path, log_path: Path) -> ActionEntry:
        """A restore that failed here (a corrupt or missing object): the stage goes to the cluster."""
        result = self.cluster.run_now(node)
        if not result.ok:
            raise self.failed(node, result)
        entry = ActionEntry.from_json(result.entry)
        if not self._restore(entry, out_dir, log_path):
            raise self._fail(node, f"the outputs worker {result.worker} pushed cannot be restored from the remote "
                             "cache", log_path, show_tail=False)
        decision.ran_on = result.worker if result.ran else ""
        return entry


class ClusterRun:
    """One cluster build: decide in dependency order, submit, then adopt results as they finish."""

    def __init__(self, client: Any, workspace: Workspace, console: Any, config: ClusterConfig,
                 remote: RemoteSettings, force: bool, keep_going: bool):
        self.client = client
        self.console = console
        self.config = config
        self.remote = remote
        self.force = force
        self.keep_going = keep_going
        self.session = uuid.uuid4().hex[:12]
        self.executor = ClientExecutor(workspace, force, console.node_event, self)
        self.futures: dict[str, Any] = {}
        self.nodes: dict[str, Node] = {}
        self.started: set[str] = set()
        self.errors: list[str] = []
        self.exit_codes: list[int] = []
        self.stopping = False
        self.declared = _declared_resources(client)

    # --- events from the workers ----------------------------------------------------------
    def on_event(self, event: Any) -> None:
        """A task started on a worker, or reports its progress (runs in the client's event loop thread;
        the events come from workers: untrusted)."""
        message = event[1] if isinstance(event, (tuple, list)) and len(event) == 2 else {}
        node = self.nodes.get(message.get("node")) if isinstance(message, dict) else None
        if node is None:
            return
        if "progress" in message:
            progress = parse_progress(message["progress"])
            if progress is not None:
                self.console.node_event("progress", node, progress)
            return
        self.started.add(node.id)
        self.console.node_event("run", node, NodeRecord(node.id, node.recipe_name, node.stage.name,
                                                        Outcome.EXECUTED, worker=str(message.get("worker", ""))))

    # --- submitting -----------------------------------------------------------------------
    def task(self, node: Node, settled: list[Node]) -> StageTask:
        components = self.executor.components(node, {})
        loaded = node.loaded.model_copy(update={"file": node.loaded.file.resolve()})  # workers have another cwd
        return StageTask(self.session, loaded, node.stage.name, node.toolchain,
                         {k: v for k, v in components.items() if k != "upstream"},
                         {dep.stage.name: self.share(dep) for dep in settled}, self.remote, self.force)

    def share(self, node: Node) -> dict[str, Any]:
        """The entry of an upstream stage settled here; its outputs uploaded when the remote lacks
        them (built before the remote was set, say): workers read upstream outputs only from there."""
        folder = self.executor.ws.stage_dir(node.recipe_name, node.stage.name)
        manifest = read_manifest(folder)
        if manifest is None:
            raise StageFailed(f"{node.id}: upstream output is missing")
        store = self.executor.store
        try:
            for rel, digest in manifest["outputs"].items():
                size = (folder / rel).stat().st_size
                if store.remote.object_size(digest) != size:
                    store.local.put_file(folder / rel, digest)  # checks the digest while copying
                    store.remote.put_object(store.local.object_path(digest), digest)
        except Exception as exc:  # AttributeError: the store turned the remote off after an error
            from bmbuild.remote import RemoteUnreachable, describe

            raise RemoteUnreachable(f"{node.id}: its outputs cannot be shared through the remote cache "
                                    f"{self.remote.url} ({describe(exc)})") from None
        return ActionEntry(key=manifest["key"], outputs=manifest["outputs"], summary=manifest.get("summary", ""),
                           metrics=manifest.get("metrics", {}), components=manifest.get("components", {}),
                           recipe=node.recipe_name, stage=node.stage.name).to_json()

    def submit(self, node: Node) -> None:
        pending = [self.futures[dep.id] for dep in node.deps if dep.id in self.futures]
        task = self.task(node, [dep for dep in node.deps if dep.id not in self.futures])
        toolchain = node.toolchain if node.stage.uses_toolchain else None
        resources = stage_resources(node.stage.name, toolchain, self.config.resources, self.declared)
        key = f"bmbuild-{node.id}-{uuid.uuid4().hex[:8]}"
        self.futures[node.id] = self.client.submit(run_task, task, *pending, key=key, resources=resources or None,
                                                   pure=False)

    def run_now(self, node: Node) -> TaskResult:
        """Run one stage whose upstream is settled here, and wait for it."""
        self.submit(node)
        future = self.futures.pop(node.id)
        future.exception()  # waits; `result` reads a failure from the future
        return self.result(node, future)

    def plan(self, nodes: list[Node]) -> None:
        """Walk the nodes upstream first: record, restore here, or submit."""
        for node in nodes:
            self.nodes[node.id] = node
        for node in nodes:
            if self.stopping:
                return
            if any(self.broken(dep) for dep in node.deps):
                continue  # blocked: named at the end
            try:
                if any(dep.id in self.futures for dep in node.deps):
                    self.submit(node)
                    continue
                decision = self.executor.settle(node)
                if decision is None:
                    continue
                if decision.status is Status.RESTORE:
                    self.executor.execute(node)
                else:
                    self.executor.take(node)
                    self.submit(node)
            except BmbuildError as exc:
                self.fail(node, exc)

    # --- collecting -----------------------------------------------------------------------
    def result(self, node: Node, future: Any) -> TaskResult:
        """A finished future as a TaskResult; a worker that died with the stage is a failure."""
        from distributed import KilledWorker

        if future.status == "error":
            exc = future.exception()
            if isinstance(exc, KilledWorker) and exc.task != future.key:  # an upstream task's worker died
                return TaskResult(node.id, node.stage.name, "", blocked=True, message=str(exc))
            if isinstance(exc, KilledWorker):
                message = (f"the workers running it died {exc.allowed_failures + 1} times (killed, out of memory, or "
                           "the stage's code ended the process); nothing was published")
                return TaskResult(node.id, node.stage.name, exc.last_worker.address, message=message, show_tail=False)
            return TaskResult(node.id, node.stage.name, "?", message=f"internal error: {type(exc).__name__}: {exc}",
                              exit_code=3, show_tail=False)
        return future.result()

    def collect(self) -> None:
        from distributed import as_completed

        by_key = {future.key: node_id for node_id, future in self.futures.items()}
        for future in as_completed(list(self.futures.values()), loop=self.client.loop):
            node = self.nodes[by_key[future.key]]
            if future.cancelled():
                continue
            result = self.result(node, future)
            if result.blocked or any(self.broken(dep) for dep in node.deps):
                continue  # named at the end
            try:
                if not result.ok:
                    raise self.executor.failed(node, result)
                self.executor.adopt(node, result)
            except BmbuildError as exc:
                self.fail(node, exc)

    def fail(self, node: Node, exc: BmbuildError) -> None:
        """A failed stage: reported; without --keep-going nothing new starts (running stages finish)."""
        if node.id not in self.executor.records:
            self.executor.records[node.id] = NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.FAILED,
                                                        error=str(exc))
            self.console.node_done(self.executor.records[node.id])
        self.errors.append(str(exc))
        self.exit_codes.append(exc.exit_code)
        if not self.keep_going and not self.stopping:
            self.stopping = True
            waiting = [future for node_id, future in self.futures.items()
                       if node_id not in self.started and not future.done()]
            if waiting:
                self.client.cancel(waiting)

    def broken(self, node: Node) -> bool:
        record = self.executor.records.get(node.id)
        return record is not None and record.outcome in (Outcome.FAILED, Outcome.BLOCKED)

    def records(self, nodes: list[Node]) -> list[NodeRecord]:
        """Every node's record; a node held back by a failure upstream is blocked."""
        records = self.executor.records
        for node in nodes:
            if node.id not in records and any(self.broken(dep) for dep in node.deps):
                records[node.id] = NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.BLOCKED,
                                              error="upstream failed")
                self.console.node_done(records[node.id])
        return [records[n.id] for n in nodes if n.id in records]


def _declared_resources(client: Any) -> set[str]:
    workers = client.scheduler_info().get("workers", {})
    return {name for info in workers.values() for name in (info.get("resources") or {})}


def _check_resources(config: ClusterConfig, declared: set[str], workers: int) -> None:
    """A resource no worker declares would keep its stages waiting forever: say so up front."""
    if not workers:
        return
    missing = sorted({name for wants in config.resources.values() for name in wants} - declared)
    if missing:
        raise ClusterError(f"bmbuild.yaml executor.resources requests {', '.join(missing)}, which no worker of "
                           f"{config.scheduler} declares (start workers with `dask worker ... --resources "
                           f"{missing[0]}=1`)")


def remote_settings(workspace: Workspace) -> RemoteSettings:
    """The shared cache the workers use: required, readable from here, the same URL everywhere."""
    from bmbuild.remote import remote_options, remote_timeout

    url = workspace.remote_cache
    if not url:
        raise ClusterError("the dask executor needs a shared remote cache that the workers and this client "
                           "can reach: pass --remote-cache URL, set $BMBUILD_REMOTE_CACHE or `remote_cache:` in "
                           "bmbuild.yaml")
    if "://" not in url:
        url = str(Path(url).expanduser().resolve())  # a folder: the same absolute path on every worker
    settings = RemoteSettings(url, remote_options(workspace.config.remote_cache_options),
                              remote_timeout(workspace.config.remote_cache_timeout))
    workspace.open_remote().probe()
    return settings


def _connect(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    try:
        return Client(address, set_as_default=False, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot connect to the Dask scheduler {address}: {exc}") from None


def run_on_cluster(nodes: list[Node], workspace: Workspace, console: Any, config: ClusterConfig,
                   force: bool = False, keep_going: bool = False) -> RunResult:
    """Build `nodes` (with their dependencies) on the Dask cluster at `config.scheduler`."""
    started = time.monotonic()
    remote = remote_settings(workspace)
    with workspace.locked():
        workspace.clear_temp()
        forget(workspace.state_dir)  # no remembered no-op survives a run that may change things
        client = _connect(config.scheduler)
        run: ClusterRun | None = None
        try:
            run = ClusterRun(client, workspace, console, config, remote, force, keep_going)
            workers = len(client.scheduler_info().get("workers", {}))
            _check_resources(config, run.declared, workers)
            from bmbuild.remote import TieredStore

            if not isinstance(run.executor.store, TieredStore):
                raise ClusterError(f"the remote cache {remote.url} cannot be opened from this client")
            if not getattr(console, "quiet", False):
                console.print(f"cluster {config.scheduler}: {workers} worker(s)"
                              + ("" if workers else " (stages wait for one to join)") + f", shared cache {remote.url}")
            client.subscribe_topic(f"bmbuild-{run.session}", run.on_event)
            console.start(len(nodes))
            try:
                run.plan(nodes)
                run.collect()
            finally:
                console.stop()
            records = run.records(nodes)
        finally:
            if run is not None:
                run.executor.stat.close()
            client.close()
    return RunResult(records, time.monotonic() - started, 0, run.errors, run.exit_codes, run.executor.store)
