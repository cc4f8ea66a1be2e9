"""tpu-mlir: ResNet-18 to real BM1684X and BM1684 bmodels through bmbuild vs a plain script.

The recipe is recipes/resnet_chips.yaml (ResNet-18, batch sizes 1 and 4, 64 kl calibration photos,
one variant per chip), built with `--toolchain tpu-mlir` in a temp workspace with its own action
cache. Measured, one after the other on the same machine:

- bmbuild cold: `bmbuild run recipes/resnet_chips.yaml --toolchain tpu-mlir` on an empty cache;
- plain script: the same tpu-mlir commands, read from that run's `logs/<stage>.cmd` files (paths
  moved to the script's own folder), as one bash script, plus the work bmbuild does in Python and
  a user's script must do too: the ONNX export (same exporter and opset), the 64 calibration
  samples as .npz (same preprocessing), the cmodel inputs, and cos against onnxruntime for each
  model_runner output. bmbuild's extra work (tracing and checking the model, reports, hashing,
  caching) is what the ratio measures;
- no-op: the same bmbuild command again; restore: `build/` deleted, the command again (every
  stage restored from the action cache).

Then the int8 quality of the real int8 bmodels on the cmodel (bmbuild's `compile_int8` cmp: cos,
SQNR and top-1 agreement of the 1000 logits against fp32 onnxruntime, on the held-out photos) next
to the reference toolchain's int8 model (`--toolchain reference`, same recipe, same calibration
and held-out photos). The cmodel takes seconds per inference, so `--samples` held-out photos are
compared (int8.cmp_samples = int8.cmodel_samples = N for both toolchains).

Run: `python benchmarks/tpu_mlir.py [--samples 8]` (an hour or more on 2 busy cores).
Writes benchmarks/results/tpu_mlir.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tpu_mlir.md"
RECIPE = os.environ.get("TPU_MLIR_BENCH_RECIPE", "recipes/resnet_chips.yaml")  # another: a quick check
STAGES = ("compile_fp32", "calibrate", "quantize", "compile_int8")
CHIPS = {"bm1684x": "BM1684X", "bm1684": "BM1684"}
sys.path.insert(0, str(ROOT))


# --- workspaces ---------------------------------------------------------------------------------
def workspace(ws: Path, samples: int) -> None:
    """The recipe, its model and photos in `ws`, with `samples` held-out photos on the cmodel."""
    recipes = ws / "recipes"
    shutil.copytree(ROOT / "recipes" / "models", recipes / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes" / "data" / "photos", recipes / "data" / "photos")
    text = (ROOT / RECIPE).read_text()
    text, count = re.subn(r"cmp_samples: 16 ", f"cmp_samples: {samples} ", text)
    text, count2 = re.subn(r"cmodel_samples: \d+ ", f"cmodel_samples: {samples} ", text)
    assert count == count2 == 1, "recipes/resnet_chips.yaml changed: update the benchmark"
    (ws / RECIPE).write_text(text)


def environment(ws: Path) -> dict[str, str]:
    """bmbuild of this clone, with the workspace's own action cache."""
    return {**os.environ, "BMBUILD_CACHE_DIR": str(ws / "cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    return seconds


def bmbuild(ws: Path, env: dict[str, str], log: str, *extra: str) -> tuple[float, dict[str, str]]:
    """One `bmbuild run` of the recipe: (wall seconds, stage -> outcome)."""
    seconds = timed([sys.executable, "-m", "bmbuild", "run", RECIPE, "--plain", *extra], ws, env, ws / log)
    outcomes = re.findall(r"^\s+(executed|up-to-date|restored)\s+(\S+)", (ws / log).read_text(), re.MULTILINE)
    return seconds, {stage: outcome for outcome, stage in outcomes}


# --- the plain script ---------------------------------------------------------------------------
def stage_lines(build: Path, name: str, stage: str) -> list[str]:
    """The commands bmbuild ran for one stage of recipe `name`, in order."""
    text = (build / name / "logs" / f"{stage}.cmd").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def relocate(line: str, build: Path, plain: Path) -> tuple[list[str], str]:
    """(argv, cwd) of a .cmd line, bmbuild's folders replaced by the plain script's (no temp names)."""
    line = re.sub(r"/\.tmp/(\w+)-[0-9a-f]+", r"/\1", line.replace(str(build), str(plain)))
    words = shlex.split(line)
    cut = words.index("#")
    return words[:cut], words[cut + 2]


def tool_of(argv: list[str]) -> str:
    return Path(next(word for word in argv if "=" not in word)).name


def plain_script(build: Path, plain: Path, names: list[str]) -> str:
    """bash: every tool command of bmbuild's run, with the in-Python work done by `--step`."""
    me = f'cd "$WS" && {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} --step'
    out = ["#!/bin/bash", "set -euo pipefail", 'WS="$PWD"   # the workspace: the Python steps read its recipe']
    for name in names:
        top = plain / name
        dirs = {stage: top / stage for stage in STAGES}
        out += [f"# --- {name}", f'echo "== {name} $(date +%s.%N)"', "mkdir -p " + " ".join(map(str, dirs.values())),
                f"{me} export {name} {dirs['compile_fp32']}/{name}.onnx"]
        for stage in STAGES:
            runs, moved = [], False
            for line in stage_lines(build, name, stage):
                argv, cwd = relocate(line, build, plain)
                tool = tool_of(argv)
                if tool == "model_runner":
                    model = argv.index("--model") + 1
                    argv[model] = re.sub(r"\.work/cmodel/(\d+b\.(?:fp32\.)?compilation)\.compilation\.bmodel$",
                                         r"/\1/compilation.bmodel", argv[model])
                    runs.append(f"cd {shlex.quote(cwd)} && {shlex.join(argv)}")
                    continue
                if tool == "model_tool" and not moved and stage in ("compile_fp32", "compile_int8"):
                    out.append(move_bmodels(dirs[stage], "fp32.compilation" if stage == "compile_fp32"
                                            else "compilation"))
                    moved = True
                if stage == "calibrate" and tool == "model_transform":
                    out.append(f"{me} dataset {name} {cwd}/../dataset")
                if stage == "quantize":
                    out.append(f"cp {dirs['calibrate']}/{name}_cali_table {dirs['quantize']}/ && "
                               f"echo '# layers kept in float' > {dirs['quantize']}/{name}_qtable")
                if stage in ("quantize", "compile_int8") and tool == "model_deploy":
                    fp32_work = f"{dirs['compile_fp32']}.work/{Path(cwd).name}"
                    out.append(f"mkdir -p {cwd} && cp {fp32_work}/{name}.mlir "
                               f"{fp32_work}/{name}_top_f32_all_weight.npz {cwd}/")
                out.append(f"mkdir -p {shlex.quote(cwd)} && cd {shlex.quote(cwd)} && {shlex.join(argv)}")
                if tool == "run_calibration":
                    out.append(f"cp {argv[-1]} {dirs['calibrate']}/")
            if runs:
                kind = "fp32" if stage == "compile_fp32" else "int8"
                out += [f"{me} inputs-{kind} {name} {dirs[stage]}", *runs, f"{me} metrics {name} {dirs[stage]}"]
    out.append('echo "== end $(date +%s.%N)"')
    return "\n".join(out) + "\n"


def move_bmodels(out_dir: Path, suffix: str) -> str:
    """bmbuild's move of each batch size's bmodel into `<N>b.<suffix>/` (plain: a shell loop)."""
    return (f"for d in {out_dir}.work/b*; do n=${{d##*/b}}; mkdir -p {out_dir}/${{n}}b.{suffix}; "
            f"mv $d/compilation.bmodel {out_dir}/${{n}}b.{suffix}/; done")


# --- the steps the plain script does in Python ----------------------------------------------------
def load(name: str) -> Any:
    """The recipe variant `name` of the workspace's recipe file (cwd is the workspace)."""
    from bmbuild.recipe import load_recipes

    return next(loaded.recipe for loaded in load_recipes([Path.cwd() / RECIPE]) if loaded.recipe.name == name)


def step(args: list[str]) -> None:
    import numpy as np

    kind, name, target = args[0], args[1], Path(args[2])
    recipe = load(name)
    if kind == "export":
        import importlib.util

        import torch

        file = Path.cwd() / Path(RECIPE).parent / recipe.source.model_file
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = getattr(module, recipe.source.callable_name)(**(recipe.source.kwargs or {})).eval()
        shape = recipe.shapes_for_batch(recipe.resolved_batch_sizes[0])[0]
        torch.onnx.export(model, (torch.zeros(shape),), str(target), dynamo=False,
                          opset_version=recipe.fp32.opset, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True)
        return
    from bmbuild.calib.dataset import iter_feeds
    from bmbuild.stages.int8_common import input_feeds, split

    calib, holdout = split(recipe)
    feeds = input_feeds(recipe)
    target.mkdir(parents=True, exist_ok=True)
    if kind == "dataset":
        for index, sample in enumerate(iter_feeds(calib, feeds, 1), start=1):
            np.savez(target / f"{index:05d}.npz", input=sample[0])
        return
    cmodel = target.parent / (target.name + ".work") / "cmodel"
    cmodel.mkdir(parents=True, exist_ok=True)
    if kind == "inputs-fp32":
        from bmbuild.stages.trace import example_inputs

        arrays = [example_inputs(recipe, b, seed=recipe.fp32.seed * 1000 + s + 1)[0]
                  for b in recipe.resolved_batch_sizes for s in range(recipe.fp32.cmp_samples)]
    elif kind == "inputs-int8":
        held = holdout[:recipe.int8.cmodel_samples]
        arrays = [pad(chunk[0], b) for b in recipe.resolved_batch_sizes for chunk in iter_feeds(held, feeds, b)]
        first = recipe.resolved_batch_sizes[0]     # bmbuild's per-layer runs: one batch of the first size
        np.savez(cmodel.parent / f"b{first}" / "layers_in.npz", input=pad(next(iter_feeds(held, feeds, first))[0], first))
    else:  # metrics: each output against onnxruntime on its input
        import onnxruntime as ort

        from bmbuild.compare import similarity

        session = ort.InferenceSession(str(target.parent / "compile_fp32" / f"{name}.onnx"))
        for path in sorted(cmodel.glob("in_*.npz")):
            x = np.load(path)["input"]
            ref = session.run(None, {"input": x})[0]
            with np.load(cmodel / path.name.replace("in_", "out_")) as out:
                test = out[out.files[0]].reshape(ref.shape)
            print(f"{path.name}: {similarity(ref, test)}")
        return
    for index, array in enumerate(arrays):
        np.savez(cmodel / f"in_{index}.npz", input=array)


def pad(chunk: Any, size: int) -> Any:
    import numpy as np

    return chunk if len(chunk) == size else np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), axis=0)])


# --- per chip ------------------------------------------------------------------------------------
def chip_seconds(tpu: Path, plain: Path, names: list[str]) -> dict[str, tuple[float, float | None]]:
    """name -> (bmbuild: its stages' seconds in the cold run, plain: its section of the script)."""
    stages = re.findall(r"^\s+executed\s+(\S+):\S+\s+([0-9.]+)s", (tpu / "cold.log").read_text(), re.MULTILINE)
    log = plain / "plain.log"
    marks = re.findall(r"^== (\S+) ([0-9.]+)$", log.read_text() if log.is_file() else "", re.MULTILINE)
    spans = {name: float(end) - float(start) for (name, start), (_, end) in zip(marks, marks[1:])}
    return {name: (sum(float(sec) for recipe, sec in stages if recipe == name), spans.get(name)) for name in names}


def chip_rows(tpu: Path, plain: Path, names: list[str]) -> list[str]:
    rows = []
    for name, (ours, theirs) in chip_seconds(tpu, plain, names).items():
        ratio = f"{ours / theirs:.2f}x" if theirs else "not finished"
        rows.append(f"| {name} | {theirs or float('nan'):.1f} | {ours:.1f} | {ratio} |")
    return rows


# --- int8 quality from the reports ----------------------------------------------------------------
def cmp_of(ws: Path, name: str) -> dict[str, Any]:
    report = json.loads((ws / "build" / name / "report.json").read_text())
    return report["stages"]["compile_int8"]["metrics"]["cmp"]


def quality_rows(tpu: Path, ref: Path, names: list[str]) -> list[str]:
    rows = []
    for name in names:
        for toolchain, ws in (("tpu-mlir (int8 bmodel, cmodel)", tpu), ("reference (int8 ONNX, onnxruntime)", ref)):
            if not (ws / "build" / name / "report.json").is_file():
                continue
            for key, value in cmp_of(ws, name).items():
                worst = value.get("worst", {})
                rows.append(f"| {CHIPS[name.rsplit('_', 1)[1]]} | {toolchain} | {key} | {value.get('samples', '')} | "
                            f"{value['cos']:.4f} | {value['sqnr']:.2f} | {value.get('top1', float('nan')):.3f} | "
                            f"{worst.get('cos', float('nan')):.4f} | {worst.get('sqnr', float('nan')):.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="held-out photos compared on the cmodel (default 8)")
    parser.add_argument("--keep", help="keep the workspaces in this folder")
    parser.add_argument("--plain-chips", nargs="+", choices=list(CHIPS), default=list(CHIPS),
                        help="chips the plain script builds (default: both; one halves the time)")
    parser.add_argument("--report-only", action="store_true", help="write the results of the runs done so far (--keep)")
    parser.add_argument("--step", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(args.step)
        return
    started = time.perf_counter()
    base = Path(args.keep or tempfile.mkdtemp(prefix="bmbuild-tpu-bench-"))
    tpu, plain, ref = base / "bmbuild", base / "plain", base / "reference"
    names = [f"resnet18_{chip}" for chip in CHIPS]
    done = base / "times.json"   # with --keep, an interrupted benchmark resumes after its last finished run
    times: dict[str, float] = json.loads(done.read_text()) if done.is_file() else {}

    def measure(key: str, run: Any) -> None:
        if key not in times:
            times[key] = run()
            done.write_text(json.dumps(times))
        print(f"{key}: {times[key]:.2f}s", flush=True)

    if args.report_only:
        write_results(args, tpu, ref, names, times, time.perf_counter() - started)
        return
    envs = {}
    for folder in (tpu, plain, ref):
        if not (folder / RECIPE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            workspace(folder, args.samples)
        envs[folder] = environment(folder)
    env = envs[tpu]
    # warm the page cache with the tpu-mlir package (1.9 GB venv) so neither side pays for it
    subprocess.run([sys.executable, "-m", "bmbuild", "toolchains"], cwd=tpu, env=env, capture_output=True)
    measure("cold", lambda: checked(bmbuild(tpu, env, "cold.log", "--toolchain", "tpu-mlir"), "executed"))
    script = plain / "plain.sh"
    script.write_text(plain_script(tpu / "build", plain / "out", [f"resnet18_{chip}" for chip in args.plain_chips]))
    script.chmod(0o755)   # from the cold run's logs/<stage>.cmd (a restore does not bring logs back)
    measure("noop", lambda: checked(bmbuild(tpu, env, "noop.log", "--toolchain", "tpu-mlir"), "up-to-date"))
    if "restore" not in times:
        shutil.rmtree(tpu / "build")
    measure("restore", lambda: checked(bmbuild(tpu, env, "restore.log", "--toolchain", "tpu-mlir"), "restored"))
    measure("reference", lambda: bmbuild(ref, envs[ref], "reference.log", "--toolchain", "reference")[0])
    measure("plain", lambda: timed(["bash", str(script)], plain, env, plain / "plain.log"))
    write_results(args, tpu, ref, names, times, time.perf_counter() - started)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def checked(result: tuple[float, dict[str, str]], expected: str) -> float:
    seconds, outcomes = result
    if set(outcomes.values()) != {expected}:
        raise SystemExit(f"expected every stage {expected}, got {outcomes}")
    return seconds


def sec(times: dict[str, float], key: str) -> str:
    return f"{times[key]:.2f}" if key in times else "not run"


def ratio(times: dict[str, float]) -> str:
    return f"{times['cold'] / times['plain']:.2f}x" if "cold" in times and "plain" in times else ""


def write_results(args: argparse.Namespace, tpu: Path, ref: Path, names: list[str], t: dict[str, float],
                  total: float) -> None:
    from importlib.metadata import version

    text = "\n".join([
        "# tpu-mlir: ResNet-18 to BM1684X and BM1684 bmodels, bmbuild vs a plain script",
        "",
        f"`{RECIPE}` (ResNet-18, batch sizes 1 and 4, 64 kl calibration photos, one variant per chip) with "
        f"`--toolchain tpu-mlir` (tpu-mlir 1.30.2), {args.samples} held-out photos on the cmodel. Generated by "
        f"`python benchmarks/tpu_mlir.py --samples {args.samples}` in {total:.0f}s ({platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other jobs, Python {platform.python_version()}, "
        f"torch {version('torch')}, onnxruntime {version('onnxruntime')}).",
        "",
        "| run | wall s | ratio |",
        "|---|---:|---:|",
        f"| plain script for {', '.join(args.plain_chips)} (same tpu-mlir commands + export, dataset, cmodel inputs, "
        f"cos) | {sec(t, 'plain')} | {'1.00x' if len(args.plain_chips) == len(CHIPS) else ''} |",
        f"| bmbuild cold (empty cache), both chips | {sec(t, 'cold')} | "
        f"{ratio(t) if len(args.plain_chips) == len(CHIPS) else ''} |",
        f"| bmbuild no-op (second run) | {sec(t, 'noop')} | |",
        f"| bmbuild restore (`build/` deleted, every stage from the cache) | {sec(t, 'restore')} | |",
        f"| reference toolchain, same recipe (for the int8 numbers below) | {sec(t, 'reference')} | |",
        "",
        "Per chip (bmbuild: the sum of its stages' times in the cold run; plain: its part of the script):",
        "",
        "| recipe | plain s | bmbuild s | ratio |",
        "|---|---:|---:|---:|",
        *chip_rows(tpu, tpu.parent / "plain", names),
        "",
        "int8 vs fp32 (onnxruntime on the fp32 ONNX), 1000 logits per held-out photo: per-sample mean cos "
        "and SQNR, top-1 agreement, worst sample.",
        "",
        "| chip | int8 model | output | samples | cos | SQNR dB | top-1 agree | worst cos | worst SQNR |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        *quality_rows(tpu, ref, names),
        "",
        "- plain script: the tool lines of bmbuild's `logs/<stage>.cmd` (paths moved), in one bash script, "
        "plus the Python work a user's script needs too (ONNX export, calibration .npz files, cmodel inputs, "
        "cos of each model_runner output against onnxruntime). It does not trace or check the model, "
        "write reports or cache anything.",
        "- the machine is shared (2 cores, other jobs running): wall times vary run to run by 10-20%.",
    ]) + "\n"
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
