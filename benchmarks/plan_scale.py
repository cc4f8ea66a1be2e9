"""How long `bmbuild plan` takes over many recipes (issue: planning 100 recipes must stay cheap).

Generates N copies of recipes/resnet.yaml (distinct names, one shared model file) in a temp
workspace and times `bmbuild plan` as a user runs it (a fresh process each time), against two
baselines measured in the same run: `bmbuild --version` (interpreter + CLI start-up) and
`bmbuild plan` over one recipe. Prints a Markdown table and writes it to
benchmarks/results/plan_scale.md. Run: `python benchmarks/plan_scale.py [--copies 100]`.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_workspace(folder, args.copies)
        env = {**os.environ, "BMBUILD_CACHE_DIR": str(folder / "cache")}
        one = sorted((folder / "zoo").iterdir())[0]
        startup = timed(BMBUILD + ["--version"], folder, env, args.repeat)
        plan_one = timed(BMBUILD + ["plan", str(one)], folder, env, args.repeat)
        shutil.rmtree(folder / ".bmbuild", ignore_errors=True)
        cold = timed(BMBUILD + ["plan", "zoo"], folder, env, 1)  # first plan hashes every input
        warm = timed(BMBUILD + ["plan", "zoo"], folder, env, args.repeat)
        check = subprocess.run(BMBUILD + ["plan", "zoo"], cwd=folder, env=env, capture_output=True, text=True)
        assert check.stdout.count("resnet18_") == 5 * args.copies, "plan did not list every stage"
    rows = [
        ("bmbuild --version (start-up baseline)", 1, startup),
        ("bmbuild plan, 1 recipe", 1, plan_one),
        (f"bmbuild plan, {args.copies} recipes, cold stat cache", args.copies, cold),
        (f"bmbuild plan, {args.copies} recipes, warm stat cache", args.copies, warm),
    ]
    lines = ["| command | recipes | wall s (median) | vs 1-recipe plan | per recipe ms (over start-up) |",
             "|---|---:|---:|---:|---:|"]
    for label, count, seconds in rows:
        per_recipe = 1000 * (seconds - startup) / count
        lines.append(f"| {label} | {count} | {seconds:.3f} | {seconds / plan_one:.2f}x | {per_recipe:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results" / "plan_scale.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# bmbuild plan over generated recipes\n\n{table}\n\nMachine: {os.cpu_count()} cores. "
                   f"Command: `python benchmarks/plan_scale.py --copies {args.copies}`\n")


if __name__ == "__main__":
    main()
