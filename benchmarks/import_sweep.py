"""Sweep `bmbuild import tpu-perf` over a whole tpu-perf model zoo (sophgo/model-zoo) and check what
it wrote: every config's import status, then for every recipe `bmbuild validate` and `bmbuild run
--dry-run` with the NNTC and the tpu-mlir toolchains, and the dry run's commands compared flag by
flag with the config's own command lines.

The zoo is read as it is for the statuses (model files and images may be Git LFS pointers or
absent: the importer must name them, not fail). `validate` and the dry runs work on a copy whose
LFS pointers and missing model files are replaced by placeholders (the dry run renders commands
and reads no model), so they show what the translation does, not which files a clone lacks.

Every traceback, hang (a command over --timeout seconds) and flag mismatch is a bug; errors are
listed with their first line so an unclear one shows. Output: a Markdown table per target (counts
per status and reason, counts per check outcome) and the per-config list.

    python benchmarks/import_sweep.py /tmp/mz [--targets BM1684,BM1684X] [--work /tmp/sweep]
        [--markdown benchmarks/results/import_sweep.md] [--title "after"]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bmbuild.fileinfo import is_lfs_pointer  # noqa: E402
from bmbuild.importers.tpu_perf import import_zoo, recipe_path, write_import  # noqa: E402
from bmbuild.importers.tpu_perf.command import parse_command  # noqa: E402
from bmbuild.importers.tpu_perf.tree import find_root, open_zoo, read_builds  # noqa: E402
from tools.cli_flags import dry_run_commands, flags  # noqa: E402  (the tests' independent parser)

ONNX_BYTES = b"\x08\x07\x12\x07pytorch"      # starts like a serialized ModelProto
JPEG_BYTES = b"\xff\xd8\xff placeholder"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
TOOLCHAINS = ("auto", "nntc", "tpu-mlir")   # auto: the recipe's own choice (no --toolchain)
OUTCOMES = ("ok", "n/a", "error", "crash", "hang", "mismatch")
BOOLEAN_FLAGS = ("dyn", "cmp", "enable_profile")
# Flags whose value is a file the build writes or reads elsewhere (compared by name or not at all).
PATH_FLAGS = ("model", "weight", "outdir")


@dataclass
class Check:
    """One command run on one recipe: ok, error (first line), crash, hang or mismatch."""

    outcome: str
    detail: str = ""


@dataclass
class Row:
    config: str
    status: str
    recipe: str = ""
    reason: str = ""
    checks: dict[str, Check] = field(default_factory=dict)


# --- the zoo copy with placeholders ---------------------------------------------------------------
def placeholder_copy(zoo: Path, work: Path) -> Path:
    """A copy of `zoo` whose Git LFS pointers are placeholder files of the same name."""
    copy = work / "zoo"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(zoo, copy, ignore=shutil.ignore_patterns(".git"), symlinks=True)
    for path in copy.rglob("*"):
        if path.is_file() and not path.is_symlink() and is_lfs_pointer(path):
            path.write_bytes(JPEG_BYTES if path.suffix.lower() in IMAGE_SUFFIXES else ONNX_BYTES)
    return copy


def fill_models(result: Any, out: Path) -> bool:
    """Placeholders for the model files recipes name that are absent or not models (LFS pointers):
    an ONNX graph with the recipe's input shapes (validate reads its inputs), else a few bytes.
    Returns whether any was written (the import then runs again, as it reads ONNX inputs)."""
    from bmbuild.errors import DataError
    from bmbuild.fileinfo import onnx_graph_inputs

    written = False
    for t in result.translations:
        source = (t.recipe or {}).get("source") or {}
        model = source.get("model")
        if not model or "${" in str(model):
            continue
        path = (recipe_path(t.config, result.zoo, out, t.name).parent / model).resolve()
        if source.get("framework") == "onnx":
            try:
                onnx_graph_inputs(path)
                continue
            except DataError:
                path.parent.mkdir(parents=True, exist_ok=True)
                tiny_onnx(path, t.recipe.get("shapes") or [[1, 3, 8, 8]])
                written = True
        elif not path.exists() and path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(ONNX_BYTES)
            written = True
    return written


def tiny_onnx(path: Path, shapes: list[list[int]]) -> None:
    """One Identity per input, inputs of the given shapes with a free batch (first) dimension."""
    import onnx
    from onnx import TensorProto, helper

    dims = [["batch", *s[1:]] for s in shapes]
    inputs = [helper.make_tensor_value_info(f"input{i}", TensorProto.FLOAT, d) for i, d in enumerate(dims)]
    outputs = [helper.make_tensor_value_info(f"output{i}", TensorProto.FLOAT, d) for i, d in enumerate(dims)]
    nodes = [helper.make_node("Identity", [f"input{i}"], [f"output{i}"]) for i in range(len(shapes))]
    graph = helper.make_graph(nodes, "placeholder", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


# --- running bmbuild ------------------------------------------------------------------------------
def bmbuild(args: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "bmbuild", *args], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", ""
    return done.returncode, done.stdout, done.stderr


def classify(code: int | None, out: str, err: str, timeout: float) -> Check:
    if code is None:
        return Check("hang", f"no answer in {timeout:.0f} s")
    if "Traceback (most recent call last)" in out + err:
        last = [line for line in (out + err).strip().splitlines() if line.strip()][-1]
        return Check("crash", last.strip())
    if code == 0:
        return Check("ok")
    errors = [line.strip().lstrip("# ") for line in (err + "\n" + out).splitlines() if "error:" in line]
    return Check("error", errors[0] if errors else f"exit {code} without an error line")


# --- the dry run against the config's commands ------------------------------------------------------


def shapes_of(text: str | None) -> list[list[int]]:
    return [[int(d) for d in g.split(",") if d.strip()] for g in re.findall(r"\[([\d,\s]+)\]", str(text))]


def norm(flag: str, value: Any) -> Any:
    text = str(value)
    if flag in BOOLEAN_FLAGS and text.lower() in ("true", "1", "false", "0", "none"):
        return text.lower() in ("true", "1", "none")   # a bare switch is true
    return text.lower() if flag in ("target", "chip") else text


def compare(config_flags: dict[str, Any], ours: list[dict[str, Any]], what: str, untranslated: list[str],
            skip: tuple[str, ...] = ()) -> list[str]:
    """Each flag of the config's command in every one of our commands, with the same value (paths,
    shapes' batch and flags the importer named as untranslated aside)."""
    problems = []
    if not ours:
        return [f"{what}: no such command in the dry run"]
    named = " ".join(untranslated)
    for flag, value in config_flags.items():
        if flag in PATH_FLAGS + skip or f"--{flag}" in named or f" -{flag}" in named:
            continue
        for mine in ours:
            if flag not in mine:
                problems.append(f"{what} --{flag}: absent from the dry run")
            elif flag in ("shapes", "input_shapes"):
                if [s[1:] for s in shapes_of(mine[flag])] != [s[1:] for s in shapes_of(value)]:
                    problems.append(f"{what} --{flag} {value}: dry run has {mine[flag]}")
            elif norm(flag, mine[flag]) != norm(flag, value):
                problems.append(f"{what} --{flag} {value}: dry run has {mine[flag]}")
    return sorted(set(problems))


def expected_commands(file: Path, zoo_root: Path, target: str) -> dict[str, Any]:
    """The config's commands as tpu-perf expands them (first build of each mode)."""
    zoo = open_zoo(zoo_root, target)
    builds, _, _ = read_builds(file, zoo)
    found: dict[str, Any] = {}
    for build in builds:
        config = build.config
        for key in ("fp_compile_options", "cali", "mlir_transform"):
            if isinstance(config.get(key), str) and (build.mode, key) not in found:
                found[(build.mode, key)] = parse_command(str(build.scope.expand(config[key])), key)
        if isinstance(config.get("bmnetu_options"), str) and (build.mode, "bmnetu_options") not in found:
            found[(build.mode, "bmnetu_options")] = parse_command(
                str(build.scope.expand("python3 -m bmnetu " + config["bmnetu_options"])), "bmnetu_options")
        deploys = config.get("deploy") or []
        for i, raw in enumerate(deploys if isinstance(deploys, list) else [deploys]):
            if isinstance(raw, str):
                found.setdefault((build.mode, f"deploy[{i}]"), parse_command(str(build.scope.expand(raw)), "deploy"))
    return found


def as_flags(command: Any) -> dict[str, Any]:
    return {f.name: f.value for f in command.flags}


def check_flags(t: Any, recipe: dict[str, Any], stdout: str, toolchain: str, commands: dict[str, Any]) -> list[str]:
    """The dry run's commands against the config's (tests/test_import_tpu_perf.py does the same on
    the corpus, with an expansion written independently of the importer)."""
    ran = dry_run_commands(stdout)
    lost = t.untranslated
    problems: list[str] = []
    nntc = any(k[0] == "nntc" for k in commands)
    mode = "mlir" if t.name.endswith("-mlir") or (commands and not nntc) else "nntc"
    if toolchain == "nntc" and mode == "nntc":
        fp = commands.get(("nntc", "fp_compile_options"))
        if fp is not None:
            ours = [flags(c[3:]) for c in ran if c[1:3] == ["-m", fp.tool]]
            problems += compare(as_flags(fp), ours, "fp_compile_options", lost)
        bmnetu = commands.get(("nntc", "bmnetu_options"))
        if bmnetu is not None and recipe.get("prec") == "INT8":
            ours = [flags(c[1:]) for c in ran if c and c[0] == "bmnetu"]
            problems += compare(as_flags(bmnetu), ours, "bmnetu_options", lost)
        cali = commands.get(("nntc", "cali"))
        if cali is not None and recipe.get("prec") == "INT8":
            ours = [flags(c[2:]) for c in ran if c and c[0] == "calibration_use_pb"]
            iterations = cali.value("cali_iterations")
            samples = (recipe.get("calibration") or {}).get("samples")
            if not ours:
                problems.append("cali: no calibration_use_pb in the dry run")
            else:
                if iterations is not None and ours[0].get("iterations") not in (iterations, str(samples)):
                    problems.append(f"cali --cali_iterations {iterations}: dry run has -iterations="
                                    f"{ours[0].get('iterations')}")
                problems += _calibration_options(cali, ours[0], lost)
    if toolchain == "tpu-mlir" and mode == "mlir":
        transform = commands.get(("mlir", "mlir_transform"))
        if transform is not None:
            ours = [flags(c[1:]) for c in ran if c and Path(c[0]).name.removesuffix(".py") == "model_transform"]
            problems += compare({k: v for k, v in as_flags(transform).items()
                                 if k in ("model_name", "input_shapes", "output_names")}, ours,
                                "mlir_transform", lost)
        deployed = [flags(c[1:]) for c in ran if c and Path(c[0]).name.removesuffix(".py") == "model_deploy"]
        for key, command in commands.items():
            if not key[1].startswith("deploy"):
                continue
            theirs = as_flags(command)
            quantize = str(theirs.get("quantize") or "").upper()
            if quantize == "INT8" and recipe.get("prec") != "INT8":
                continue
            ours = [f for f in deployed if str(f.get("quantize") or "").upper() == quantize
                    and ("asymmetric" in f) == ("asymmetric" in theirs)]
            if quantize in ("F32", "INT8") and not any(f"{key[1]} --quantize" in u for u in lost):
                problems += compare({k: v for k, v in theirs.items() if k in ("chip", "quantize")}, ours,
                                    key[1], lost)
    return problems


def _calibration_options(cali: Any, ours: dict[str, Any], lost: list[str]) -> list[str]:
    """cali_model's --try_cali_accuracy_opt / --th_method / --fp32_layer_list against the
    calibration_use_pb command (its -th_method, default KL, and -fpfwd_outputs)."""
    options: dict[str, str] = {}
    for option in str(cali.value("try_cali_accuracy_opt") or "").split(";"):
        key, _, value = option.strip().lstrip("-").partition("=")
        if key:
            options[key] = value
    if cali.value("th_method"):
        options["th_method"] = str(cali.value("th_method"))
    problems = []
    method = options.get("th_method", "KL")
    if not any("th_method" in u for u in lost) and str(ours.get("th_method", "")).upper() != method.upper():
        problems.append(f"cali -th_method={method}: dry run has -th_method={ours.get('th_method')}")
    layers = [x for x in (cali.value("fp32_layer_list") or "").split(",") + options.get("fpfwd_outputs", "").split(",")
              if x.strip()]
    mine = [x for x in str(ours.get("fpfwd_outputs") or "").split(",") if x.strip()]
    if sorted(set(x.strip() for x in layers)) != sorted(set(x.strip() for x in mine)):
        problems.append(f"cali fp32 layers {layers}: dry run has -fpfwd_outputs={ours.get('fpfwd_outputs')}")
    return problems


# --- one target -----------------------------------------------------------------------------------
def sweep_target(zoo: Path, copy: Path, work: Path, target: str, timeout: float) -> list[Row]:
    out = work / target
    rows: list[Row] = []
    try:
        result = import_zoo(zoo, out / "as-is", target=target)
    except Exception:   # noqa: BLE001 -- a crash of the importer is what the sweep looks for
        return [Row(str(zoo), "crash", reason=traceback.format_exc().strip().splitlines()[-1])]
    for t in result.translations:
        rows.append(Row(str(t.config.relative_to(result.zoo.root)), t.status, t.name if t.recipe else "",
                        reason=_reason(t)))
    checked = import_zoo(copy, out / "recipes", target=target)
    if fill_models(checked, out / "recipes"):
        checked = import_zoo(copy, out / "recipes", target=target)
    write_import(checked)
    by_config = {str(t.config.relative_to(checked.zoo.root)) + "|" + t.name: t for t in checked.translations}
    root = find_root(copy)
    for row in rows:
        t = by_config.get(row.config + "|" + row.recipe)
        if t is None or t.recipe is None:
            continue
        file = recipe_path(t.config, checked.zoo, out / "recipes", t.name)
        code, stdout, err = bmbuild(["validate", str(file)], out / "recipes", timeout)
        row.checks["validate"] = classify(code, stdout, err, timeout)
        try:
            commands = expected_commands(t.config, root, target)
        except Exception as exc:  # noqa: BLE001
            commands = {}
            row.checks["config"] = Check("crash", f"expanding the config's commands: {exc}")
        for toolchain in TOOLCHAINS:
            row.checks[toolchain] = dry_run(t.recipe, file, out / "recipes", toolchain, target, timeout,
                                            lambda stdout, used: check_flags(t, t.recipe, stdout, used, commands))
    return rows


def dry_run(recipe: dict[str, Any], file: Path, cwd: Path, toolchain: str, target: str, timeout: float,
            check: Any) -> Check:
    """`run --dry-run` with one toolchain, where the recipe can use it (NNTC builds BM1684 only; a
    recipe that asks for NNTC is not run with tpu-mlir), and its commands against the config's."""
    pinned = recipe.get("toolchain")
    if toolchain == "nntc" and recipe.get("target", target) != "BM1684":
        return Check("n/a", "NNTC builds BM1684 only")
    if toolchain == "tpu-mlir" and pinned == "nntc":
        return Check("n/a", "the recipe asks for NNTC")
    flag = [] if toolchain == "auto" else ["--toolchain", toolchain]
    code, stdout, err = bmbuild(["run", str(file), "--dry-run", *flag], cwd, timeout)
    result = classify(code, stdout, err, timeout)
    if result.outcome != "ok":
        return result
    used = toolchain
    if toolchain == "auto":
        tools = {Path(c[0]).name for c in dry_run_commands(stdout) if c}
        used = "tpu-mlir" if "model_deploy" in tools else "nntc" if tools & {"bmnetu", "calibration_use_pb"} or any(
            "-m bmnetp" in line or "-m bmneto" in line for line in stdout.splitlines()) else "reference"
    problems = check(stdout, used)
    return Check("mismatch", "; ".join(problems)) if problems else result


def _reason(t: Any) -> str:
    """Why a config was skipped, or the keys and reasons of what was untranslated (values cut)."""
    if t.recipe is None:
        text = str(t.skipped)
        return re.sub(r" \((?:model_transform|fp_compile_options|time_only_cali|cali)[^)]*\)$", "", text)
    reasons = set()
    for item in t.untranslated:
        parts = item.split(": ")
        why = next((p for p in parts[1:] if "=" not in p), parts[-1]).split(":")[0]
        reasons.add(f"{parts[0].split(' ', 1)[0]}: {why}")
    return "; ".join(sorted(reasons))


# --- the report -----------------------------------------------------------------------------------
def render(zoo: Path, commit: str, command: str, title: str, results: dict[str, list[Row]]) -> str:
    lines = [f"## {title}", "", f"Zoo: `{zoo}` (sophgo/model-zoo commit `{commit}`)  ", f"Command: `{command}`", ""]
    for target, rows in results.items():
        lines += [f"### --target {target}", ""]
        statuses = Counter(r.status for r in rows)
        lines.append("Import: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + f" ({len(rows)} configs)")
        lines += ["", "| status | reason | configs |", "|---|---|---|"]
        for (status, reason), n in sorted(Counter((r.status, _short(r)) for r in rows).items()):
            lines.append(f"| {status} | {reason or '-'} | {n} |")
        lines += ["", "| check | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 1) + "|"]
        for name in ("validate", *TOOLCHAINS):
            counts = Counter(r.checks[name].outcome for r in rows if name in r.checks)
            label = name if name == "validate" else f"dry-run {name}"
            lines.append(f"| {label} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
        lines += ["", "| config | status | recipe | validate | dry-run auto | dry-run nntc | dry-run tpu-mlir |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            cells = [_cell(r.checks.get(n)) for n in ("validate", *TOOLCHAINS)]
            lines.append(f"| {r.config} | {r.status} | {r.recipe or _esc(r.reason)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _short(row: Row) -> str:
    """The reason with paths and values cut, so equal reasons count together."""
    text = re.sub(r"/[\w.\-]+(?:/[\w.\-]+)+/?", "<path>", row.reason)
    return _esc(re.sub(r"\$\{\w+\}", "<var>", text))


def _cell(check: Check | None) -> str:
    if check is None:
        return ""
    return check.outcome if not check.detail else f"{check.outcome}: {_esc(check.detail)[:300]}"


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def commit_of(zoo: Path) -> str:
    for git in (["git", "-C", str(zoo), "rev-parse", "HEAD"],):
        done = subprocess.run(git, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    marker = zoo / ".commit"
    return marker.read_text().strip() if marker.is_file() else "unknown (not a git checkout; write it to <zoo>/.commit)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo", type=Path, help="a tpu-perf model zoo folder (sophgo/model-zoo work tree)")
    parser.add_argument("--targets", default="BM1684,BM1684X")
    parser.add_argument("--work", type=Path, default=Path("/tmp/import_sweep"))
    parser.add_argument("--markdown", type=Path, default=None, help="append the tables to this file")
    parser.add_argument("--title", default="import sweep")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per bmbuild command")
    args = parser.parse_args(argv)
    zoo = args.zoo.resolve()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    copy = placeholder_copy(zoo, args.work)
    results = {}
    for target in args.targets.split(","):
        results[target] = sweep_target(zoo, copy, args.work, target, args.timeout)
    command = "python benchmarks/import_sweep.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = render(zoo, commit_of(zoo), command, args.title, results)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        with args.markdown.open("a", encoding="utf-8") as stream:
            stream.write(text + "\n")
    bugs = sum(1 for rows in results.values() for r in rows for c in r.checks.values()
               if c.outcome in ("crash", "hang", "mismatch")) + sum(
        1 for rows in results.values() for r in rows if r.status == "crash")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
