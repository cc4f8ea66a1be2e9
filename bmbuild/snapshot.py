""""Nothing changed" from stat calls alone, before any recipe is loaded (as make answers it).

After a `run` in which every selected stage was up to date, bmbuild remembers, for that selection
(recipe paths, stages, toolchain, shard, cache/build/remote options, working folder), the stat
signature (size, mtime_ns, ctime_ns, inode) of everything that decided it:
- every recipe file, every defaults.yaml above it, bmbuild.yaml (and where it could appear),
- every external input (model source and its local imports, weights, calibration and evaluation
  data) and the folders above them up to the workspace root or the dataset folder,
- every folder below a scanned recipe folder (a new recipe changes its folder's mtime),
- every published output and manifest, and each recipe's report.json,
- bmbuild's own source files, the Python search path and PATH folders (an installed package or
  tool changes its folder), the cache's toolchain folder;
plus the interpreter, the search path, and the environment variables that reach a key or pick
a folder; and the lines `run`, `plan` and `status` printed. The next `run`/`plan`/`status` of the
same selection stats those paths first: when every signature matches, it prints the remembered
lines without importing pydantic or doit; when any differs it does the full check, as always.

It is never written when a toolchain other than `reference` was chosen (their versions come from
commands and files not tracked here), when a scanned folder holds the build, state or cache folder,
or when any tracked entry changed after the run started (its ctime is too recent: the content the
run decided on may not be the one stat sees). Any run that has work to do deletes it first, so a
failed or killed run never leaves one behind. Read back, it is untrusted: anything malformed is
ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from bmbuild import __version__
from bmbuild.atomic import atomic_write_bytes

FORMAT = 1
FILE = "noop-snapshot.json"
CLOCK = "noop-clock"
MAX_SELECTIONS = 8
# File-system timestamps come from a coarse clock: anything changed this close to the start of
# the run that decided is not trusted.
MARGIN_NS = 20_000_000
WORKSPACE_FILES = ("bmbuild.yaml", "bmbuild.yml")  # as bmbuild.workspace (importing it costs pydantic)
STATE_DIR = ".bmbuild"
DEFAULTS_FILES = ("defaults.yaml", "defaults.yml")  # as bmbuild.compose
# Environment variables that decide folders, interpreters or keys (every BMBUILD_* as well).
ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH", "HOME",
       "XDG_CACHE_HOME")
SELECTION = ("paths", "stage", "toolchain", "shard", "cache_dir", "build_dir", "remote_cache")
# Options that change only how a no-op looks, never what it decides; the replay reproduces them.
DISPLAY = ("command", "func", "plain", "jobs", "keep_going")
# ... and options the replay reproduces only at these values.
REPLAYED = {"color": ("auto", "never")}

Signature = list[int] | None


# --- what a command line selects --------------------------------------------------------------

def selection_key(args: Any, cwd: Path) -> str | None:
    """A digest of what `args` select, or None when the command may do more than a no-op check
    or print otherwise (--force, --dry-run, --report-dir, --json, -q, -v, --color always, or any
    option this module does not know, when set)."""
    for name, value in vars(args).items():
        if name in REPLAYED and value not in REPLAYED[name]:
            return None
        if value and name not in SELECTION + DISPLAY + tuple(REPLAYED):
            return None
    chosen = {name: getattr(args, name, None) for name in SELECTION}
    chosen["paths"] = [str(Path(p).absolute()) for p in chosen["paths"] or []]
    document = json.dumps([FORMAT, __version__, str(cwd), chosen], sort_keys=True, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


def find_root(start: Path) -> tuple[Path, list[Path]]:
    """The workspace root (as `bmbuild.workspace.find_root`), and every place a bmbuild.yaml
    would have changed that answer."""
    looked: list[Path] = []
    for folder in (start, *start.parents):
        for name in WORKSPACE_FILES:
            looked.append(folder / name)
            if (folder / name).is_file():
                return folder, looked
    return start, looked


def environment(names: Iterable[str] = ()) -> dict[str, str | None]:
    """The variables in `names`, ENV and every BMBUILD_* one, with their values (None: unset)."""
    names = set(names) | set(ENV) | {name for name in os.environ if name.startswith("BMBUILD_")}
    return {name: os.environ.get(name) for name in sorted(names)}


def interpreter() -> list[Any]:
    return [sys.executable, sys.version, list(sys.path)]


# --- stat signatures ----------------------------------------------------------------------------

def signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def all_match(stats: dict[str, Any]) -> bool:
    return all(signature(path) == expected for path, expected in stats.items())


# --- the fast path ------------------------------------------------------------------------------

def _load(state_dir: Path) -> dict[str, Any]:
    """The selections remembered in `state_dir` ({} when none, or when the file is not ours)."""
    try:
        data = json.loads((state_dir / FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("selections"), dict):
        return {}
    return data["selections"]


def _valid(entry: Any, command: str) -> bool:
    """The shape the fast path relies on (the file is untrusted input). A malformed signature
    needs no check: it never equals a real one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("stats"), dict):
        return False
    lines = entry.get("lines")
    lines = lines.get(command) if isinstance(lines, dict) else None
    return (isinstance(lines, list) and all(isinstance(x, str) for x in lines)
            and type(entry.get("stages")) is int)


def lookup(args: Any, cwd: Path | None = None) -> dict[str, Any] | None:
    """The remembered no-op answer for `args` if nothing it depends on changed since, else None."""
    cwd = cwd or Path.cwd()
    key = selection_key(args, cwd)
    if key is None:
        return None
    root, _ = find_root(cwd)
    entry = _load(root / STATE_DIR).get(key)
    if not _valid(entry, args.command):
        return None
    env = entry.get("env")
    if entry.get("interpreter") != interpreter() or not isinstance(env, dict) or env != environment(env):
        return None
    return entry if all_match(entry["stats"]) else None


# --- remembering --------------------------------------------------------------------------------

def clock(cwd: Path | None = None) -> int:
    """When a run starts, in the clock of the files it reads: the earlier of this machine's clock
    and the mtime the state folder's file system gives a file touched now."""
    now = time.time_ns()
    state_dir = find_root(cwd or Path.cwd())[0] / STATE_DIR
    if state_dir.is_dir():
        probe = state_dir / CLOCK
        try:
            probe.touch()
            os.utime(probe)
            now = min(now, probe.stat().st_mtime_ns)
        except OSError:
            pass
    return now


def forget(state_dir: Path) -> None:
    """Drop every remembered no-op: called before anything is run, restored or removed."""
    try:
        (state_dir / FILE).unlink()
    except FileNotFoundError:
        pass


def walk_scanned(top: Path, root: Path) -> list[Path]:
    """What recipe discovery below `top` depends on: every folder (a new file changes its mtime),
    every YAML file (one gains a top-level `source:` and is a recipe) and the defaults files above
    `top` up to the workspace root (one gains `source:` and a `name:`-only YAML file is a recipe)."""
    found: list[Path] = []
    for dirpath, _, filenames in os.walk(top):
        found.append(Path(dirpath))
        found += [Path(dirpath) / name for name in filenames if name.endswith((".yaml", ".yml"))]
    for folder in (top, *top.parents):
        found += [folder / name for name in DEFAULTS_FILES]
        if folder == root:
            break
    return found


def overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def folders_above(file: Path, stops: Iterable[Path]) -> list[Path]:
    """The folders holding `file`, up to the first of `stops` (included); just its parent when
    no stop is above it."""
    stops = set(stops)
    above = [p for p in file.parents if p in stops]
    if not above:
        return [file.parent]
    found = []
    for folder in file.parents:
        found.append(folder)
        if folder in stops:
            break
    return found


def package_files() -> list[Path]:
    """bmbuild's own source: a change there may change any key or decision."""
    top = Path(__file__).resolve().parent
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        found.append(Path(dirpath))
        found += [Path(dirpath) / name for name in filenames if not name.endswith((".pyc", ".pyo"))]
    return found


def remember(args: Any, since_ns: int, inputs: Iterable[Path], anchors: Iterable[Path],
             outputs: Iterable[Path], reports: Iterable[Path], build_dirs: Iterable[Path],
             lines: dict[str, list[str]], stages: int, env_names: Iterable[str] = (),
             cwd: Path | None = None) -> bool:
    """Remember that the selection of `args` was a complete no-op; False when it must not be.

    `inputs` are the files and folders the decision read, `anchors` the folders that bound the
    search for where new inputs could appear (the workspace root, dataset folders), `outputs`
    the published files and manifests, `reports` files this run has just written, `build_dirs`
    the build, state and cache folders (no scanned folder may hold them), `env_names` the
    environment variables that are part of every key. `since_ns` is `clock()` taken before the
    run read anything.
    """
    cwd = cwd or Path.cwd()
    key = selection_key(args, cwd)
    if key is None:
        return False
    root, looked = find_root(cwd)
    anchors = {Path(a) for a in anchors} | {root}
    scanned: list[Path] = []
    for raw in args.paths:
        path = Path(raw).absolute()
        if path.is_dir():
            if any(overlaps(path, Path(b)) for b in build_dirs):
                return False
            scanned += walk_scanned(path, root)
    tracked: set[Path] = set(scanned) | set(looked) | set(package_files())
    for item in inputs:
        item = Path(item).absolute()
        tracked.add(item)
        tracked.update(folders_above(item, anchors))
    tracked.update(Path(p) for p in sys.path if p)
    tracked.update(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    tracked.update(Path(o) for o in outputs)
    stats = {str(path): signature(str(path)) for path in sorted(tracked)}
    if any(sig is not None and sig[2] >= since_ns - MARGIN_NS for sig in stats.values()):
        return False  # changed while the run was deciding: the next no-op will remember
    stats.update({str(Path(r)): signature(str(r)) for r in reports})
    entry = {"interpreter": interpreter(), "env": environment(env_names), "stats": stats, "lines": lines,
             "stages": stages, "written": time.time()}
    state_dir = root / STATE_DIR
    selections = _load(state_dir)
    selections.pop(key, None)
    while len(selections) >= MAX_SELECTIONS:
        selections.pop(next(iter(selections)))
    selections[key] = entry
    atomic_write_bytes(state_dir / FILE, json.dumps({"format": FORMAT, "selections": selections}).encode())
    return True
