"""A no-op as fast as make (issue 12): N INT8 recipes x 5 stages, everything up to date.

For each N (default 10, 100, 300) a workspace of N INT8 recipes of a tiny classifier (one shared
model file and calibration set, one seed per recipe) is built for real once (`run -j 2`; the
workspaces share one action cache, so the larger ones execute only their new recipes). Then each
command below runs as a fresh process, `--repeat` times, and the median wall time is reported:

  bmbuild run       the no-op build (must print "nothing to do"), answered by the workspace
                    snapshot when the tree has one (bmbuild.snapshot)
  run, full check   the same without the snapshot: every recipe loaded, every stage decided
  bmbuild plan      with everything up to date
  bmbuild status    with everything up to date
  dvc repro         DVC's no-op on N*5 trivial stages chained 5 by 5 (`cp` of a file to the next),
                    in its own git+dvc folder, after one real `dvc repro`
  python -c pass    the floor: interpreter start-up

DVC is installed into the benchmark's own venv (~/.cache/bmbuild-bench/dvc-venv, created with
`python3 -m venv` + `pip install dvc` when missing, reused after). `--tree LABEL=PATH` (repeatable)
times another bmbuild source tree (a worktree of an older commit, say) on the same workspaces in
the same run, so before/after ratios do not depend on the machine's load. `--profile` writes
cProfile summaries of the no-op run and plan of the largest N to benchmarks/results/noop-profile-*.txt.
Modules are byte-compiled once into a cache folder of the benchmark (as an installed package has
them), and each command runs once untimed before it is timed. Writes benchmarks/results/noop.md. Run: `python benchmarks/noop.py [--sizes 10 100 300]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DVC_VENV = Path.home() / ".cache" / "bmbuild-bench" / "dvc-venv"
STAGES = 5  # trace, compile_fp32, calibrate, quantize, compile_int8

TINY_MODEL = '''
import torch


def tiny(seed: int = 0) -> torch.nn.Module:
    """conv-ReLU, global average pool, linear: 1x3x8x8 -> 4 classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 4)).eval()
'''

DEFAULTS = """\
toolchain: reference
source: {framework: pytorch, model: ../models.py:tiny}
shapes: [[1, 3, 8, 8]]
prec: INT8
fp32: {cmp_samples: 1}
calibration: {data: ../data/calib.npz, key: x, samples: 8, method: minmax, bins: 128}
int8: {cmp_samples: 4, tolerance: {cos: 0.5, euclid: -1.0}}
"""


# --- workspaces ----------------------------------------------------------------------------------

def make_workspace(folder: Path, count: int) -> None:
    """N recipes below zoo/, sharing zoo/defaults.yaml, one model file and one calibration set."""
    import numpy as np

    (folder / "zoo").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "models.py").write_text(TINY_MODEL)
    (folder / "bmbuild.yaml").write_text("jobs: 1\n")
    rng = np.random.default_rng(0)
    np.savez(folder / "data" / "calib.npz", x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    (folder / "zoo" / "defaults.yaml").write_text(DEFAULTS)
    for index in range(count):
        (folder / "zoo" / f"m{index:04d}.yaml").write_text(
            f"name: m{index:04d}\nsource: {{kwargs: {{seed: {index}}}}}\n")


def bmbuild_env(tree: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "BMBUILD_CACHE_DIR": str(cache)}


def check_call(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def build(ws: Path, count: int, env: dict[str, str]) -> float:
    """The one real build; returns its wall time."""
    started = time.perf_counter()
    check_call([sys.executable, "-m", "bmbuild", "run", "zoo", "-j", "2", "--plain"], ws, env)
    seconds = time.perf_counter() - started
    out = check_call([sys.executable, "-m", "bmbuild", "run", "zoo", "--plain"], ws, env)
    expected = f"nothing to do: {count * STAGES} stage(s) up to date"
    if expected not in out:
        raise SystemExit(f"the second run was not a no-op of {count * STAGES} stages:\n{out[-2000:]}")
    return seconds


# --- DVC ----------------------------------------------------------------------------------------

def works(executable: Path) -> bool:
    return executable.exists() and subprocess.run([str(executable), "--version"], capture_output=True).returncode == 0


def dvc_executable() -> Path:
    """dvc from the benchmark's own venv, installed on first use (or when a past install broke)."""
    dvc = DVC_VENV / "bin" / "dvc"
    if not works(dvc):
        print(f"installing dvc into {DVC_VENV} ...", flush=True)
        DVC_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], check=True)
    return dvc


def dvc_env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@e",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@e"}


def make_dvc_project(folder: Path, count: int, dvc: Path) -> None:
    """`count` chains of STAGES stages; stage k copies c<i>_<k>.txt to c<i>_<k+1>.txt.

    The outputs, dvc.lock and DVC's cache are written here, byte for byte as `dvc repro` leaves
    them: DVC's own first repro of 500 stages took over 7 minutes on this machine (it rewrites
    dvc.lock after each stage). A `dvc repro` then checks that it is a no-op.
    """
    env = dvc_env()
    folder.mkdir(parents=True)
    check_call(["git", "init", "-q"], folder, env)
    check_call([str(dvc), "init", "-q"], folder, env)
    check_call([str(dvc), "config", "core.analytics", "false"], folder, env)
    stages, lock = ["stages:"], ["schema: '2.0'", "stages:"]
    for chain in range(count):
        content = f"input {chain}\n".encode()
        digest = hashlib.md5(content).hexdigest()
        cached = folder / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(content)
        cached.chmod(0o444)
        for k in range(STAGES + 1):
            (folder / f"c{chain:04d}_{k}.txt").write_bytes(content)
        for k in range(STAGES):
            src, dst = f"c{chain:04d}_{k}.txt", f"c{chain:04d}_{k + 1}.txt"
            stages += [f"  s{chain:04d}_{k}:", f"    cmd: cp {src} {dst}", f"    deps: [{src}]", f"    outs: [{dst}]"]
            lock += [f"  s{chain:04d}_{k}:", f"    cmd: cp {src} {dst}"]
            for section, path in (("deps", src), ("outs", dst)):
                lock += [f"    {section}:", f"    - path: {path}", "      hash: md5", f"      md5: {digest}",
                         f"      size: {len(content)}"]
    (folder / "dvc.yaml").write_text("\n".join(stages) + "\n")
    (folder / "dvc.lock").write_text("\n".join(lock) + "\n")
    out = check_call([str(dvc), "repro"], folder, env)
    if "Running stage" in out or out.count("didn't change") != count * STAGES:
        raise SystemExit(f"dvc repro was not a no-op:\n{out[-2000:]}")


# --- timing -------------------------------------------------------------------------------------

def median_seconds(args: list[str], cwd: Path, env: dict[str, str], repeat: int, expect: str = "",
                   before: Callable[[], None] = lambda: None) -> float:
    """Median wall time of `repeat` runs, after one untimed run that warms the caches; `before`
    is called before each run, untimed."""
    samples = []
    for attempt in range(repeat + 1):
        before()
        started = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
        if attempt:
            samples.append(time.perf_counter() - started)
        if done.returncode != 0 or expect not in done.stdout:
            raise SystemExit(f"{' '.join(args)}: exit {done.returncode}, expected {expect!r}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return statistics.median(samples)


def time_bmbuild(tree: Path, ws: Path, cache: Path, count: int, repeat: int) -> dict[str, float]:
    env = bmbuild_env(tree, cache)
    bm = [sys.executable, "-m", "bmbuild"]
    stages = count * STAGES
    noop = f"nothing to do: {stages} stage(s) up to date"
    return {
        "full": median_seconds(bm + ["run", "zoo", "--plain"], ws, env, repeat, noop,
                               before=lambda: (ws / ".bmbuild" / "noop-snapshot.json").unlink(missing_ok=True)),
        "run": median_seconds(bm + ["run", "zoo", "--plain"], ws, env, repeat, noop),
        "plan": median_seconds(bm + ["plan", "zoo"], ws, env, repeat, f"0 of {stages} stage(s) would run"),
        "status": median_seconds(bm + ["status", "zoo"], ws, env, repeat, "up-to-date"),
    }


def profile(tree: Path, ws: Path, cache: Path, command: str, out: Path, full: bool = False) -> None:
    """cProfile of one `bmbuild <command> zoo` in a fresh process: top functions by cumulative and
    own time. `full`: without the workspace snapshot, so every recipe is loaded and decided."""
    raw = out.with_suffix(".prof")
    args = [sys.executable, "-m", "cProfile", "-o", str(raw), "-m", "bmbuild", command, "zoo"]
    if command == "run":
        args.append("--plain")
    if full:
        (ws / ".bmbuild" / "noop-snapshot.json").unlink(missing_ok=True)
    check_call(args, ws, bmbuild_env(tree, cache))
    with open(out, "w") as handle:
        stats = pstats.Stats(str(raw), stream=handle)
        what = " (full check: no snapshot)" if full else ""
        handle.write(f"# cProfile of `bmbuild {command} zoo`{what} ({tree})\n\n## by cumulative time\n")
        stats.sort_stats("cumulative").print_stats(45)
        handle.write("\n## by own time\n")
        stats.sort_stats("tottime").print_stats(30)
    raw.unlink()


# --- report -------------------------------------------------------------------------------------

def table(rows: list[dict[str, object]], labels: list[str]) -> str:
    """One line per size and bmbuild tree; DVC and the floor repeated on each line of a size."""
    head = ["recipes", "stages", "bmbuild", "run, full check s", "run s", "plan s", "status s",
            "dvc repro s", "python -c pass s", "run vs dvc", "run / floor", "plan / floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * 2 + "---|" + "---:|" * (len(head) - 3)]
    for row in rows:
        floor, dvc = float(row["floor"]), float(row["dvc"])
        for label in labels:
            r = row[label]
            assert isinstance(r, dict)
            cells = [str(row["count"]), str(row["stages"]), label, f"{r['full']:.3f}", f"{r['run']:.3f}",
                     f"{r['plan']:.3f}", f"{r['status']:.3f}", f"{dvc:.2f}", f"{floor:.3f}",
                     f"{dvc / r['run']:.1f}x faster", f"{r['run'] / floor:.1f}x", f"{r['plan'] / floor:.1f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_trees(specs: list[str]) -> list[tuple[str, Path]]:
    trees = [("this branch", ROOT)]
    for spec in specs:
        label, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--tree wants LABEL=PATH, got {spec!r}")
        trees.append((label, Path(path).resolve()))
    return trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="also time the bmbuild source tree at PATH (e.g. a worktree of main)")
    parser.add_argument("--profile", action="store_true", help="cProfile the no-op run and plan of the largest N")
    parser.add_argument("--keep", metavar="DIR", help="build the workspaces in DIR and keep them")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "noop.md"))
    args = parser.parse_args()
    trees = parse_trees(args.tree)
    dvc = dvc_executable()
    base = Path(args.keep or tempfile.mkdtemp(prefix="bmbuild-noop-"))
    base.mkdir(parents=True, exist_ok=True)
    # byte-compiled modules, as an installed package has them, kept outside the source trees
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    cache = base / "cache"
    rows: list[dict[str, object]] = []
    try:
        for count in sorted(args.sizes):
            ws = base / f"ws{count}"
            if not (ws / ".built").is_file():
                shutil.rmtree(ws, ignore_errors=True)
                make_workspace(ws, count)
                seconds = build(ws, count, bmbuild_env(ROOT, cache))
                (ws / ".built").touch()
                print(f"N={count}: built {count * STAGES} stages in {seconds:.1f}s", flush=True)
            dvc_dir = base / f"dvc{count}"
            if not (dvc_dir / "dvc.lock").is_file():
                shutil.rmtree(dvc_dir, ignore_errors=True)
                make_dvc_project(dvc_dir, count, dvc)
            row: dict[str, object] = {"count": count, "stages": count * STAGES}
            row["floor"] = median_seconds([sys.executable, "-c", "pass"], ws, os.environ.copy(), args.repeat)
            row["dvc"] = median_seconds([str(dvc), "repro"], dvc_dir, dvc_env(), args.repeat)
            for label, tree in trees:
                row[label] = time_bmbuild(tree, ws, cache, count, args.repeat)
            rows.append(row)
            print("\n".join(table([row], [label for label, _ in trees]).splitlines()[2:]), flush=True)
        if args.profile:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            count = max(args.sizes)
            for command, full in (("run", True), ("run", False), ("plan", False)):
                out = Path(args.out).with_name(f"noop-profile-{command}{'-full' if full else ''}.txt")
                profile(ROOT, base / f"ws{count}", cache, command, out, full)
                print(f"wrote {out}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    text = table(rows, [label for label, _ in trees])
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/noop.py --sizes " + " ".join(map(str, args.sizes))
    command += "".join(f" --tree {spec}" for spec in args.tree)
    out.write_text(
        f"# No-op build: N INT8 recipes x {STAGES} stages, everything up to date\n\n{text}\n\n"
        f"Median of {args.repeat} fresh processes per cell. `run vs dvc` is DVC's no-op `repro` time over "
        f"bmbuild's no-op `run` on the same number of chained stages; `/ floor` divides by `python -c pass`.\n"
        f"Machine: {os.cpu_count()} cores, shared with other jobs (absolute times are noisy; ratios within a row "
        f"were measured in the same minutes).\nCommand: `{command}`\n")


if __name__ == "__main__":
    main()
