"""Runs one stage node with the action cache: up-to-date check, restore, or run and publish.

This is where "nothing half-done is ever trusted" lives: a stage runs in a private temp folder,
its outputs are hashed and stored, a manifest is written last, and the folder is renamed into
`build/<recipe>/<stage>` in one step. A folder without a valid manifest is never up to date.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from bmbuild.atomic import atomic_write_bytes
from bmbuild.cache import ActionEntry, StatCache, action_key, json_bytes
from bmbuild.cache import MANIFEST, validate_entry, warn_once
from bmbuild.errors import BmbuildError, StageFailed
from bmbuild.graph import Node, input_name
from bmbuild.pipeline import Outcome
from bmbuild.planner import key_components, stage_inputs
from bmbuild.stagelog import StageLog, tail_of
from bmbuild.store import Store
from bmbuild.toolchains.base import Toolchain, load_toolchain, package_version
from bmbuild.workers import StageJob, WorkerPool, execute_job
from bmbuild.workspace import Workspace

# Environment variables that may change what a stage produces; part of every key.
KEY_ENV = ("BMBUILD_KEY_SALT",)



CONSOLE_MESSAGE = 1500  # characters of a failure's message on the console (all of it in the log and report)
CONSOLE_LINE = 400      # characters of each log-tail line on the console


def clipped(text: str, limit: int) -> str:
    """`text`, cut at `limit` characters with a note: a tool's error may list a thousand names
    (onnxruntime's missing inputs), which buries the console; the log keeps every character."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters in the log)"


class Status(Enum):
    """What a node needs, decided before it runs."""

    UP_TO_DATE = "up-to-date"
    RESTORE = "cache hit"
    RUN = "run"
    AFTER_UPSTREAM = "after upstream"   # planning only: the key is known once upstream has run


@dataclass
class Decision:
    status: Status
    reason: str
    key: str | None = None
    components: dict[str, Any] | None = None
    entry: ActionEntry | None = None
    ran_on: str = ""  # `entry` was produced in this run elsewhere (a cluster worker): restoring it is executing
    manifest: dict[str, Any] | None = None  # an up-to-date node's published manifest

    @property
    def outputs(self) -> dict[str, str] | None:
        """The outputs the node will have once handled: known when it is restorable (and, for an
        up-to-date node, set from its manifest by `decide`); None when only running it tells."""
        if self.status is Status.UP_TO_DATE:
            return self.manifest["outputs"] if self.manifest is not None else None
        return self.entry.outputs if self.status is Status.RESTORE and self.entry is not None else None


@dataclass
class NodeRecord:
    """The result of one node in one run (goes to the console, report.json and JUnit)."""

    node_id: str
    recipe: str
    stage: str
    outcome: Outcome
    reason: str = ""
    seconds: float = 0.0
    saved_seconds: float = 0.0
    summary: str = ""
    error: str = ""
    log: str = ""
    key: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    worker: str = ""  # the cluster worker that ran the stage ("" when it ran here)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["outcome"] = self.outcome.value
        return data


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A published folder's manifest; None when there is none or it is malformed (warned once)."""
    path = folder / MANIFEST
    try:
        return validate_entry(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # BadEntry, JSONDecodeError, UnicodeDecodeError
        warn_once(f"{path} is malformed ({exc}); ignored, the stage is restored or runs again")
        return None


def explain_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which key component changed, in words ('params.opt: 1 -> 2', 'input model.py changed')."""
    changes: list[str] = []
    for section in ("stage_version", "toolchain", "env"):
        if old.get(section) != new.get(section):
            changes.append(f"{section} changed: {old.get(section)} -> {new.get(section)}")
    for section, label in (("params", "parameter"), ("inputs", "input"), ("upstream", "upstream")):
        before, after = old.get(section, {}) or {}, new.get(section, {}) or {}
        names = sorted(set(before) | set(after))
        if section == "params" and any(n in before and n in after and before[n] != after[n] for n in names):
            names = [n for n in names if n in before and n in after]  # one keyed only now: implied by the change
        for name in names:
            if before.get(name) != after.get(name):
                if section == "params":
                    changes.append(f"{label} {name}: {before.get(name)!r} -> {after.get(name)!r}")
                elif name not in before:
                    changes.append(f"new {label} {name}")
                elif name not in after:
                    changes.append(f"{label} {name} removed")
                else:
                    changes.append(f"{label} {name} changed")
    return "; ".join(changes) or "key changed"


class Executor:
    """Decides and runs nodes. Thread-safe: doit may call `execute` from worker threads."""

    def __init__(self, workspace: Workspace, force: bool = False,
                 on_event: Callable[[str, Node, Any], None] | None = None,
                 pool: WorkerPool | None = None):
        self.ws = workspace
        self.force = force
        self.store: Store = workspace.store()  # a TieredStore when a remote cache is set
        self.stat: StatCache = workspace.stat_cache()
        self.records: dict[str, NodeRecord] = {}
        self._decisions: dict[str, Decision] = {}
        self._toolchains: dict[str, Toolchain] = {}
        self._lock = threading.Lock()
        # (event, node, NodeRecord | None); "progress" events carry a bmbuild.progress.StageProgress
        self.on_event = on_event or (lambda event, node, record: None)
        self.pool = pool  # with -j > 1, stage work runs in worker processes

    # --- keys -----------------------------------------------------------------------------
    def toolchain(self, name: str) -> Toolchain:
        with self._lock:
            if name not in self._toolchains:
                self._toolchains[name] = load_toolchain(name)
            return self._toolchains[name]

    def components(self, node: Node, upstream_outputs: dict[str, dict[str, str]]) -> dict[str, Any]:
        """Everything a stage's result depends on; hashed by `action_key`."""
        stage, loaded = node.stage, node.loaded
        toolchain = self.toolchain(node.toolchain) if stage.uses_toolchain else None
        params, files = stage_inputs(stage, loaded, toolchain)
        if toolchain is not None:
            tc: dict[str, Any] = {"name": toolchain.name, "versions": toolchain.versions()}
        else:
            tc = {"name": "torch", "versions": {"torch": package_version("torch")}}
        return key_components(stage.name, stage.version, tc, params,
                              {input_name(p, loaded): self.stat.digest(p) for p in files},
                              upstream_outputs, {name: os.environ.get(name) for name in KEY_ENV})

    def published_outputs(self, node: Node) -> dict[str, str]:
        manifest = read_manifest(self.ws.stage_dir(node.recipe_name, node.stage.name))
        if manifest is None:
            raise StageFailed(f"{node.id}: upstream output is missing")
        return manifest["outputs"]

    # --- decisions ------------------------------------------------------------------------
    def decide(self, node: Node, upstream_outputs: dict[str, dict[str, str]] | None = None) -> Decision:
        """Up to date, restorable from the cache, or to be run — and why."""
        if upstream_outputs is None:
            upstream_outputs = {dep.stage.name: self.published_outputs(dep) for dep in node.deps}
        components = self.components(node, upstream_outputs)
        key = action_key(components)
        folder = self.ws.stage_dir(node.recipe_name, node.stage.name)
        manifest = read_manifest(folder)
        if self.force:
            return Decision(Status.RUN, "forced (--force)", key, components)
        if manifest is None:
            reason = "no output yet" if not folder.exists() else "output incomplete (no manifest)"
        elif manifest["key"] != key:
            reason = explain_change(manifest.get("components", {}), components)
        else:
            changed = self._changed_outputs(folder, manifest["outputs"])
            failures = self._stored_gate(node, manifest.get("metrics", {}), str(folder / MANIFEST))
            if not changed and failures == []:
                return Decision(Status.UP_TO_DATE, "nothing changed", key, components, manifest=manifest)
            reason = (f"output {changed[0]} was modified or removed" if changed else
                      "tolerance gate fails" if failures else "output incomplete (metrics unreadable)")
        entry = self.store.get_action(key)
        if (entry is not None and self.store.has_all(entry)
                and self._stored_gate(node, entry.metrics, f"cache entry {key[:12]}") is not None):
            return Decision(Status.RESTORE, reason, key, components, entry)
        return Decision(Status.RUN, reason, key, components)

    def _stored_gate(self, node: Node, metrics: dict[str, Any], source: str) -> list[str] | None:
        """The gate on metrics read back; None (warned once) when they are not of the stage's shape."""
        try:
            return node.stage.gate(node.loaded.recipe, metrics)
        except Exception as exc:
            warn_once(f"{source}: metrics of the wrong shape ({type(exc).__name__}: {exc}); "
                      "ignored, the stage is restored or runs again")
            return None

    def _changed_outputs(self, folder: Path, outputs: dict[str, str]) -> list[str]:
        changed = []
        for rel, digest in outputs.items():
            path = folder / rel
            try:
                if self.stat.digest(path) != digest:
                    changed.append(rel)
            except OSError:
                changed.append(rel)
        return changed

    def is_up_to_date(self, node: Node) -> bool:
        """doit's `uptodate` hook: decides once, remembers the decision for `execute`."""
        return self.up_to_date_outputs(node) is not None

    def up_to_date_outputs(self, node: Node,
                           upstream_outputs: dict[str, dict[str, str]] | None = None) -> dict[str, str] | None:
        """The node's published outputs when it is up to date (then recorded as such), else None;
        the decision is remembered for `execute` either way. `upstream_outputs` as for `decide`."""
        try:
            decision = self.decide(node, upstream_outputs)
        except Exception:  # reported by execute, which decides again and raises properly
            return None
        with self._lock:
            self._decisions[node.id] = decision
        if decision.status is Status.UP_TO_DATE and decision.outputs is not None:
            manifest = decision.manifest or {}
            self._record(node, NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.UP_TO_DATE,
                                          decision.reason, summary=manifest.get("summary", ""),
                                          log=str(self.ws.log_path(node.recipe_name, node.stage.name)),
                                          key=decision.key or "", metrics=manifest.get("metrics", {})))
            return decision.outputs
        return None

    # --- execution ------------------------------------------------------------------------
    def execute(self, node: Node) -> NodeRecord:
        """Restore or run one node, check its gate, publish it. Raises StageFailed on failure."""
        with self._lock:
            decision = self._decisions.pop(node.id, None)
        log_path = self.ws.log_path(node.recipe_name, node.stage.name)
        try:
            if decision is None:
                decision = self.decide(node)
        except BmbuildError as exc:  # nothing ran: the log there is an older run's, not this failure's
            raise self._fail(node, str(exc), log_path, show_tail=False, exit_code=exc.exit_code,
                             ran=False) from None
        if decision.status is Status.UP_TO_DATE:
            return self.records[node.id] if node.id in self.records else self._record(
                node, NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.UP_TO_DATE, decision.reason))
        tmp = self.ws.new_temp_dir(node.recipe_name, node.stage.name)
        try:
            started = time.monotonic()
            entry = None
            if decision.status is Status.RESTORE and decision.entry is not None:
                self.on_event("restore", node, None)
                if self._restore(decision.entry, tmp, log_path):
                    entry = decision.entry
                else:  # a corrupt or missing object: run instead
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp = self.ws.new_temp_dir(node.recipe_name, node.stage.name)
            outcome = Outcome.RESTORED if entry is not None and not decision.ran_on else Outcome.EXECUTED
            if entry is None:
                self.on_event("run", node, None)
                entry = self._run(node, decision, tmp, log_path)
            failures = node.stage.gate(node.loaded.recipe, entry.metrics)
            if failures:
                message = "tolerance not met:\n" + "\n".join(f"  {f}" for f in failures)
                log = StageLog(log_path, append=True)  # the log says why the stage failed, like the console
                if outcome is Outcome.RESTORED:  # the lines above are an earlier run's: say so
                    log.info(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: this run restored the result above from the "
                             f"cache (key {entry.key[:12]}, {decision.reason}) and checked it against the gate")
                log.info(f"FAILED: {message}")
                log.close()
                raise self._fail(node, message, log_path, show_tail=False, seconds=time.monotonic() - started,
                                 metrics=entry.metrics)  # the report shows what was measured
            self._publish(node, tmp, entry)
            record = NodeRecord(node.id, node.recipe_name, node.stage.name, outcome, decision.reason,
                                seconds=entry.seconds if decision.ran_on else time.monotonic() - started,
                                saved_seconds=entry.seconds if outcome is Outcome.RESTORED else 0.0,
                                summary=entry.summary, log=str(log_path), key=entry.key, metrics=entry.metrics,
                                worker=decision.ran_on)
            return self._record(node, record)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, node: Node, decision: Decision, out_dir: Path, log_path: Path) -> ActionEntry:
        stage = node.stage
        work_dir = out_dir.parent / f"{out_dir.name}.work"
        work_dir.mkdir(parents=True, exist_ok=True)
        progress_path = out_dir.parent / f"{out_dir.name}.progress"  # a worker's progress (bmbuild.progress)
        log = StageLog(log_path)
        log.info(f"# {node.id} ({decision.reason})")
        cmd_path = log_path.with_suffix(".cmd")
        cmd_path.unlink(missing_ok=True)  # written afresh by stages that run vendor commands
        started = time.monotonic()
        try:
            params = dict(decision.components["params"])
            inputs = {dep.stage.name: self.ws.stage_dir(node.recipe_name, dep.stage.name) for dep in node.deps}
            job = StageJob(node.loaded, stage.name, node.toolchain if stage.uses_toolchain else None,
                           params, inputs, out_dir, work_dir, log_path, progress_path)
            on_progress = lambda progress: self.on_event("progress", node, progress)  # noqa: E731
            if self.pool is not None:
                log.close()  # the worker appends to the log; so does this process afterwards
                metrics = self.pool.run(job, on_progress)
                log = StageLog(log_path, append=True)
            else:
                metrics = execute_job(job, log, self.toolchain(job.toolchain) if job.toolchain else None,
                                      on_progress)
            outputs = {str(p.relative_to(out_dir)): self.stat.digest(p)
                       for p in sorted(out_dir.rglob("*")) if p.is_file()}
            if not outputs:
                raise StageFailed(f"stage {stage.name} produced no output")
        except BmbuildError as exc:
            if log.closed:
                log = StageLog(log_path, append=True)
            log.info(f"FAILED: {exc}")
            log.close()
            raise self._fail(node, str(exc), log_path, show_tail=exc.shows_log_tail,
                             seconds=time.monotonic() - started, exit_code=exc.exit_code) from None
        except Exception as exc:  # bmbuild's own code around the stage raised: keep the traceback in the log
            if log.closed:
                log = StageLog(log_path, append=True)
            log.write_raw(traceback.format_exc())
            log.close()
            raise self._fail(node, f"{type(exc).__name__}: {exc}", log_path,
                             seconds=time.monotonic() - started) from None
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
            progress_path.unlink(missing_ok=True)
        seconds = time.monotonic() - started
        log.info(f"# done in {seconds:.2f}s")
        log.close()
        for rel, digest in outputs.items():
            self.store.put_file(out_dir / rel, digest, link=True)  # outputs are never written again
        log_digest = self.stat.digest(log_path)
        self.store.put_file(log_path, log_digest)
        cmd_digest = self.stat.digest(cmd_path) if cmd_path.is_file() else None
        if cmd_digest:
            self.store.put_file(cmd_path, cmd_digest)
        entry = ActionEntry(key=decision.key or "", outputs=outputs, log_digest=log_digest, cmd_digest=cmd_digest,
                            summary=stage.summary(metrics), metrics=metrics,
                            components=decision.components or {}, seconds=seconds,
                            recipe=node.recipe_name, stage=stage.name)
        self.store.put_action(entry)
        return entry

    def _restore(self, entry: ActionEntry, out_dir: Path, log_path: Path) -> bool:
        for rel, digest in entry.outputs.items():
            if not self.store.get_file(digest, out_dir / rel, link=True):
                return False
        cmd_path = log_path.with_suffix(".cmd")
        cmd_path.unlink(missing_ok=True)  # an earlier run's command lines do not describe this result
        for digest, path in ((entry.log_digest, log_path), (entry.cmd_digest, cmd_path)):
            if digest:
                tmp_file = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
                if self.store.get_file(digest, tmp_file):
                    os.replace(tmp_file, path)
        return True

    def _publish(self, node: Node, tmp: Path, entry: ActionEntry) -> None:
        """Swap the finished folder into place; the manifest inside marks it complete."""
        manifest = {"key": entry.key, "outputs": entry.outputs, "summary": entry.summary,
                    "metrics": entry.metrics, "components": entry.components}
        atomic_write_bytes(tmp / MANIFEST, json_bytes(manifest))
        final = self.ws.stage_dir(node.recipe_name, node.stage.name)
        trash = None
        if final.exists():
            trash = self.ws.new_temp_dir(node.recipe_name, f"{node.stage.name}.old", create=False)
            os.replace(final, trash)
        os.replace(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        # hashing the published files now keeps the next up-to-date check free of reads
        for rel in entry.outputs:
            self.stat.digest(final / rel)

    def _fail(self, node: Node, message: str, log_path: Path, show_tail: bool = True,
              seconds: float = 0.0, exit_code: int = 1, metrics: dict[str, Any] | None = None,
              ran: bool = True) -> StageFailed:
        """The failure of `node`, recorded (with the metrics measured, when a gate failed); its exit
        code is the cause's (errors.py: 2 for bad input). `ran`: the stage ran (or was restored), so
        the log at `log_path` is this failure's."""
        tail = tail_of(log_path, 15) if show_tail else ""
        text = f"{node.id} failed: {clipped(message, CONSOLE_MESSAGE)}"
        if tail:
            text += "\n  log tail:\n" + "\n".join("    " + clipped(line, CONSOLE_LINE) for line in tail.splitlines())
        if ran:
            text += f"\n  full log: {log_path}"
        error = StageFailed(text)
        error.exit_code = exit_code
        self._record(node, NodeRecord(node.id, node.recipe_name, node.stage.name, Outcome.FAILED,
                                      seconds=seconds, error=message, log=str(log_path) if ran else "",
                                      metrics=metrics or {}))
        return error

    def _record(self, node: Node, record: NodeRecord) -> NodeRecord:
        with self._lock:
            self.records[node.id] = record
        self.on_event("done", node, record)
        return record
