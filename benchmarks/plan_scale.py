"""How long `bmbuild plan` takes over many recipes (issue: planning 100 recipes must stay cheap).

Generates N copies of recipes/resnet.yaml (distinct names, one shared model file) in a temp
workspace and times `bmbuild plan` as a user runs it (a fresh process each time), against two
baselines measured in the same run: `bmbuild --version` (interpreter + CLI start-up) and
`bmbuild plan` over one recipe. With `--baseline-rev REV` the same commands also run on the code
of git revision REV (a `git archive` copy on PYTHONPATH) in the same run, so a change to the planner
is compared before/after on one machine under one load. Prints a Markdown table and writes it to
benchmarks/results/plan_scale.md.

    python benchmarks/plan_scale.py [--copies 100] [--baseline-rev 53a2869]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BMBUILD = [sys.executable, "-m", "bmbuild"]


def make_workspace(folder: Path, copies: int) -> None:
    shutil.copytree(ROOT / "recipes" / "models", folder / "models")
    shutil.copytree(ROOT / "recipes" / "data", folder / "data")
    text = (ROOT / "recipes" / "resnet.yaml").read_text()
    (folder / "zoo").mkdir()
    for index in range(copies):
        body = text.replace("name: resnet18", f"name: resnet18_{index:04d}")
        body = body.replace("models/resnet.py", "../models/resnet.py").replace("data/photos", "../data/photos")
        (folder / "zoo" / f"resnet_{index:04d}.yaml").write_text(body)


def timed(args: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(args, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(folder: Path, copies: int, repeat: int, code: Path) -> list[float]:
    """start-up, plan of one recipe, cold and warm plan of all: `bmbuild` imported from `code`."""
    # no managed toolchain: `auto` plans for the reference toolchain whatever this machine has installed
    env = {**os.environ, "BMBUILD_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(code),
           "BMBUILD_TOOLCHAINS_DIR": str(folder / "no-toolchains")}
    one = sorted((folder / "zoo").iterdir())[0]
    startup = timed(BMBUILD + ["--version"], folder, env, repeat)
    plan_one = timed(BMBUILD + ["plan", str(one)], folder, env, repeat)
    shutil.rmtree(folder / ".bmbuild", ignore_errors=True)
    cold = timed(BMBUILD + ["plan", "zoo"], folder, env, 1)  # first plan hashes every input
    warm = timed(BMBUILD + ["plan", "zoo"], folder, env, repeat)
    check = subprocess.run(BMBUILD + ["plan", "zoo"], cwd=folder, env=env, capture_output=True, text=True)
    assert len(re.findall(r"resnet18_\d+:", check.stdout)) == 5 * copies, "plan did not list every stage"
    return [startup, plan_one, cold, warm]


def checkout(rev: str, into: Path) -> Path:
    """The code of git revision `rev`, unpacked into `into` (no work tree is touched)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bmbuild"], check=True, capture_output=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", help="also time the code of this git revision, in the same run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ws"
        make_workspace(folder, args.copies)
        base_code = checkout(args.baseline_rev, Path(tmp) / "base") if args.baseline_rev else None
        # the two codes take turns, twice, and each keeps its best: a load spike on a shared machine
        # then lands on one turn, not on one side of the ratio
        runs: dict[Path, list[list[float]]] = {}
        for _ in range(2 if base_code else 1):
            for code in (ROOT, base_code):
                if code is not None:
                    runs.setdefault(code, []).append(measure(folder, args.copies, args.repeat, code))
        current = [min(values) for values in zip(*runs[ROOT])]
        baseline = [min(values) for values in zip(*runs[base_code])] if base_code else None
    labels = [("bmbuild --version (start-up baseline)", 1), ("bmbuild plan, 1 recipe", 1),
              (f"bmbuild plan, {args.copies} recipes, cold stat cache", args.copies),
              (f"bmbuild plan, {args.copies} recipes, warm stat cache", args.copies)]
    header = "| command | recipes | wall s (median) | vs 1-recipe plan | per recipe ms (over start-up) |"
    rule = "|---|---:|---:|---:|---:|"
    if baseline:
        header += f" {args.baseline_rev} wall s | this / {args.baseline_rev} |"
        rule += "---:|---:|"
    lines = [header, rule]
    for index, (label, count) in enumerate(labels):
        seconds = current[index]
        per_recipe = 1000 * (seconds - current[0]) / count
        line = f"| {label} | {count} | {seconds:.3f} | {seconds / current[1]:.2f}x | {per_recipe:.1f} |"
        if baseline:
            line += f" {baseline[index]:.3f} | {seconds / baseline[index]:.2f}x |"
        lines.append(line)
    table = "\n".join(lines)
    print(table)
    command = f"python benchmarks/plan_scale.py --copies {args.copies}" + (
        f" --baseline-rev {args.baseline_rev}" if args.baseline_rev else "")
    out = ROOT / "benchmarks" / "results" / "plan_scale.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# bmbuild plan over generated recipes\n\n{table}\n\nMachine: {os.cpu_count()} cores. "
                   f"Command: `{command}`\n")


if __name__ == "__main__":
    main()
