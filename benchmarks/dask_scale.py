"""Cluster builds: a zoo whose stages mostly wait, on 1, 2 and 4 Dask workers, and locally.

Each recipe's model factory sleeps (`--sleep` seconds, in the trace stage), standing in for the
minutes a vendor compiler takes, so the machine's 2 cores are not what limits the cluster; only
that stage is built unless `--stages` names more (compile_fp32 is CPU work, which 2 shared cores
do not scale). Every build starts from an empty build folder, local cache and remote cache (a
folder):

  local -j1     `bmbuild run zoo` on this machine, one stage at a time
  dask N        `bmbuild run zoo --scheduler ...` on a LocalCluster of N worker processes with
                1 thread each (started and warmed up first: torch, onnx, onnxruntime imported, as
                in a long-running cluster)

Reported per row: wall time of the client, speed-up against 1 worker (goal >= 0.8 x workers), and
the overhead per stage: (workers x wall time - the stages' own run times, summed from report.json)
/ stages: scheduling, transfers through the shared cache, restoring into the workspace and the
client's start-up (and, with several workers, their idle time), spread over the stages. The
scheduling overhead of the cluster is that of 1 worker minus that of the local run.
Writes benchmarks/results/dask_scale.md.
Run: `python benchmarks/dask_scale.py [--recipes 8] [--sleep 10] [--workers 1 2 4] [--stages trace]`.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SLEEPY_MODEL = '''
import time

import torch


def sleepy(seconds: float = 5.0, seed: int = 0) -> torch.nn.Module:
    """A tiny net that takes `seconds` to build: a stage dominated by waiting."""
    time.sleep(seconds)
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
'''


def make_workspace(folder: Path, count: int, sleep: float) -> None:
    (folder / "zoo").mkdir(parents=True)
    (folder / "models.py").write_text(SLEEPY_MODEL)
    (folder / "zoo" / "defaults.yaml").write_text(
        "toolchain: reference\nsource: {framework: pytorch, model: ../models.py:sleepy}\n"
        "shapes: [[1, 3, 8, 8]]\nfp32: {cmp_samples: 1}\n")
    for index in range(count):
        (folder / "zoo" / f"m{index:03d}.yaml").write_text(
            f"name: m{index:03d}\nsource: {{kwargs: {{seed: {index}, seconds: {sleep}}}}}\n")


def fresh(ws: Path, *folders: Path) -> None:
    for folder in (ws / "build", ws / ".bmbuild", *folders):
        shutil.rmtree(folder, ignore_errors=True)


def build(ws: Path, cache: Path, extra: list[str], workers: int = 1) -> dict[str, Any]:
    """One `bmbuild run zoo` in a fresh process: wall time, stages executed, their summed run time."""
    env = {**os.environ, "BMBUILD_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bmbuild", "run", "zoo", "--plain", *extra], cwd=ws, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bmbuild run {' '.join(extra)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stages = [stage for report in (ws / "build").glob("*/report.json")
              for stage in json.loads(report.read_text())["stages"].values()]
    executed = [stage for stage in stages if stage["outcome"] == "executed"]
    if len(executed) != len(stages):
        raise SystemExit(f"expected every stage to execute: {[s['outcome'] for s in stages]}")
    work = sum(stage["seconds"] for stage in executed)
    return {"wall": wall, "stages": len(stages), "work": work, "overhead": (workers * wall - work) / len(stages),
            "workers": len({stage.get("worker") for stage in executed if stage.get("worker")})}


def _preload() -> None:
    """On each worker: what a long-running worker has done once already (imports, a first trace,
    export and onnxruntime session)."""
    import io

    import onnxruntime
    import torch

    import bmbuild.cluster  # noqa: F401
    import bmbuild.stages.trace  # noqa: F401
    import bmbuild.toolchains.reference  # noqa: F401

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    example = torch.zeros(1, 3, 8, 8)
    traced = torch.jit.trace(net, example)
    buffer = io.BytesIO()
    torch.onnx.export(traced, (example,), buffer, dynamo=False)
    onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def on_cluster(ws: Path, tmp: Path, workers: int, stages: list[str]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)
        client.run(_preload)
        remote = tmp / f"remote-{workers}"
        fresh(ws, remote, tmp / "cache")
        return build(ws, tmp / "cache", ["--scheduler", cluster.scheduler_address, "--remote-cache", str(remote),
                                         *stage_args(stages)], workers)


def stage_args(stages: list[str]) -> list[str]:
    return [arg for stage in stages for arg in ("--stage", stage)]


def table(rows: dict[str, dict[str, Any]], workers: list[int], count: int, sleep: float, stages: list[str]) -> str:
    base = rows["dask 1"]["wall"] if "dask 1" in rows else None
    lines = [f"# Cluster builds: {count} recipes ({' + '.join(stages)}), trace waits {sleep:g}s",
             "", "| executor | workers | wall s | speed-up vs 1 worker (goal) | stage work s | overhead per stage s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        n = int(name.split()[1]) if name.startswith("dask") else 0
        speed = f"{base / row['wall']:.2f}x ({0.8 * n:.1f}x)" if base and n else "-"
        lines.append(f"| {name} | {row['workers'] or '-'} | {row['wall']:.1f} | {speed} | {row['work']:.1f} | "
                     f"{row['overhead']:.2f} |")
    if "dask 1" in rows:
        extra = rows["dask 1"]["overhead"] - rows["local -j1"]["overhead"]
        lines += ["", f"Scheduling overhead of the cluster per stage (1 worker vs local -j1): {extra:+.2f} s."]
    lines += ["", "Every build starts empty (build folder, local and remote cache). Workers: a `LocalCluster` of "
              "processes with 1 thread each, warmed up (imports, a first trace and export); the shared cache is a folder. Stage work is the sum "
              "of the stages' own run times (report.json); overhead per stage = (workers x wall - stage work) / stages. "
              "Machine: 2 cores, shared with other jobs.",
              f"Command: `python benchmarks/dask_scale.py --recipes {count} --sleep {sleep:g} "
              f"--workers {' '.join(map(str, workers))} --stages {' '.join(stages)}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--stages", nargs="+", default=["trace"], help="the last stages to build (--stage)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dask_scale.md")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ws = tmp / "ws"
        make_workspace(ws, args.recipes, args.sleep)
        fresh(ws, tmp / "cache")
        rows["local -j1"] = build(ws, tmp / "cache", ["--executor", "local", "-j", "1", *stage_args(args.stages)])
        print(f"local -j1: {rows['local -j1']['wall']:.1f}s", flush=True)
        for workers in args.workers:
            rows[f"dask {workers}"] = on_cluster(ws, tmp, workers, args.stages)
            print(f"dask {workers}: {rows[f'dask {workers}']['wall']:.1f}s", flush=True)
    text = table(rows, args.workers, args.recipes, args.sleep, args.stages)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
