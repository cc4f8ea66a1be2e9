"""Command line: parse arguments, call one library function, render its result.

Exit codes (the rule is in errors.py): 0 success; 1 a stage ran and failed (a tool's error, a gate not
met, the model's code raised or exited); 2 the user's input is wrong (recipe, data, a missing file,
an unusable toolchain), found before or during a stage; 3 an internal error (a bug: printed with its
traceback). When several stages fail (--keep-going), the highest code wins.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from bmbuild import __version__
from bmbuild.errors import BmbuildError
from bmbuild.toolchains.base import REGISTRY

DEFAULT_SCHEMA = Path("schemas/recipe.schema.json")
TOOLCHAIN_CHOICES = ["auto", *REGISTRY]


def _workspace(args: argparse.Namespace) -> Any:
    from bmbuild.workspace import Workspace

    return Workspace.at(cache_dir=Path(args.cache_dir) if getattr(args, "cache_dir", None) else None,
                        build_dir=Path(args.build_dir) if getattr(args, "build_dir", None) else None,
                        remote_cache=getattr(args, "remote_cache", None) or None)


def _prepare(args: argparse.Namespace, check_toolchains: bool = True) -> Any:
    from bmbuild.project import prepare

    return prepare(args.paths, _workspace(args), getattr(args, "toolchain", None),
                   getattr(args, "stage", None), check_toolchains=check_toolchains,
                   shard=getattr(args, "shard", None))


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
    from bmbuild.console import BuildConsole
    from bmbuild.engine import run_nodes
    from bmbuild.executor import Outcome
    from bmbuild.project import model_summary, write_reports

    if args.dry_run:
        return _dry_run(args)
    build = _prepare(args)
    console = BuildConsole(force_plain=args.plain)
    toolchains = sorted(set(build.toolchains.values()))
    console.print(f"bmbuild {__version__}: {len(build.recipes)} recipe(s), {len(build.nodes)} stage(s), "
                  f"toolchain {', '.join(toolchains)}, cache {build.workspace.cache_dir}")
    if "nntc" in toolchains:
        from bmbuild.stages.trace import torch_note
        from bmbuild.toolchains.base import package_version

        note = torch_note(package_version("torch"))
        if note:
            console.print(f"note: {note} for tracing; bmnetp may reject operators that newer torch emits")
    jobs = args.jobs or build.workspace.config.jobs
    result = run_nodes(build.nodes, build.workspace, console, jobs=jobs, force=args.force,
                       keep_going=args.keep_going)
    write_reports(build, result.records)
    executed, restored = result.count(Outcome.EXECUTED), result.count(Outcome.RESTORED)
    uptodate = result.count(Outcome.UP_TO_DATE)
    for loaded in build.recipes:
        mine = [r for r in result.records if r.recipe == loaded.name]
        summary = model_summary(mine)
        if summary and all(r.outcome.value not in ("failed", "blocked") for r in mine):
            console.print(f"{loaded.name}: {summary}")
    for error in result.errors:
        console.print(error, style="red")
    if executed == 0 and restored == 0 and result.ok:
        console.print(f"nothing to do: {uptodate} stage(s) up to date ({result.seconds:.2f}s)")
    else:
        failed = result.count(Outcome.FAILED) + result.count(Outcome.BLOCKED)
        console.print(f"{executed} executed, {restored} restored from cache, {uptodate} up to date, "
                      f"{failed} failed or blocked ({result.seconds:.2f}s)")
    if args.report_dir:
        from bmbuild.report import write_report

        names = [loaded.name for loaded in build.recipes]
        ran = {record.recipe for record in result.records}
        written = write_report(build.workspace.build_dir, Path(args.report_dir), names,
                               not_run=[name for name in names if name not in ran])
        console.print(f"report: {written.paths['html']} (+ summary.json, junit.xml, summary.md)")
    return result.exit_code


def _dry_run(args: argparse.Namespace) -> int:
    """`run --dry-run`: the commands each stage would run; nothing runs, nothing is written.

    The output is a shell script that is safe to paste, whole or line by line: the commands are
    quoted shell lines, everything else is a `#` comment (`toolchains.commands.paste_safe`).
    """
    from bmbuild.project import dry_run
    from bmbuild.toolchains.base import load_toolchain
    from bmbuild.toolchains.commands import comment, paste_safe

    build = _prepare(args, check_toolchains=False)
    for name in sorted(set(build.toolchains.values())):
        status = load_toolchain(name).availability()
        if not status.usable:
            print(comment(f"note: toolchain {name!r} is not usable here ({status.reason}); "
                          "a real run stops before any stage"))
    steps = dry_run(build, force=args.force)
    for step in steps:
        print(comment(f"{step.node.id}: {step.status.value} ({step.reason})"))
        for line in step.commands:
            print(f"  {paste_safe(line)}")
        for index, line in enumerate(step.error.splitlines()):
            print("  " + comment(("error: " if index == 0 else "  ") + line))
    would_run = sum(1 for step in steps if step.status.value in ("run", "after upstream"))
    print(comment(f"dry run: {would_run} of {len(steps)} stage(s) would run; nothing was run"))
    return 2 if any(step.error for step in steps) else 0


def cmd_toolchains(args: argparse.Namespace) -> int:
    from bmbuild.project import toolchain_statuses

    statuses, auto = toolchain_statuses()
    for status in statuses:
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
    names = [loaded.name for loaded in _prepare(args, check_toolchains=False).recipes] if args.paths else None
    out = Path(args.out) if args.out else workspace.build_dir / "reports"
    written = write_report(workspace.build_dir, out, names)
    totals = written.summary["totals"]
    print(f"{totals['passed']} of {totals['models']} model(s) passed; wrote"
          + "".join(f"\n  {path}" for path in written.paths.values()))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from bmbuild.project import plan

    rows = plan(_prepare(args), force=args.force)
    for row in rows:
        print(f"  {row.status.value:<14} {row.node.id:<36} {row.reason}")
    pending = sum(1 for r in rows if r.status.value != "up-to-date")
    print(f"{pending} of {len(rows)} stage(s) would run or be restored")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from bmbuild.graph import to_dot, to_text

    build = _prepare(args, check_toolchains=False)
    sys.stdout.write(to_dot(build.nodes) if args.format == "dot" else to_text(build.nodes))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bmbuild.executor import read_manifest
    from bmbuild.project import plan, verify_outputs

    build = _prepare(args)
    checked, corrupt = verify_outputs(build) if args.verify else (0, [])  # first: the plan then sees it
    for row in plan(build):
        folder = build.workspace.stage_dir(row.node.recipe_name, row.node.stage.name)
        manifest = read_manifest(folder) or {}
        state = "up-to-date" if row.status.value == "up-to-date" else (
            "missing" if not manifest else f"stale ({row.reason})")
        print(f"  {row.node.id:<36} {state:<12} {manifest.get('summary', '')}".rstrip())
    if not args.verify:
        return 0
    for item in corrupt:
        print(f"corrupt: {item.path}: expected {item.expected}, found {item.actual or 'nothing (missing)'}")
    print(f"verified {checked} published output(s): {len(corrupt)} corrupt"
          + ("; `bmbuild run` restores or rebuilds them" if corrupt else ""))
    return 1 if corrupt else 0


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
    from bmbuild.recipe import load_recipes

    workspace = _workspace(args)
    recipes = load_recipes(args.paths, workspace.root, workspace.config.vars)
    for loaded in recipes:
        print(f"  ok  {loaded.file}  ({loaded.name})")
    print(f"{len(recipes)} recipe(s) valid")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from bmbuild.project import schema_text

    text = schema_text()
    target = Path(args.output)
    if args.check:
        if not target.is_file() or target.read_text() != text:
            raise BmbuildError(f"{target} is stale: run `bmbuild schema`")
        print(f"{target} is current")
        return 0
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


def _add_common(parser: argparse.ArgumentParser, paths: str = "+") -> None:
    parser.add_argument("paths", nargs=paths, help="recipe files or folders of recipes")
    parser.add_argument("--cache-dir", help="action cache and object store (default: $BMBUILD_CACHE_DIR or the user cache dir)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmbuild", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bmbuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="build recipes incrementally")
    _add_common(run)
    _add_selection(run)
    _add_remote(run)
    run.add_argument("-j", "--jobs", type=int, default=None, help="stages run in parallel (default: bmbuild.yaml jobs, else 1)")
    run.add_argument("-k", "--keep-going", action="store_true", help="continue other models after a failure")
    run.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    run.add_argument("--report-dir", metavar="DIR",
                     help="also write summary.json, junit.xml, summary.md and report.html of this run to DIR")
    run.add_argument("--dry-run", action="store_true",
                     help="print the commands each stage would run, without running anything")
    run.set_defaults(func=cmd_run)

    toolchains = sub.add_parser("toolchains", help="the toolchains, whether each is usable here, and why not")
    toolchains.set_defaults(func=cmd_toolchains)
    install = toolchains.add_subparsers(dest="toolchains_command").add_parser(
        "install", help="create a toolchain's managed environment (a no-op when it exists)")
    install.add_argument("name", choices=["tpu-mlir"])
    install.add_argument("--python", help="CPython 3.10 to build it with (default: python3.10 on PATH, or pyenv's)")
    install.set_defaults(func=cmd_toolchains_install)

    show = sub.add_parser("show", help="print the fully resolved recipes (defaults, variables, variants)")
    show.add_argument("paths", nargs="+")
    show.set_defaults(func=cmd_show)

    plan_parser = sub.add_parser("plan", help="what run would do, and why")
    _add_common(plan_parser)
    _add_selection(plan_parser)
    _add_remote(plan_parser)
    plan_parser.set_defaults(func=cmd_plan)

    graph = sub.add_parser("graph", help="the stage graph (text, or Graphviz DOT)")
    _add_common(graph)
    graph.add_argument("--format", choices=["text", "dot"], default="text")
    graph.add_argument("--toolchain", choices=TOOLCHAIN_CHOICES)
    graph.set_defaults(func=cmd_graph, stage=None)

    status = sub.add_parser("status", help="state of each stage's outputs")
    _add_common(status)
    _add_remote(status)
    status.add_argument("--toolchain", choices=TOOLCHAIN_CHOICES)
    status.add_argument("--verify", action="store_true",
                        help="re-hash every published output, ignoring the stat cache; exit 1 if any is corrupt")
    status.set_defaults(func=cmd_status, stage=None)

    clean_parser = sub.add_parser("clean", help="remove build outputs (not the cache)")
    _add_common(clean_parser, paths="*")
    clean_parser.set_defaults(func=cmd_clean)

    validate = sub.add_parser("validate", help="check recipes")
    validate.add_argument("paths", nargs="+")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="write the recipe JSON schema")
    schema.add_argument("-o", "--output", default=str(DEFAULT_SCHEMA))
    schema.add_argument("--check", action="store_true", help="fail if the file is stale")
    schema.set_defaults(func=cmd_schema)

    report = sub.add_parser("report", help="summary.json, junit.xml, summary.md and report.html of built models")
    _add_common(report, paths="*")
    report.add_argument("--out", metavar="DIR", help="where to write them (default: build/reports)")
    report.set_defaults(func=cmd_report)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BmbuildError as exc:
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
