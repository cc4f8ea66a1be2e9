"""doit, embedded as a library: one task per stage node, our executor as the action.

doit schedules (dependencies, `-j` threads, `--keep-going`), keeps its sqlite3 state DB and
calls our reporter; the executor decides with content keys whether anything must run.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.action import BaseAction
from doit.cmd_base import TaskLoader2
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskError, TaskFailed
from doit.task import Task

from bmbuild.cache import warn_once
from bmbuild.errors import BmbuildError
from bmbuild.executor import Executor, NodeRecord, Outcome
from bmbuild.graph import Node
from bmbuild.planner import Expected
from bmbuild.snapshot import forget
from bmbuild.workers import WorkerPool
from bmbuild.workspace import Workspace


class StageAction(BaseAction):
    """A doit action that runs one node through the executor.

    It does not swap sys.stdout like doit's PythonAction (which crashed under `-P thread`);
    a stage's output goes to its own log file.
    """

    def __init__(self, executor: Executor, node: Node):
        self.executor = executor
        self.node = node
        self.task = None
        self.out = self.err = None
        self.result: Any = None
        self.values: dict[str, Any] = {}

    def execute(self, out: Any = None, err: Any = None) -> Any:
        try:
            record = self.executor.execute(self.node)
        except BmbuildError as exc:
            failed = TaskFailed(str(exc))
            failed.exit_code = exc.exit_code  # read back by Reporter.add_failure
            return failed
        except Exception as exc:  # a bug in bmbuild: keep the traceback
            return TaskError(f"internal error in {self.node.id}: {exc}\n{traceback.format_exc()}")
        self.result = record.outcome.value
        self.values = {"outcome": record.outcome.value}
        return None

    def __str__(self) -> str:
        return f"bmbuild stage {self.node.id}"


class NodeLoader(TaskLoader2):
    """Hands doit one task per node that is not already known to be up to date.

    `decided` names the nodes whose decision (run or restore) was taken up front; the executor
    keeps it for `execute`. The others are checked by doit's `uptodate` hook once their upstream
    stages have run.
    """

    def __init__(self, nodes: list[Node], executor: Executor, config: dict[str, Any],
                 decided: set[str] | None = None):
        super().__init__()
        self.nodes = nodes
        self.executor = executor
        self.doit_config = config
        self.decided = decided or set()

    def load_doit_config(self) -> dict[str, Any]:
        return self.doit_config

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Task]:
        tasks = []
        ids = {node.id for node in self.nodes}
        for node in self.nodes:
            decided = node.id in self.decided  # known to need work: no second up-to-date check
            tasks.append(Task(
                node.id,
                actions=[StageAction(self.executor, node)],
                task_dep=[dep.id for dep in node.deps if dep.id in ids],
                uptodate=[] if decided else [(self.executor.is_up_to_date, (node,), {})],
                verbosity=2,
                doc=f"{node.stage.name} of {node.loaded.file}",
            ))
        return tasks


class Reporter:
    """doit reporter that forwards events to a bmbuild console (thread-safe through it)."""

    def __init__(self, console: Any, executor: Executor):
        self.console = console
        self.executor = executor
        self.errors: list[str] = []
        self.exit_codes: list[int] = []

    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        pass

    def get_status(self, task: Task) -> None:
        pass

    def execute_task(self, task: Task) -> None:
        pass

    def add_failure(self, task: Task, fail: Any) -> None:
        node_id = task.name
        record = self.executor.records.get(node_id)
        if record is None or record.outcome is not Outcome.FAILED:
            # not reported by the executor: blocked by an upstream failure, or a bmbuild bug
            recipe, _, stage = node_id.partition(":")
            message = fail.get_msg().strip()
            blocked = type(fail).__name__ == "UnmetDependency"
            outcome = Outcome.BLOCKED if blocked else Outcome.FAILED
            text = f"upstream failed: {message}" if blocked else message
            record = NodeRecord(node_id, recipe, stage, outcome, error=text)
            self.executor.records[node_id] = record
            self.console.node_done(record)
        if record.outcome is Outcome.FAILED:
            self.errors.append(fail.get_msg().strip())
            self.exit_codes.append(failure_exit_code(fail))

    def add_success(self, task: Task) -> None:
        pass

    def skip_uptodate(self, task: Task) -> None:
        pass

    def skip_ignore(self, task: Task) -> None:
        pass

    def cleanup_error(self, exception: Any) -> None:
        self.errors.append(str(exception))

    def runtime_error(self, msg: str) -> None:
        self.errors.append(msg)

    def teardown_task(self, task: Task) -> None:
        pass

    def complete_run(self) -> None:
        pass


def failure_exit_code(fail: Any) -> int:
    """A failed stage's exit code: its error's (errors.py), 3 for a bug in bmbuild (doit's TaskError)."""
    if isinstance(fail, TaskFailed):
        return int(getattr(fail, "exit_code", 1))
    return 3 if isinstance(fail, TaskError) else 1


@dataclass
class RunResult:
    records: list[NodeRecord]
    seconds: float
    doit_code: int
    errors: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)  # one per failed stage
    store: Any = None  # the run's store: its remote gets the build records (bmbuild.buildrecords)

    @property
    def ok(self) -> bool:
        return self.doit_code == 0 and not any(r.outcome in (Outcome.FAILED, Outcome.BLOCKED)
                                               for r in self.records)

    @property
    def exit_code(self) -> int:
        """0 when everything built; else the highest code of the failures (3 > 2 > 1, errors.py)."""
        if self.ok:
            return 0
        return max(self.exit_codes, default=1)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.records if r.outcome is outcome)


def settle_up_to_date(nodes: list[Node], executor: Executor) -> tuple[list[Node], set[str]]:
    """Decide, in dependency order, every node whose upstream is already up to date.

    Up-to-date nodes are recorded now and never reach doit, so a no-op costs one decision per
    node and no scheduling. Returns the nodes doit must still handle, and which of those were
    decided here (to run or restore: the executor keeps that decision for `execute`).
    """
    settled = Expected()  # only up-to-date nodes: a restorable one is not published yet
    decided: set[str] = set()
    pending: list[Node] = []
    for node in nodes:
        if settled.pending(node) is None:
            outputs = executor.up_to_date_outputs(node, settled.upstream(node))
            if outputs is not None:
                settled.record(node, outputs)
                continue
            decided.add(node.id)
        pending.append(node)
    return pending, decided


def doit_db_problem(path: Path) -> str | None:
    """Why doit could not use its state DB at `path`; None when it can (or there is none yet)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        conn = sqlite3.connect(path)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                return f"sqlite check: {check[0] if check else 'no answer'}"
            conn.execute("CREATE TABLE IF NOT EXISTS doit (task_id TEXT NOT NULL PRIMARY KEY, task_data json)")
            for task_id, data in conn.execute("SELECT task_id, task_data FROM doit"):
                state = json.loads(data.decode() if isinstance(data, bytes) else data)  # as doit decodes it
                # bmbuild never marks a task ignored: a row that does would skip a stage silently
                if not isinstance(state, dict) or state.get("ignore:") or not isinstance(
                        state.get("_values_:", {}), dict) or not isinstance(state.get("deps:", []), list):
                    return f"task {task_id!r} has state of the wrong shape"
        finally:
            conn.close()
    except (sqlite3.Error, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def usable_doit_db(path: Path) -> Path:
    """`path`, after removing a DB doit cannot use (warned once). Nothing is lost: bmbuild decides
    with content keys, doit's state only schedules, and doit starts a fresh DB."""
    problem = doit_db_problem(path)
    if problem is not None:
        warn_once(f"{path} is corrupt ({problem}); removed, doit's state is rebuilt (build results are unaffected)")
        for part in (path, *(path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
    return path


def run_nodes(nodes: list[Node], workspace: Workspace, console: Any, jobs: int = 1,
              force: bool = False, keep_going: bool = False, cluster: Any = None) -> RunResult:
    """Build `nodes` (already including their dependencies) under the workspace lock; on a Dask
    cluster when `cluster` (a bmbuild.cluster.ClusterConfig) is given."""
    if cluster is not None:
        from bmbuild.cluster import run_on_cluster

        return run_on_cluster(nodes, workspace, console, cluster, force=force, keep_going=keep_going)
    started = time.monotonic()
    with workspace.locked():
        workspace.clear_temp()
        pool = WorkerPool(jobs) if jobs > 1 else None
        executor = Executor(workspace, force=force, on_event=console.node_event, pool=pool)
        reporter = Reporter(console, executor)
        config = {
            "dep_file": str(usable_doit_db(workspace.state_dir / "doit.sqlite3")),
            "backend": "sqlite3",
            "reporter": reporter,
            "verbosity": 2,
            "continue": keep_going,
            "num_process": jobs if jobs > 1 else 0,
            "par_type": "thread",
        }
        console.start(len(nodes))
        try:
            pending, decided = settle_up_to_date(nodes, executor)
            code = 0
            if pending:  # doit schedules only what may have to run
                forget(workspace.state_dir)  # no "nothing changed" answer survives a run that changes things
                code = DoitMain(NodeLoader(pending, executor, config, decided), config_filenames=()).run(
                    ["run"] + [node.id for node in pending])
        finally:
            console.stop()
            if pool is not None:
                pool.shutdown()
            executor.stat.close()
    for node in nodes:  # without --keep-going doit stops early: name what a failure held back
        if node.id not in executor.records and any(
                executor.records.get(dep.id, NodeRecord("", "", "", Outcome.EXECUTED)).outcome
                in (Outcome.FAILED, Outcome.BLOCKED) for dep in node.deps):
            executor.records[node.id] = NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.BLOCKED,
                                                   error="upstream failed")
    records = [executor.records[n.id] for n in nodes if n.id in executor.records]
    return RunResult(records, time.monotonic() - started, code, reporter.errors, reporter.exit_codes,
                     executor.store)
