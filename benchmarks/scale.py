"""Model-zoo scale: N recipes of a tiny model, built, re-run, planned and restored.

For each N (default 10, 100, 300) in a fresh temp workspace, each command a fresh process:
  cold -j1     first build, empty cache, one stage at a time (the baseline of the row)
  cold -j2     the same from an empty cache and build dir, two stages at a time
  no-op        `bmbuild run` again: nothing to do
  plan         `bmbuild plan` with everything up to date
  clone        a fresh copy of the workspace with an empty local cache, restoring everything
               from a remote cache in a folder (pushed by the -j2 build)
Prints a Markdown table with wall times, ratios against cold -j1 and the per-recipe overhead of
the no-op run, and writes it to benchmarks/results/scale.md.
Run: `python benchmarks/scale.py [--sizes 10 100 300]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = '''
import torch


def tiny(channels: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(channels, 2, 3, padding=1)).eval()
'''


def make_workspace(folder: Path, count: int, remote: Path) -> None:
    (folder / "zoo").mkdir(parents=True)
    (folder / "models.py").write_text(TINY_MODEL)
    (folder / "bmbuild.yaml").write_text(f"remote_cache: {remote}\n")
    (folder / "zoo" / "defaults.yaml").write_text(
        "toolchain: reference\nsource: {framework: pytorch, model: ../models.py:tiny}\n"
        "shapes: [[1, 3, 8, 8]]\nfp32: {cmp_samples: 1}\n")
    for index in range(count):
        (folder / "zoo" / f"m{index:04d}.yaml").write_text(
            f"name: m{index:04d}\nsource: {{kwargs: {{seed: {index}}}}}\n")


def run(args: list[str], cwd: Path, cache: Path) -> tuple[float, str]:
    env = {**os.environ, "BMBUILD_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bmbuild", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bmbuild {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def outcomes(workspace: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for report in (workspace / "build").glob("*/report.json"):
        for stage in json.loads(report.read_text())["stages"].values():
            counts[stage["outcome"]] = counts.get(stage["outcome"], 0) + 1
    return counts


def measure(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        remote = tmp_path / "remote"
        ws = tmp_path / "ws"
        make_workspace(ws, count, remote)
        cold1, _ = run(["run", "zoo", "-j", "1", "--plain"], ws, tmp_path / "cache1")
        shutil.rmtree(ws / "build")
        shutil.rmtree(ws / ".bmbuild")
        shutil.rmtree(remote, ignore_errors=True)
        cold2, _ = run(["run", "zoo", "-j", "2", "--plain"], ws, tmp_path / "cache2")
        assert outcomes(ws) == {"executed": 2 * count}, outcomes(ws)
        noop, out = run(["run", "zoo", "--plain"], ws, tmp_path / "cache2")
        assert "nothing to do" in out, out[-500:]
        plan, _ = run(["plan", "zoo"], ws, tmp_path / "cache2")
        clone = tmp_path / "clone"
        shutil.copytree(ws, clone, ignore=shutil.ignore_patterns("build", ".bmbuild"))
        restore, _ = run(["run", "zoo", "-j", "2", "--plain"], clone, tmp_path / "cache3")
        assert outcomes(clone) == {"restored": 2 * count}, outcomes(clone)
    return {"cold_j1": cold1, "cold_j2": cold2, "noop": noop, "plan": plan, "clone_restore": restore}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300])
    args = parser.parse_args()
    lines = ["| recipes | stages | cold -j1 s | cold -j2 s (ratio) | no-op s (ratio) | plan s | "
             "clone from remote s (ratio) | no-op ms per recipe |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for count in args.sizes:
        r = measure(count)
        base = r["cold_j1"]
        lines.append(
            f"| {count} | {2 * count} | {base:.1f} | {r['cold_j2']:.1f} ({r['cold_j2'] / base:.2f}x) | "
            f"{r['noop']:.2f} ({r['noop'] / base:.3f}x) | {r['plan']:.2f} | "
            f"{r['clone_restore']:.1f} ({r['clone_restore'] / base:.2f}x) | {1000 * r['noop'] / count:.1f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results" / "scale.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# bmbuild at model-zoo scale (tiny model, trace + compile_fp32 per recipe)\n\n{table}\n\n"
                   f"Ratios are against the cold -j1 build of the same row. Machine: {os.cpu_count()} cores.\n"
                   f"Command: `python benchmarks/scale.py --sizes {' '.join(map(str, args.sizes))}`\n")


if __name__ == "__main__":
    main()
