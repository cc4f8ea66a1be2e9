"""Every model of the onnx wheel's backend test data through `bmbuild init` and an fp32 build.

About 140 ONNX files nobody here wrote ship inside the `onnx` wheel (onnx/backend/test/data:
`light/` Caffe2-era networks of IR version 3, `pytorch-converted/` and `pytorch-operator/` opset
6-9 exports, `simple/` hand-made graphs): old opsets, fixed shapes, int64 shape inputs, float64
and string inputs, training-domain ops. Each is copied into a fresh workspace, `bmbuild init
model.onnx` writes its recipe as a user would get it, then `bmbuild run recipes -k --toolchain
reference --json` builds them all (compile_fp32: the copy, onnx.checker, onnxruntime's optimiser
and the comparison on seeded inputs). Per model: init ok, built, or the first line of the error.

With `--baseline-rev REV` the same runs use the code of git revision REV too (a `git archive` copy
on PYTHONPATH), in the same run. Writes benchmarks/results/onnx_corpus.md.

    python benchmarks/onnx_corpus.py [--baseline-rev e215bc6]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import checkout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def corpus() -> dict[str, Path]:
    """name -> ONNX file, for every model of the wheel's test data."""
    found = {path.stem: path for path in sorted((DATA / "light").glob("*.onnx"))}
    for group in ("pytorch-converted", "pytorch-operator", "simple"):
        for folder in sorted((DATA / group).iterdir()):
            if (folder / "model.onnx").is_file():
                found[folder.name] = folder / "model.onnx"
    return found


def first_line(text: str) -> str:
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    return line.removeprefix("error: ")[:160]


def run_code(code: Path | None, models: dict[str, Path], folder: Path) -> tuple[dict[str, str], float]:
    """{model: outcome} and the wall seconds, with `bmbuild` imported from `code` (None: this tree)."""
    folder.mkdir(parents=True)
    env = {**os.environ, "BMBUILD_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(code or ROOT),
           "BMBUILD_TOOLCHAINS_DIR": str(folder / "no-toolchains")}
    bmbuild = [sys.executable, "-m", "bmbuild"]
    outcome: dict[str, str] = {}
    started = time.perf_counter()
    for name, source in models.items():
        (folder / "models").mkdir(exist_ok=True)
        target = folder / "models" / f"{name}.onnx"
        target.write_bytes(source.read_bytes())
        done = subprocess.run(bmbuild + ["init", str(target.relative_to(folder))], cwd=folder, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            outcome[name] = "init: " + first_line(done.stderr + done.stdout)
    done = subprocess.run(bmbuild + ["run", "recipes", "-k", "-j", "2", "--toolchain", "reference", "--json"],
                          cwd=folder, env=env, capture_output=True, text=True)
    document = json.loads(done.stdout)
    for model in document["models"]:
        outcome[model["name"]] = "built" if model["ok"] else "failed"
    for stage in document["stages"]:
        if stage["outcome"] == "failed":
            outcome[stage["recipe"]] = "build: " + first_line(stage["error"])
    for error in document["errors"]:
        if error.get("file"):
            name = Path(error["file"]).stem
            outcome.setdefault(name, "validate: " + first_line(error["message"]))
    for name in models:
        outcome.setdefault(name, "not built")
    return outcome, time.perf_counter() - started


def category(text: str) -> str:
    """An outcome without model-specific names, to count alike failures together."""
    if text == "built":
        return text
    head, _, rest = text.partition(": ")
    for marker in ("Could not find an implementation for", "Required inputs", "is float64", "is string",
                   "disagree on the batch size", "Non-zero status code returned while running",
                   "Load model from", "onnx.checker rejected"):
        if marker in rest:
            return f"{head}: ...{marker}..."
    return f"{head}: {rest[:70]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-rev", help="also build with the code of this git revision, in the same run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnx_corpus.md"))
    args = parser.parse_args()
    models = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"this tree": run_code(None, models, Path(tmp) / "this")}
        if args.baseline_rev:
            code = checkout(args.baseline_rev, Path(tmp) / "base-code")
            runs[args.baseline_rev] = run_code(code, models, Path(tmp) / "base")
    labels = list(runs)
    lines = ["# The onnx wheel's backend test models through `bmbuild init` + an fp32 build", "",
             f"Made by `python benchmarks/onnx_corpus.py{' --baseline-rev ' + args.baseline_rev if args.baseline_rev else ''}`"
             f" (onnx {onnx.__version__}, {len(models)} models; see the script's docstring).", "",
             "| outcome | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    counts = {label: collections.Counter(category(o) for o in runs[label][0].values()) for label in labels}
    for key in sorted(set().union(*counts.values()), key=lambda k: (k != "built", k)):
        lines.append(f"| {key} | " + " | ".join(str(counts[label][key]) for label in labels) + " |")
    lines.append("| wall seconds | " + " | ".join(f"{runs[label][1]:.0f}" for label in labels) + " |")
    if len(labels) == 2:
        changed = [(name, runs[labels[1]][0][name], runs[labels[0]][0][name]) for name in models
                   if runs[labels[0]][0][name] != runs[labels[1]][0][name]]
        lines += ["", f"Models whose outcome changed ({len(changed)}):", "",
                  f"| model | {labels[1]} | {labels[0]} |", "|---|---|---|"]
        lines += [f"| {name} | {before} | {after} |" for name, before, after in changed]
    lines += ["", "Every model's outcome on this tree:", "", "| model | outcome |", "|---|---|"]
    lines += [f"| {name} | {runs[labels[0]][0][name]} |" for name in models]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
