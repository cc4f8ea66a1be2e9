"""The library behind the commands: load recipes, pick toolchains, plan, run, report, clean.

Each function takes plain values and returns data; `cli.py` only parses and renders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bmbuild.atomic import atomic_write_bytes
from bmbuild.cache import json_bytes
from bmbuild.errors import BmbuildError, RecipeError
from bmbuild.executor import Decision, Executor, NodeRecord, Status, read_manifest
from bmbuild.graph import Node, build_graph
from bmbuild.pipeline import COMPILE_STAGES, OK_OUTCOMES, Outcome
from bmbuild.planner import Expected
from bmbuild.recipe import LoadedRecipe, load_recipes, load_recipes_partial
from bmbuild.toolchains.base import choose, load_toolchain, require_usable
from bmbuild.workspace import Workspace


@dataclass
class Build:
    """The recipes selected by a command, their toolchains and their nodes."""

    workspace: Workspace
    recipes: list[LoadedRecipe]
    toolchains: dict[str, str]
    nodes: list[Node]
    errors: list[RecipeError] = field(default_factory=list)  # broken recipes left out (keep_going)
    chosen_by: dict[str, str] = field(default_factory=dict)  # recipe name -> why `auto` picked its toolchain


def in_shard(name: str, shard: tuple[int, int] | None) -> bool:
    """Whether recipe `name` belongs to shard i of N: stable under adding or removing others."""
    if shard is None:
        return True
    index, total = shard
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % total == index - 1


def prepare(paths: list[str], workspace: Workspace, toolchain: str | None = None,
            stages: list[str] | None = None, check_toolchains: bool = True,
            shard: tuple[int, int] | None = None, keep_going: bool = False) -> Build:
    """Load recipes below `paths` and turn them into nodes. Never imports torch.

    A broken recipe stops everything, unless `keep_going`: then the others are built and the
    errors are kept in `Build.errors` (none loaded at all is still an error)."""
    errors: list[RecipeError] = []
    if keep_going:
        recipes, errors = load_recipes_partial([Path(p) for p in paths], workspace.root, workspace.config.vars)
        if not recipes and errors:
            from bmbuild.recipe import RecipeErrors

            raise RecipeErrors(errors)
    else:
        recipes = load_recipes([Path(p) for p in paths], workspace.root, workspace.config.vars)
    recipes = [loaded for loaded in recipes if in_shard(loaded.name, shard)]
    chosen: dict[str, str] = {}
    why: dict[str, str] = {}
    resolved_cache: dict[str, tuple[str, str]] = {}
    for loaded in recipes:
        wanted = toolchain or loaded.recipe.toolchain
        choice = f"{wanted}/{loaded.recipe.target}"
        if choice not in resolved_cache:
            instance, reason = choose(wanted, loaded.recipe.target)
            if check_toolchains:
                require_usable(instance)
            resolved_cache[choice] = instance.name, reason
        chosen[loaded.name], why[loaded.name] = resolved_cache[choice]
    return Build(workspace, recipes, chosen, build_graph(recipes, chosen, stages), errors, why)


def toolchain_choices(build: Build, shown: int = 8) -> list[str]:
    """One line per toolchain choice: the toolchain, why `auto` picked it, and its recipes."""
    groups: dict[tuple[str, str], list[str]] = {}
    for loaded in build.recipes:
        key = (build.toolchains[loaded.name], build.chosen_by.get(loaded.name, ""))
        groups.setdefault(key, []).append(loaded.name)
    lines = []
    for (name, why), recipes in groups.items():
        more = f" (+{len(recipes) - shown} more)" if len(recipes) > shown else ""
        lines.append(f"toolchain {name}{f' ({why})' if why else ''}: {', '.join(recipes[:shown])}{more}")
    return lines


def preflight(build: Build, keep_going: bool = False) -> Build:
    """The build after checking each recipe against the files it names and its toolchain
    (bmbuild.preflight), before any stage runs. A recipe with problems stops everything, unless
    `keep_going`: then it is left out like a broken recipe and the others are built."""
    from bmbuild.preflight import recipe_problems
    from bmbuild.recipe import RecipeErrors

    found = {loaded.name: recipe_problems(loaded, build.toolchains.get(loaded.name)) for loaded in build.recipes}
    problems = [problem for name in found for problem in found[name]]
    if not problems:
        return build
    kept = [loaded for loaded in build.recipes if not found[loaded.name]]
    if not keep_going or not kept:
        raise RecipeErrors(build.errors + problems)
    names = {loaded.name for loaded in kept}
    return Build(build.workspace, kept, {n: t for n, t in build.toolchains.items() if n in names},
                 [node for node in build.nodes if node.recipe_name in names], build.errors + problems,
                 {n: w for n, w in build.chosen_by.items() if n in names})


@dataclass
class PlanRow:
    node: Node
    status: Status
    reason: str


def plan(build: Build, force: bool = False) -> list[PlanRow]:
    """What `run` would do for each node, and why; reads the build dir and the cache only."""
    executor = Executor(build.workspace, force=force)
    rows: list[PlanRow] = []
    try:
        for node, decision, waiting_for in expected_decisions(build, executor):
            if decision is None:
                rows.append(PlanRow(node, Status.AFTER_UPSTREAM, f"{waiting_for.stage.name} will run first"))
            else:
                rows.append(PlanRow(node, decision.status, decision.reason))
    finally:
        executor.stat.close()
    return rows


def expected_decisions(build: Build, executor: Executor) -> Iterator[tuple[Node, Decision | None, Node | None]]:
    """Each node's decision, given the outputs its upstream stages will hold after a run (published
    and up to date, or restored from the cache); (node, None, the upstream node that must run
    first) when those are not known yet. The one propagation of expected upstream outputs:
    `plan` and `cache pull` both use it."""
    expected = Expected()
    for node in build.nodes:
        pending = expected.pending(node)
        if pending is not None:
            yield node, None, pending
            continue
        decision: Decision = executor.decide(node, expected.upstream(node))
        expected.record(node, decision.outputs)
        yield node, decision, None


def remember_noop(args: Any, build: Build, lines: dict[str, list[str]], since_ns: int) -> bool:
    """After a run where every node was up to date: record what decided that (bmbuild.snapshot),
    so the next run/plan/status of the same selection can answer from stat calls alone.

    Only for the reference toolchain, whose versions are Python packages (their folders are
    tracked); other toolchains read commands and files the snapshot does not follow. Where
    `toolchain: auto` would find another one is tracked too (PATH and Python folders, the managed
    tpu-mlir environment).
    """
    from bmbuild import snapshot
    from bmbuild.cache import MANIFEST
    from bmbuild.compose import defaults_chain
    from bmbuild.executor import KEY_ENV
    from bmbuild.toolchains import tpu_mlir_env

    if set(build.toolchains.values()) != {"reference"} or snapshot.selection_key(args, Path.cwd()) is None:
        return False
    ws = build.workspace
    managed = tpu_mlir_env.managed_path()
    inputs: set[Path] = {tpu_mlir_env.toolchains_dir(), managed, managed / tpu_mlir_env.INFO_FILE}
    anchors: set[Path] = set()
    outputs: set[Path] = set()
    for loaded in build.recipes:
        recipe = loaded.recipe
        inputs.update([loaded.file, *defaults_chain(loaded.file, ws.root),
                       (loaded.file.parent / recipe.source.model_file).resolve()])
        named = [recipe.source.weights.path if recipe.source.weights else None,
                 recipe.calibration.data if recipe.calibration else None,
                 recipe.eval.data if recipe.eval else None]
        for path in filter(None, named):
            inputs.add(path)
            if path.is_dir():
                anchors.add(path)
    for node in build.nodes:
        inputs.update(node.stage.external_inputs(node.loaded))
        folder = ws.stage_dir(node.recipe_name, node.stage.name)
        manifest = read_manifest(folder)
        if manifest is None:
            return False
        outputs.update([folder / MANIFEST, *(folder / rel for rel in manifest["outputs"])])
    reports = [ws.report_path(loaded.name) for loaded in build.recipes]
    return snapshot.remember(args, since_ns, inputs, anchors, outputs, reports,
                             [ws.build_dir, ws.state_dir, ws.cache_dir], lines, len(build.nodes), KEY_ENV)


@dataclass
class CorruptOutput:
    """A published output whose content is not what its manifest says (`status --verify`)."""

    path: Path
    expected: str
    actual: str | None  # None: the file is missing or unreadable


def verify_outputs(build: Build) -> tuple[int, list[CorruptOutput]]:
    """Re-hash every published output of the build's stages, whatever the stat cache remembers.

    Catches what the stat signature cannot see (bit rot below the filesystem). The fresh digests
    replace the remembered ones, so the next `run` restores or rebuilds what this found corrupt.
    Returns how many outputs were checked and the corrupt ones.
    """
    stat = build.workspace.stat_cache()
    checked, corrupt = 0, []
    try:
        for node in build.nodes:
            folder = build.workspace.stage_dir(node.recipe_name, node.stage.name)
            manifest = read_manifest(folder)
            outputs = manifest.get("outputs") if manifest else None
            for rel, expected in (outputs.items() if isinstance(outputs, dict) else ()):
                checked += 1
                try:
                    actual: str | None = stat.rehash(folder / rel)
                except OSError:
                    actual = None
                if actual != expected:
                    corrupt.append(CorruptOutput(folder / rel, str(expected), actual))
    finally:
        stat.close()
    if corrupt:  # what the stat signatures cannot see, a remembered no-op cannot either
        from bmbuild.snapshot import forget

        forget(build.workspace.state_dir)
    return checked, corrupt


def write_reports(build: Build, records: list[NodeRecord]) -> list[Path]:
    """`build/<recipe>/report.json` for every recipe touched by a run."""
    by_recipe: dict[str, list[NodeRecord]] = {}
    for record in records:
        by_recipe.setdefault(record.recipe, []).append(record)
    written = []
    for loaded in build.recipes:
        mine = by_recipe.get(loaded.name)
        if not mine:
            continue
        path = build.workspace.report_path(loaded.name)
        report = recipe_report(build, loaded, mine)
        keep_timings(report, read_report(path))
        if not _same_report(path, report):  # a repeated no-op leaves its reports (and their fsyncs) alone
            atomic_write_bytes(path, json_bytes(report))
        written.append(path)
    return written


def _same_report(path: Path, report: dict[str, Any]) -> bool:
    """Whether `path` already holds `report`, but for the time it was generated."""
    try:
        old = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and {**old, "generated": None} == {**report, "generated": None}


def recipe_report(build: Build, loaded: LoadedRecipe, records: list[NodeRecord]) -> dict[str, Any]:
    recipe = loaded.recipe
    ok = all(r.outcome in OK_OUTCOMES for r in records)
    return {
        "name": recipe.name,
        "recipe": str(loaded.file),
        "toolchain": build.toolchains[recipe.name],
        "target": recipe.target,
        "prec": recipe.prec,
        "batch_sizes": recipe.resolved_batch_sizes,
        "int8_tolerance": recipe.int8.tolerance.model_dump() if recipe.prec == "INT8" else None,  # the report's gate
        "params": recipe.model_dump(mode="json", exclude={"name", "variants"}),  # for `bmbuild diff`
        "ok": ok,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": {r.stage: {**{k: v for k, v in r.to_json().items() if k not in ("recipe", "stage")},
                             "outputs": output_sizes(build.workspace, r)}
                   for r in records},
    }


def read_report(path: Path) -> dict[str, Any]:
    """A recipe's last report.json ({} when there is none or it is not one: it is read back, untrusted)."""
    import json

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {}


def keep_timings(report: dict[str, Any], previous: dict[str, Any]) -> None:
    """Up-to-date stages keep the timings of the run that built their outputs (same key), so a
    no-op run does not leave a report of zero seconds; `timing_from` says when they were measured."""
    for stage, entry in report["stages"].items():
        before = previous["stages"].get(stage) if previous else None
        if entry["outcome"] != Outcome.UP_TO_DATE.value or not isinstance(before, dict) or before.get("key") != entry["key"]:
            continue
        seconds, saved = before.get("seconds"), before.get("saved_seconds", 0.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
                   for v in (seconds, saved)):
            continue
        when = before.get("timing_from") or previous.get("generated")
        entry.update({"seconds": seconds, "saved_seconds": saved, "timing_from": when if isinstance(when, str) else None})


def output_sizes(workspace: Workspace, record: NodeRecord) -> dict[str, int]:
    """Published output -> size in bytes, from the stage's manifest ({} when it has none)."""
    if record.outcome not in OK_OUTCOMES:
        return {}
    folder = workspace.stage_dir(record.recipe, record.stage)
    manifest = read_manifest(folder) or {"outputs": {}}
    sizes = {}
    for rel in manifest["outputs"]:
        try:
            sizes[rel] = (folder / rel).stat().st_size
        except OSError:
            continue
    return sizes


def model_summary(records: list[NodeRecord]) -> str:
    """One line per model: fp32 cmp, int8 cmp, accuracy when evaluated."""
    return "; ".join(r.summary for r in records if r.summary and r.stage in COMPILE_STAGES)


MODEL_SUFFIXES = (".bmodel", ".onnx")


def built_models(build: Build, records: list[NodeRecord]) -> list[dict[str, Any]]:
    """Per recipe of a run: did it build, its one-line summary and where its compiled models are
    (the published .bmodel/.onnx files of its compile stages, from their manifests)."""
    by_recipe: dict[str, list[NodeRecord]] = {}
    for record in records:  # grouped once: scanning every record per recipe was quadratic
        by_recipe.setdefault(record.recipe, []).append(record)
    models = []
    for loaded in build.recipes:
        mine = by_recipe.get(loaded.name, [])
        if not mine:
            continue
        ok = all(r.outcome in OK_OUTCOMES for r in mine)
        files = []
        for record in mine:
            if record.stage in COMPILE_STAGES and ok:
                folder = build.workspace.stage_dir(record.recipe, record.stage)
                outputs = (read_manifest(folder) or {}).get("outputs") or {}
                files += [str(folder / rel) for rel in sorted(outputs) if rel.endswith(MODEL_SUFFIXES)]
        models.append({"name": loaded.name, "ok": ok, "summary": model_summary(mine) or None,
                       "folder": str(build.workspace.build_dir / loaded.name), "files": files})
    return models


def clean(workspace: Workspace, recipe_names: list[str] | None = None) -> list[Path]:
    """Remove build outputs (all, or of the named recipes). The cache is left alone, and so is the
    build folder's lock file: it is held meanwhile, and a new file would be a second lock."""
    from bmbuild.snapshot import forget

    removed = []
    with workspace.locked():
        forget(workspace.state_dir)
        if recipe_names:
            targets = [workspace.build_dir / name for name in recipe_names]
        else:
            targets = [path for path in workspace.build_dir.iterdir() if path != workspace.build_lock_path]
            targets.append(workspace.state_dir / "doit.sqlite3")
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
                removed.append(target)
            elif target.exists():
                target.unlink()
                removed.append(target)
    return removed


def recipe_schema() -> dict[str, Any]:
    from bmbuild.schemas import recipe_schema as build

    return build()


def schema_text(kind: str = "recipe") -> str:
    """A schema of `bmbuild.schemas.SCHEMAS` (recipe, defaults, bmbuild) as committed in schemas/."""
    from bmbuild.schemas import schema_text as text

    return text(kind)



@dataclass
class ToolchainStatus:
    """One row of `bmbuild toolchains`."""

    name: str
    usable: bool
    version: str
    reason: str = ""


def toolchain_statuses() -> tuple[list[ToolchainStatus], str]:
    """Every registered toolchain: usable here or why not, and its version; plus what `auto` picks."""
    from bmbuild.errors import ToolchainError
    from bmbuild.toolchains.base import REGISTRY

    statuses = []
    for name in REGISTRY:
        try:
            status = load_toolchain(name).availability()
        except ToolchainError as exc:
            statuses.append(ToolchainStatus(name, False, "", str(exc)))
            continue
        statuses.append(ToolchainStatus(name, status.usable, status.version, status.reason))
    return statuses, ", ".join(f"{name} for {target}" for target, name in auto_choices().items())


def auto_choices() -> dict[str, str]:
    """target -> the toolchain `toolchain: auto` picks for it here."""
    from bmbuild.toolchains.base import AUTO_ORDER

    return {target: load_toolchain("auto", target).name for target in AUTO_ORDER}


@dataclass
class DryRunStep:
    """What `run --dry-run` shows for one node: would it run, and the commands it would run."""

    node: Node
    status: Status
    reason: str
    commands: list[str]
    error: str = ""


def dry_run(build: Build, force: bool = False) -> list[DryRunStep]:
    """The exact commands each stage that is not up to date would run, without running anything.

    Stages that are up to date or restorable from the cache run nothing. Paths are the published
    ones (`build/<recipe>/<stage>/...`); a real run writes into a private temp folder first.
    Nothing is written to the build folder.
    """
    from bmbuild.planner import stage_inputs
    from bmbuild.stagecontext import StageContext
    from bmbuild.steps import render

    steps = []
    toolchains: dict[str, Any] = {}
    ws = build.workspace
    for row in plan(build, force=force):
        node = row.node
        if row.status in (Status.UP_TO_DATE, Status.RESTORE):
            steps.append(DryRunStep(node, row.status, row.reason, []))
            continue
        ctx = StageContext(node.loaded, {},
                           {dep.stage.name: ws.stage_dir(node.recipe_name, dep.stage.name) for dep in node.deps},
                           ws.stage_dir(node.recipe_name, node.stage.name),
                           ws.temp_root(node.recipe_name) / f"{node.stage.name}.work",
                           None, None)  # type: ignore[arg-type]  # no log, no toolchain: nothing runs
        try:
            if node.stage.uses_toolchain:
                if node.toolchain not in toolchains:
                    toolchains[node.toolchain] = load_toolchain(node.toolchain)
                ctx.toolchain = toolchains[node.toolchain]
                ctx.params = stage_inputs(node.stage, node.loaded, ctx.toolchain)[0]  # what the run is given
            commands = [render(step) for step in node.stage.steps(ctx)]
        except BmbuildError as exc:
            steps.append(DryRunStep(node, row.status, row.reason, [], error=str(exc)))
            continue
        steps.append(DryRunStep(node, row.status, row.reason, commands))
    return steps
