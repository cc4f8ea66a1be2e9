"""Command line: parse arguments, call one library function, render its result.

Exit codes (the rule is in errors.py): 0 success; 1 a stage ran and failed (a tool's error, a gate not
met, the model's code raised or exited); 2 the user's input is wrong (recipe, data, a missing file,
an unusable toolchain), found before or during a stage; 3 an internal error (a bug: printed with its
traceback). When several stages fail (--keep-going), the highest code wins.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bmbuild import __version__, snapshot
from bmbuild.errors import BmbuildError
from bmbuild.toolchain_registry import REGISTRY

DEFAULT_SCHEMA = Path("schemas/recipe.schema.json")
TOOLCHAIN_CHOICES = ["auto", *REGISTRY]
DESCRIPTION = "Declarative, incremental, cached builds of Sophgo bmodels from YAML recipes."
EPILOG = """\
examples:
  bmbuild run recipes/resnet.yaml        build one model (again: nothing to do)
  bmbuild run recipes/ -j 2 -k           every recipe below a folder; go on after a failure
  bmbuild plan recipes/                  what run would do, and why
  bmbuild validate recipes/ --json       check recipes, machine-readable
  bmbuild toolchains                     which toolchains work here, and why not

exit codes:
  0  success
  1  a stage ran and failed (a tool's error, a tolerance not met, the model's code raised)
  2  the input is wrong (recipe, data, a missing file, an unusable toolchain)
  3  an internal error (a bug in bmbuild: printed with its traceback)
  with --keep-going the highest code of all failures wins
"""


def _workspace(args: argparse.Namespace) -> Any:
    from bmbuild.workspace import Workspace

    return Workspace.at(cache_dir=Path(args.cache_dir) if getattr(args, "cache_dir", None) else None,
                        build_dir=Path(args.build_dir) if getattr(args, "build_dir", None) else None,
                        remote_cache=getattr(args, "remote_cache", None) or None)


def _prepare(args: argparse.Namespace, check_toolchains: bool = True) -> Any:
    from bmbuild.project import prepare

    return prepare(args.paths, _workspace(args), getattr(args, "toolchain", None),
                   getattr(args, "stage", None), check_toolchains=check_toolchains,
                   shard=getattr(args, "shard", None), keep_going=getattr(args, "keep_going", False))


def _shard(text: str) -> tuple[int, int]:
    """'i/N' with 1 <= i <= N."""
    try:
        index, total = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N, e.g. 1/4, got {text!r}") from None
    if not 1 <= index <= total:
        raise argparse.ArgumentTypeError(f"shard {text}: need 1 <= i <= N")
    return index, total


def cmd_run(args: argparse.Namespace) -> int:
    from bmbuild.cluster import cluster_config
    from bmbuild.console import BuildConsole, format_record
    from bmbuild.engine import run_nodes
    from bmbuild.executor import Outcome
    from bmbuild.project import built_models, preflight, toolchain_choices, write_reports
    from bmbuild.recipe import RecipeErrors

    if args.dry_run:
        return _dry_run(args)
    since_ns = snapshot.clock()
    build = preflight(_prepare(args), args.keep_going)  # data, ONNX inputs, toolchain limits: before any stage
    console = BuildConsole(stream=sys.stderr if args.json else None, force_plain=args.plain,
                           quiet=args.quiet, verbose=args.verbose, color=args.color)
    toolchains = sorted(set(build.toolchains.values()))
    header = "\n".join([f"bmbuild {__version__}: {len(build.recipes)} recipe(s), {len(build.nodes)} stage(s), "
                        f"cache {build.workspace.cache_dir}", *toolchain_choices(build)])
    if not args.quiet:
        console.print(header)
    if "nntc" in toolchains:
        from bmbuild.toolchains.base import package_version
        from bmbuild.torchmodel import torch_note

        note = torch_note(package_version("torch"))
        if note:
            console.print(f"note: {note} for tracing; bmnetp may reject operators that newer torch emits")
    jobs = args.jobs or build.workspace.config.jobs
    cluster = cluster_config(build.workspace.config.executor, args.executor, args.scheduler)
    result = run_nodes(build.nodes, build.workspace, console, jobs=jobs, force=args.force,
                       keep_going=args.keep_going, cluster=cluster)
    write_reports(build, result.records)
    if not args.stage:  # a whole build of each recipe is the remote's last build of it (`diff --remote`)
        from bmbuild.buildrecords import publish_builds

        publish_builds(build, result.records, result.store)
    for error in build.errors:  # broken recipes left out under --keep-going
        console.print(f"error: {error.render()}", style="red")
    exit_code = max([result.exit_code] + [error.exit_code for error in build.errors])
    executed, restored = result.count(Outcome.EXECUTED), result.count(Outcome.RESTORED)
    uptodate = result.count(Outcome.UP_TO_DATE)
    models = built_models(build, result.records)
    model_lines = []
    for model in models:
        if model["ok"]:
            model_lines.append(f"{model['name']}: {model['summary'] or 'built'}")
            if model["files"]:
                model_lines.append(f"  models: {', '.join(_relative(Path(f)) for f in model['files'])}")
    for line in model_lines if not args.quiet else []:
        console.print(line)
    for error in result.errors:
        console.print(error, style="red")
    if executed == 0 and restored == 0 and result.ok and not build.errors:
        console.print(_nothing_to_do(uptodate, result.seconds))
        _remember_noop(args, build, result.records, [header, *map(format_record, result.records), *model_lines],
                       since_ns)
    else:
        failed = result.count(Outcome.FAILED) + result.count(Outcome.BLOCKED)
        console.print(f"{executed} executed, {restored} restored from cache, {uptodate} up to date, "
                      f"{failed} failed or blocked ({result.seconds:.2f}s)"
                      + (f"; {len(build.errors)} broken recipe(s) left out" if build.errors else ""))
    _ci_output(args, build, result)
    report = None
    if args.report_dir:
        from bmbuild.report import write_report

        names = [loaded.name for loaded in build.recipes]
        ran = {record.recipe for record in result.records}
        written = write_report(build.workspace.build_dir, Path(args.report_dir), names,
                               not_run=[name for name in names if name not in ran])
        report = written.paths['html']
        console.print(f"report: {report} (+ {', '.join(p.name for k, p in written.paths.items() if k != 'html')})")
    if args.json:
        from bmbuild import jsonout

        counts = {outcome.value: result.count(outcome) for outcome in Outcome}
        print(jsonout.dumps(jsonout.document(
            "run", ok=exit_code == 0, exit_code=exit_code, seconds=round(result.seconds, 3), counts=counts,
            models=models, stages=[{"id": r.node_id, **{k: v for k, v in r.to_json().items() if k != "node_id"}}
                                   for r in result.records],
            errors=[jsonout.message_item(error) for error in result.errors]
            + (jsonout.error_items(RecipeErrors(build.errors)) if build.errors else []), report=report)))
    return exit_code


def _ci_output(args: argparse.Namespace, build: Any, result: Any) -> None:
    """On GitHub Actions: an annotation per failure and broken recipe; with --step-summary the
    run's summary.md goes to the job summary."""
    from bmbuild import ci, jsonout
    from bmbuild.recipe import RecipeErrors

    if ci.on_github_actions():
        items = [jsonout.message_item(error) for error in result.errors]
        items += jsonout.error_items(RecipeErrors(build.errors)) if build.errors else []
        ci.annotate(items, sys.stderr if args.json else sys.stdout)
    if args.step_summary:
        from bmbuild.report.collect import collect, report_files
        from bmbuild.report.markdown import markdown

        names = [loaded.name for loaded in build.recipes]
        ran = {record.recipe for record in result.records}
        files = report_files(build.workspace.build_dir, names)
        text = markdown(collect(files, [n for n in names if n not in ran])) if files else "no model was built\n"
        if ci.append_step_summary(text) is None:
            print("note: --step-summary: $GITHUB_STEP_SUMMARY is not set; no job summary written", file=sys.stderr)


def _nothing_to_do(stages: int, seconds: float) -> str:
    return f"nothing to do: {stages} stage(s) up to date ({seconds:.2f}s)"


def _plan_line(status: str, node_id: str, reason: str) -> str:
    return f"  {status:<14} {node_id:<36} {reason}"


def _plan_footer(pending: int, total: int) -> str:
    return f"{pending} of {total} stage(s) would run or be restored"


def _status_line(node_id: str, state: str, summary: str) -> str:
    return f"  {node_id:<36} {state:<12} {summary}".rstrip()


def _remember_noop(args: argparse.Namespace, build: Any, records: list[Any], run_lines: list[str],
                   since_ns: int) -> None:
    """Let the next run/plan/status of this selection answer from stat calls (bmbuild.snapshot),
    with what they print by default."""
    from bmbuild.executor import Status
    from bmbuild.project import remember_noop, toolchain_choices

    lines = {"run": run_lines,
             "plan": toolchain_choices(build) + [_plan_line(Status.UP_TO_DATE.value, r.node_id, r.reason) for r in records]
             + [_plan_footer(0, len(records))],
             "status": [_status_line(r.node_id, Status.UP_TO_DATE.value, r.summary) for r in records]}
    remember_noop(args, build, lines, since_ns)


def _replay(args: argparse.Namespace, entry: dict[str, Any], started: float) -> int:
    """Print what the full no-op check printed for this selection (bmbuild.snapshot.lookup)."""
    lines = entry["lines"][args.command]
    if args.command == "run" and args.color == "auto" and not args.plain and sys.stdout.isatty():
        stages = entry["stages"]  # rich dims the up-to-date lines on a terminal
        lines = [lines[0], *(f"\x1b[2m{line}\x1b[0m" for line in lines[1:1 + stages]), *lines[1 + stages:]]
    text = "\n".join(lines)
    if args.command == "run":
        text += "\n" + _nothing_to_do(entry["stages"], time.monotonic() - started)
    print(text)
    return 0


def _relative(path: Path) -> str:
    """`path` relative to the current folder when it is below it (shorter lines), else as is."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dry_run(args: argparse.Namespace) -> int:
    """`run --dry-run`: the commands each stage would run; nothing runs, nothing is written.

    The output is a shell script that is safe to paste, whole or line by line: the commands are
    quoted shell lines, everything else is a `#` comment (`bmbuild.commands.paste_safe`).
    """
    from bmbuild.executor import Status
    from bmbuild.project import dry_run
    from bmbuild.toolchains.base import load_toolchain
    from bmbuild.commands import comment, paste_safe

    build = _prepare(args, check_toolchains=False)
    for name in sorted(set(build.toolchains.values())):
        status = load_toolchain(name).availability()
        if not status.usable:
            print(comment(f"note: toolchain {name!r} is not usable here ({status.reason}); "
                          "a real run stops before any stage"), file=sys.stderr if args.json else sys.stdout)
    steps = dry_run(build, force=args.force)
    if args.json:
        from bmbuild import jsonout

        print(jsonout.dumps(jsonout.document("run", dry_run=True, steps=[
            {"id": s.node.id, "recipe": s.node.recipe_name, "stage": s.node.stage.name, "status": s.status.value,
             "reason": s.reason, "commands": s.commands, "error": s.error or None} for s in steps])))
        return 2 if any(step.error for step in steps) else 0
    for step in steps:
        print(comment(f"{step.node.id}: {step.status.value} ({step.reason})"))
        for line in step.commands:
            print(f"  {paste_safe(line)}")
        for index, line in enumerate(step.error.splitlines()):
            print("  " + comment(("error: " if index == 0 else "  ") + line))
    would_run = sum(1 for step in steps if step.status in (Status.RUN, Status.AFTER_UPSTREAM))
    print(comment(f"dry run: {would_run} of {len(steps)} stage(s) would run; nothing was run"))
    return 2 if any(step.error for step in steps) else 0


def cmd_toolchains(args: argparse.Namespace) -> int:
    from bmbuild.project import toolchain_statuses

    statuses, auto = toolchain_statuses()
    if args.json:
        from dataclasses import asdict

        from bmbuild import jsonout
        from bmbuild.project import auto_choices

        print(jsonout.dumps(jsonout.document("toolchains", toolchains=[asdict(s) for s in statuses],
                                             auto=auto_choices())))
        return 0
    for status in statuses:
        if args.quiet and not status.usable:
            continue
        print(f"  {status.name:<10} {'usable' if status.usable else 'not usable':<11} {status.version}".rstrip())
        if status.reason:
            print(f"             why: {status.reason}")
    print(f"toolchain auto picks: {auto}")
    return 0


def cmd_toolchains_install(args: argparse.Namespace) -> int:
    from bmbuild.toolchains.tpu_mlir_env import main_install

    return main_install(args.python)


def cmd_report(args: argparse.Namespace) -> int:
    from bmbuild.report import write_report

    workspace = _workspace(args)
    names, baseline = None, None
    if args.baseline or args.remote:  # resolved as `bmbuild diff` does
        names, files = _built_selection(args, workspace)
        baseline = _baseline(args, workspace, names, files, default=None)
    elif args.paths:
        names = [loaded.name for loaded in _prepare(args, check_toolchains=False).recipes]
    out = Path(args.out) if args.out else workspace.build_dir / "reports"
    written = write_report(workspace.build_dir, out, names, formats=args.format, baseline=baseline)
    totals = written.summary["totals"]
    print(f"{totals['passed']} of {totals['models']} model(s) passed"
          + (f"; baseline: {baseline[0]}" if baseline else "") + "; wrote"
          + "".join(f"\n  {path}" for path in written.paths.values()))
    return 0


def _built_selection(args: argparse.Namespace, workspace: Any) -> tuple[list[str], list[Path]]:
    """(names, recipe files) of the recipes named on the command line, else of every built model."""
    from bmbuild.report.collect import report_files

    if args.paths:
        recipes = _prepare(args, check_toolchains=False).recipes
        names, files = [loaded.name for loaded in recipes], [loaded.file for loaded in recipes]
    else:  # every model built in this workspace
        found = report_files(workspace.build_dir)
        names = [name for name, _ in found]
        files = [Path(json.loads(path.read_text()).get("recipe", "")) for _, path in found]
    if not names:
        raise BmbuildError(f"no built model below {workspace.build_dir}: run `bmbuild run` first")
    return names, [f for f in files if str(f)]


def _baseline(args: argparse.Namespace, workspace: Any, names: list[str], files: list[Path],
              default: str | None) -> tuple[str, dict[str, Any]]:
    """(description, summary) of what `diff` and `report` compare with: the remote cache's last
    builds (--remote), else a summary.json or git revision (the positional/--baseline value)."""
    from bmbuild import diff

    if args.remote and args.baseline:
        raise BmbuildError(f"compare with either {args.baseline!r} or --remote, not both")
    if args.remote:
        from bmbuild.buildrecords import remote_baseline

        return remote_baseline(workspace, names)
    return diff.baseline(args.baseline or default, workspace, files)


def cmd_diff(args: argparse.Namespace) -> int:
    from bmbuild import diff
    from bmbuild.report.collect import collect, report_files

    workspace = _workspace(args)
    names, files = _built_selection(args, workspace)
    current = collect(report_files(workspace.build_dir, names))
    source, base = _baseline(args, workspace, names, files, default="HEAD")
    rows = diff.diff_summaries(base, current)
    if args.json:
        from bmbuild import jsonout

        print(jsonout.dumps(jsonout.document("diff", baseline=source, models=rows)))
        return 0
    print(f"baseline: {source}; current: {workspace.build_dir}")
    for line in diff.render(rows, args.all):
        print(line)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from bmbuild.init import init

    written = init(args.model, Path(args.out), args.name, args.shape, args.force)
    for path in written:
        print(f"wrote {_relative(path)}")
    for line in written[-1].read_text().splitlines():
        if line.startswith("# check: "):
            print(line[2:])
    print(f"next: bmbuild validate {_relative(written[-1])} && bmbuild run {_relative(written[-1])}")
    return 0


def _shape(text: str) -> list[int]:
    """'1,3,224,224' -> [1, 3, 224, 224]."""
    try:
        dims = [int(part) for part in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 1,3,224,224, got {text!r}") \
            from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive integers, got {text!r}")
    return dims


def cmd_completion(args: argparse.Namespace) -> int:
    from bmbuild.completion import SHELLS

    sys.stdout.write(SHELLS[args.shell](build_parser()))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from bmbuild.executor import Status
    from bmbuild.project import plan, toolchain_choices

    build = _prepare(args)
    rows = plan(build, force=args.force)
    pending = sum(1 for r in rows if r.status is not Status.UP_TO_DATE)
    if args.json:
        from bmbuild import jsonout

        print(jsonout.dumps(jsonout.document("plan", pending=pending, stages=[
            {"id": r.node.id, "recipe": r.node.recipe_name, "stage": r.node.stage.name, "status": r.status.value,
             "reason": r.reason} for r in rows], toolchains=[
            {"recipe": loaded.name, "toolchain": build.toolchains[loaded.name],
             "chosen_by": build.chosen_by.get(loaded.name) or None} for loaded in build.recipes])))
        return 0
    for line in toolchain_choices(build) if not args.quiet else []:
        print(line)
    for row in rows:
        if not (args.quiet and row.status is Status.UP_TO_DATE):
            print(_plan_line(row.status.value, row.node.id, row.reason))
    print(_plan_footer(pending, len(rows)))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from bmbuild.graph import to_dot, to_text

    build = _prepare(args, check_toolchains=False)
    sys.stdout.write(to_dot(build.nodes) if args.format == "dot" else to_text(build.nodes))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bmbuild.executor import Status, read_manifest
    from bmbuild.project import plan, verify_outputs

    build = _prepare(args)
    checked, corrupt = verify_outputs(build) if args.verify else (0, [])  # first: the plan then sees it
    stages = []
    for row in plan(build):
        folder = build.workspace.stage_dir(row.node.recipe_name, row.node.stage.name)
        manifest = read_manifest(folder) or {}
        fresh = row.status is Status.UP_TO_DATE
        state = Status.UP_TO_DATE.value if fresh else ("missing" if not manifest else "stale")
        stages.append({"id": row.node.id, "recipe": row.node.recipe_name, "stage": row.node.stage.name,
                       "state": state, "reason": None if fresh else row.reason,
                       "summary": manifest.get("summary") or None, "folder": str(folder)})
    code = 1 if corrupt else 0
    if args.json:
        from bmbuild import jsonout

        verified = {"checked": checked, "corrupt": [{"path": str(c.path), "expected": c.expected, "actual": c.actual}
                                                    for c in corrupt]} if args.verify else None
        print(jsonout.dumps(jsonout.document("status", ok=code == 0, exit_code=code, stages=stages,
                                             verify=verified)))
        return code
    for item in stages:
        if args.quiet and item["state"] == Status.UP_TO_DATE.value:
            continue
        state = f"stale ({item['reason']})" if item["state"] == "stale" else item["state"]
        print(_status_line(item["id"], state, item["summary"] or ""))
    if not args.verify:
        return 0
    for item in corrupt:
        print(f"corrupt: {item.path}: expected {item.expected}, found {item.actual or 'nothing (missing)'}")
    print(f"verified {checked} published output(s): {len(corrupt)} corrupt"
          + ("; `bmbuild run` restores or rebuilds them" if corrupt else ""))
    return code


def cmd_show(args: argparse.Namespace) -> int:
    import yaml

    from bmbuild.recipe import load_recipes

    workspace = _workspace(args)
    for loaded in load_recipes(args.paths, workspace.root, workspace.config.vars):
        data = loaded.recipe.model_dump(mode="json", exclude={"variants"})
        print(f"# {loaded.file} -> {loaded.name}")
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=None).rstrip())
        print("---")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from bmbuild.project import clean

    names = None
    if args.paths:
        names = [loaded.name for loaded in _prepare(args, check_toolchains=False).recipes]
    removed = clean(_workspace(args), names)
    print(f"removed {len(removed)} path(s)" + "".join(f"\n  {p}" for p in removed))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bmbuild.preflight import recipe_problems
    from bmbuild.recipe import RecipeErrors, load_recipes_partial

    workspace = _workspace(args)
    skipped: list[Path] = []
    recipes, errors = load_recipes_partial(args.paths, workspace.root, workspace.config.vars, skipped)
    checked = {loaded.name: recipe_problems(loaded) for loaded in recipes}  # the files each names (headers only)
    errors += [problem for found in checked.values() for problem in found]
    recipes = [loaded for loaded in recipes if not checked[loaded.name]]
    code = RecipeErrors(errors).exit_code if errors else 0
    if args.json:
        from bmbuild import jsonout

        print(jsonout.dumps(jsonout.document(
            "validate", ok=not errors, exit_code=code,
            recipes=[{"name": r.name, "file": str(r.file)} for r in recipes],
            errors=jsonout.error_items(RecipeErrors(errors)) if errors else [])))
        return code
    if not args.quiet:
        for loaded in recipes:
            print(f"  ok  {loaded.file}  ({loaded.name})")
    if args.verbose:
        for file in skipped:
            print(f"  skipped  {file}  (not a recipe: no top-level source:)")
    if errors:  # the same lines as any other command's recipe errors
        from bmbuild import ci, jsonout

        if ci.on_github_actions():
            ci.annotate(jsonout.error_items(RecipeErrors(errors)), sys.stdout)
        print(f"error: {RecipeErrors(errors)}", file=sys.stderr)
    print(f"{len(recipes)} recipe(s) valid" + (f", {len(errors)} error(s)" if errors else ""))
    return code


def cmd_schema(args: argparse.Namespace) -> int:
    from bmbuild.schemas import SCHEMAS, schema_text

    kinds = [args.kind] if args.kind else (["recipe"] if args.output else list(SCHEMAS))
    if args.output == "-":
        if args.check:
            raise BmbuildError("--check needs a file, not -o -")
        sys.stdout.write(schema_text(kinds[0]))
        return 0
    targets = {Path(args.output) if args.output else DEFAULT_SCHEMA.parent / SCHEMAS[kind][0]: schema_text(kind)
               for kind in kinds}
    for target, text in targets.items():
        if args.check:
            if not target.is_file() or target.read_text() != text:
                raise BmbuildError(f"{target} is stale: run `bmbuild schema`")
            print(f"{target} is current")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


def cmd_import_tpu_perf(args: argparse.Namespace) -> int:
    from bmbuild.importers.tpu_perf import ImportIncomplete, import_zoo, render_report, write_import

    result = import_zoo(Path(args.path), Path(args.out), args.target, Path(args.root) if args.root else None)
    print("\n".join(render_report(result)))
    if args.strict and result.problems:
        raise ImportIncomplete(f"--strict: {result.problems} config(s) not imported completely; nothing written")
    written = write_import(result)
    print(f"wrote {len(written)} file(s) under {result.out}; run bmbuild from there (its bmbuild.yaml holds "
          "the dataset variables)")
    return 0


def _add_common(parser: argparse.ArgumentParser, paths: str = "+", cache: bool = True) -> None:
    parser.add_argument("paths", nargs=paths, help="recipe files or folders of recipes")
    if cache:
        parser.add_argument("--cache-dir",
                            help="action cache and object store (default: $BMBUILD_CACHE_DIR or the user cache dir)")
    parser.add_argument("--build-dir", help="build outputs (default: build/ in the workspace)")


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", action="append", help="build only this stage and what it needs (repeatable)")
    parser.add_argument("--toolchain", choices=TOOLCHAIN_CHOICES,
                        help="override the recipes' toolchain")
    parser.add_argument("--force", action="store_true", help="run every selected stage, ignoring the cache")
    parser.add_argument("--shard", type=_shard, metavar="i/N",
                        help="only the recipes of shard i of N (stable: by a hash of the recipe name)")


def _add_remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote-cache", metavar="URL",
                        help="shared cache read after the local one and pushed to after each stage: a folder or "
                             "an fsspec URL (s3://bucket/prefix, gs://...); default: $BMBUILD_REMOTE_CACHE or "
                             "bmbuild.yaml remote_cache (storage options: $BMBUILD_REMOTE_OPTIONS, JSON)")


class _Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped command or choice."""

    def error(self, message: str) -> Any:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = [choice.strip(" '") for choice in match.group(2).split(",")]
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (schema_version 1, see docs/json.md); "
                             "progress and messages go to stderr")


def _add_output_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-q/-v/--color on `parser` and every subcommand below it: `bmbuild -q run` and `bmbuild run -q`
    both work (below the top, defaults are SUPPRESS so they do not overwrite the top's value)."""
    present = set(parser._option_string_actions)
    default: Any = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    if "-q" not in present:
        parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                            help="print only what needs attention (failures, stale stages) and the final line")
    if "-v" not in present:
        parser.add_argument("-v", "--verbose", action="count", default=default(0),
                            help="say more: why each stage ran and its log (run), skipped files (validate)")
    if "--color" not in present:
        parser.add_argument("--color", choices=["auto", "always", "never"], default=default("auto"),
                            help="colours: auto (on a terminal, unless $NO_COLOR is set), always, never")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_output_options(child)


def _add_remote_baseline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", action="store_true",
                        help="compare with builds in the remote cache instead of the local one: its last "
                             "build of each recipe (recorded by `bmbuild run` or `cache push` with a remote "
                             "cache), not a git revision or summary.json")
    parser.add_argument("--remote-cache", metavar="URL",
                        help="the remote cache --remote reads: a folder or an fsspec URL (default: "
                             "$BMBUILD_REMOTE_CACHE or bmbuild.yaml remote_cache)")


def build_parser() -> argparse.ArgumentParser:
    from bmbuild.report.formats import FORMATS, file_list

    parser = _Parser(prog="bmbuild", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bmbuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="build recipes incrementally")
    _add_common(run)
    _add_selection(run)
    _add_remote(run)
    run.add_argument("-j", "--jobs", type=int, default=None, help="stages run in parallel (default: bmbuild.yaml jobs, else 1)")
    run.add_argument("-k", "--keep-going", action="store_true", help="continue other models after a failure")
    run.add_argument("--executor", choices=["local", "dask"], default=None,
                     help="where stages run: this machine (default), or a Dask cluster (needs --scheduler and a "
                          "shared --remote-cache; default: bmbuild.yaml executor.kind)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="the Dask scheduler, e.g. tcp://host:8786 (implies --executor dask; default: "
                          "bmbuild.yaml executor.scheduler)")
    run.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    run.add_argument("--report-dir", metavar="DIR", help=f"also write {file_list()} of this run to DIR")
    run.add_argument("--dry-run", action="store_true",
                     help="print the commands each stage would run, without running anything")
    _add_json(run)
    run.add_argument("--step-summary", action="store_true",
                     help="append this run's summary.md to $GITHUB_STEP_SUMMARY (the GitHub Actions job summary)")
    run.set_defaults(func=cmd_run)

    toolchains = sub.add_parser("toolchains", help="the toolchains, whether each is usable here, and why not")
    _add_json(toolchains)
    toolchains.set_defaults(func=cmd_toolchains)
    install = toolchains.add_subparsers(dest="toolchains_command").add_parser(
        "install", help="create a toolchain's managed environment (a no-op when it exists)")
    install.add_argument("name", choices=["tpu-mlir"], help="the toolchain to install")
    install.add_argument("--python", help="CPython 3.10 to build it with (default: python3.10 on PATH, or pyenv's)")
    install.set_defaults(func=cmd_toolchains_install)

    show = sub.add_parser("show", help="print the fully resolved recipes (defaults, variables, variants)")
    show.add_argument("paths", nargs="+", help="recipe files or folders of recipes")
    show.set_defaults(func=cmd_show)

    plan_parser = sub.add_parser("plan", help="what run would do, and why")
    _add_common(plan_parser)
    _add_selection(plan_parser)
    _add_remote(plan_parser)
    _add_json(plan_parser)
    plan_parser.set_defaults(func=cmd_plan)

    graph = sub.add_parser("graph", help="the stage graph (text, or Graphviz DOT)")
    _add_common(graph)
    graph.add_argument("--format", choices=["text", "dot"], default="text",
                       help="text (default) or Graphviz DOT (`| dot -Tsvg`)")
    graph.add_argument("--toolchain", choices=TOOLCHAIN_CHOICES,
                       help="override the recipes' toolchain")
    graph.set_defaults(func=cmd_graph, stage=None)

    status = sub.add_parser("status", help="state of each stage's outputs")
    _add_common(status)
    _add_remote(status)
    status.add_argument("--toolchain", choices=TOOLCHAIN_CHOICES,
                        help="override the recipes' toolchain")
    status.add_argument("--verify", action="store_true",
                        help="re-hash every published output, ignoring the stat cache; exit 1 if any is corrupt")
    _add_json(status)
    status.set_defaults(func=cmd_status, stage=None)

    clean_parser = sub.add_parser("clean", help="remove build outputs (not the cache)")
    _add_common(clean_parser, paths="*", cache=False)
    clean_parser.set_defaults(func=cmd_clean)

    validate = sub.add_parser("validate", help="check recipes")
    validate.add_argument("paths", nargs="+", help="recipe files or folders of recipes")
    _add_json(validate)
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="write the JSON schemas of recipes, defaults.yaml and bmbuild.yaml")
    schema.add_argument("--kind", choices=["recipe", "defaults", "bmbuild"],
                        help="only this schema (default: all three into schemas/; the recipe one with -o)")
    schema.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE instead of schemas/<kind>.schema.json; - prints it on stdout")
    schema.add_argument("--check", action="store_true", help="exit 2 if a written schema is stale, write nothing")
    schema.set_defaults(func=cmd_schema)

    report = sub.add_parser("report", help=f"{file_list()} of built models")
    _add_common(report, paths="*")
    report.add_argument("--out", metavar="DIR", help="where to write them (default: build/reports)")
    report.add_argument("--format", action="append", choices=list(FORMATS), metavar="FORMAT",
                        help="write only this format (repeatable; default: all): "
                             + "; ".join(f"{f.name}: {f.filename}, {f.description}" for f in FORMATS.values()))
    report.add_argument("--baseline", metavar="REV|SUMMARY",
                        help="show each model next to a baseline, as `bmbuild diff` compares: a summary.json (or a "
                             "folder holding one) or a git revision")
    _add_remote_baseline(report)
    report.set_defaults(func=cmd_report)

    diff_parser = sub.add_parser(
        "diff", help="per model, metrics and recipe parameters against a git revision or a saved summary.json",
        description="Compare this workspace's built models with a baseline: a summary.json (from `bmbuild report` "
                    "or `run --report-dir`), a git revision, built in a temporary copy of the repository with "
                    "this workspace's cache (a revision built before is only restored), or with --remote the "
                    "remote cache's last build of each recipe.")
    diff_parser.add_argument("baseline", nargs="?",
                             help="a summary.json (or a folder holding one), or a git revision (default: HEAD)")
    _add_common(diff_parser, paths="*")
    _add_remote_baseline(diff_parser)
    diff_parser.add_argument("--all", action="store_true", help="every metric, not only those that changed")
    _add_json(diff_parser)
    diff_parser.set_defaults(func=cmd_diff)

    init_parser = sub.add_parser("init", help="start a workspace: bmbuild.yaml, schemas/ and a recipe for a model",
                                 description="Writes bmbuild.yaml and schemas/ (when missing) and a recipe for MODEL "
                                             "with its input shapes read from the model.")
    init_parser.add_argument("model", help="path/model.py:callable (PyTorch) or path/model.onnx")
    init_parser.add_argument("--name", help="the recipe's name (default: the callable's or the file's)")
    init_parser.add_argument("--shape", type=_shape, action="append", metavar="1,3,224,224",
                             help="an input shape, instead of the one read from the model (repeat per input)")
    init_parser.add_argument("--out", default="recipes", help="the recipe's folder (default: %(default)s)")
    init_parser.add_argument("--force", action="store_true", help="overwrite an existing recipe of that name")
    init_parser.set_defaults(func=cmd_init)

    completion = sub.add_parser("completion", help="print a shell completion script",
                                description='Load it from your shell\'s rc file: eval "$(bmbuild completion bash)" '
                                            '(bash) or eval "$(bmbuild completion zsh)" (zsh).')
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    completion.set_defaults(func=cmd_completion)

    importer = sub.add_parser("import", help="turn another tool's model zoo into recipes")
    formats = importer.add_subparsers(dest="format", required=True)
    tpu_perf = formats.add_parser("tpu-perf", help="a tpu-perf zoo (config.yaml per model, as sophgo/model-zoo)")
    tpu_perf.add_argument("path", help="the zoo's root folder, a folder inside it, or one config file")
    tpu_perf.add_argument("--out", default="recipes/imported", help="where the recipes go (default: %(default)s)")
    tpu_perf.add_argument("--target", choices=["BM1684", "BM1684X"], default="BM1684",
                          help="tpu-perf's --target: selects per-target blocks and $(target) (default: %(default)s)")
    tpu_perf.add_argument("--root", help="the zoo's root folder (default: found above PATH)")
    tpu_perf.add_argument("--strict", action="store_true",
                          help="fail (exit 2, nothing written) if any config is skipped or partly translated")
    tpu_perf.set_defaults(func=cmd_import_tpu_perf)

    from bmbuild.cache_cmd import add_parser as add_cache_parser

    add_cache_parser(sub)  # bmbuild cache push|pull|ls|gc|verify
    _add_output_options(parser, top=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command in ("run", "plan", "status"):
            entry = snapshot.lookup(args)
            if entry is not None:  # nothing changed since a complete no-op of this selection
                return _replay(args, entry, started)
        return func(args)
    except BmbuildError as exc:
        from bmbuild import ci, jsonout

        if getattr(args, "json", False):
            print(jsonout.dumps(jsonout.error_document(args.command, exc)))
        if ci.on_github_actions():
            ci.annotate(jsonout.error_items(exc), sys.stderr if getattr(args, "json", False) else sys.stdout)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug in bmbuild, not a user mistake: show everything
        traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main())
