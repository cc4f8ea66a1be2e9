"""tpu-mlir's Python 3.10 environment: found where the user has one, or installed and managed by bmbuild.

tpu-mlir 1.30.2 needs CPython 3.10 and its own pinned packages, while bmbuild runs on its own Python:
bmbuild drives tpu-mlir's command-line entry points (model_transform, model_deploy, ...) in that
other environment, the way pre-commit manages hook environments.

Where the environment comes from, first match wins:
1. `$BMBUILD_TPU_MLIR`: an installation's root, its `bin/` or its python;
2. `bmbuild.yaml`: `toolchains: {tpu-mlir: {path: ...}}` (relative to the workspace root);
3. the managed environment `<toolchains dir>/tpu-mlir-<digest of the pins>`, created by
   `bmbuild toolchains install tpu-mlir`. The toolchains dir is `$BMBUILD_TOOLCHAINS_DIR`, else
   `<user cache dir>/bmbuild/toolchains`: outside any clone and outside the action cache, so CI runs
   and test sessions reuse one installation.

A managed environment is built in a hidden folder next to its final name and published by atomically
re-pointing a symlink to it (the venv never moves: its scripts hold absolute paths), under a file
lock, after the smoke test passed: a half-made environment is never used. The install writes
`bmbuild-toolchain.json` (versions), so detection and `versions()` read one small file and start no
process.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bmbuild.errors import ToolchainError

NAME = "tpu-mlir"
ENV_VAR = "BMBUILD_TPU_MLIR"
DIR_VAR = "BMBUILD_TOOLCHAINS_DIR"
REQUIREMENTS = Path(__file__).with_name("tpu_mlir_requirements.txt")
INFO_FILE = "bmbuild-toolchain.json"
TOOLS = ("model_transform", "model_deploy", "run_calibration", "model_runner", "model_tool")
# Bump when the install steps or fixes below change: part of the managed folder's name.
INSTALL_VERSION = "1"
# Ubuntu 22.04's glibc 2.35, shipped in the wheel and put on LD_LIBRARY_PATH by tpu_mlir/__init__.py:
# on a newer glibc (Debian 12) every child process then fails with "GLIBC_2.36 not found".
BUNDLED_GLIBC = ("libc.so.6", "libm.so.6", "libpthread.so.0")
# OnnxOpt.py and calibration/*.py `import torch` at module top without using it on the ONNX path;
# PyPI has only multi-GB CUDA builds of torch for cp310. This stand-in is placed after site-packages
# (a real torch wins) and raises ImportError on use, so onnxruntime_extensions treats torch as absent.
TORCH_STUB = '''"""Stand-in torch installed by bmbuild for tpu-mlir's ONNX path (no real torch in this env)."""
__bmbuild_torch_stub__ = True


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(f"torch.{name}: torch is not installed in this tpu-mlir environment (bmbuild stand-in)")
'''
STUB_FOLDER = "_bmbuild_stubs"
STUB_PTH = "zz_bmbuild_torch_stub.pth"
INSTALL_HINT = "bmbuild toolchains install tpu-mlir"
FIX_HINT = (f"run `{INSTALL_HINT}` (needs CPython 3.10: python3.10 on PATH or --python PATH), or point "
            f"${ENV_VAR} or bmbuild.yaml `toolchains: {{tpu-mlir: {{path: ...}}}}` at an existing tpu-mlir "
            "installation (its bin/ folder or its python)")


@dataclass(frozen=True)
class TpuMlirEnv:
    """A usable tpu-mlir installation: where its commands are and which version it is."""

    bin_dir: Path
    origin: str            # managed | $BMBUILD_TPU_MLIR | bmbuild.yaml
    version: str           # the tpu_mlir package version
    build: str = ""        # model_tool --version (e.g. v1.30.2-20260831), when known

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def lock_file(self) -> Path:
        """One lock per environment (tpu-mlir re-points symlinks inside its package per chip);
        kept in the toolchains dir, so a read-only installation works too."""
        digest = hashlib.sha256(str(self.bin_dir.resolve()).encode()).hexdigest()[:16]
        return toolchains_dir() / "locks" / f"tpu-mlir-{digest}.lock"


class EnvNotFound(ToolchainError):
    """No usable tpu-mlir environment; the message says why and how to fix it."""


# --- where things live -------------------------------------------------------------------------
def toolchains_dir() -> Path:
    """$BMBUILD_TOOLCHAINS_DIR, else <user cache dir>/bmbuild/toolchains (never the action cache)."""
    env = os.environ.get(DIR_VAR)
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bmbuild")) / "toolchains"


def pins_digest() -> str:
    """What the managed environment is made of: the pins and the install steps."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(f"install {INSTALL_VERSION}".encode())
    return digest.hexdigest()[:12]


def managed_path() -> Path:
    return toolchains_dir() / f"{NAME}-{pins_digest()}"


def pinned_version() -> str:
    """The tpu_mlir version the pins install (the requirements file's first requirement)."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{REQUIREMENTS} has no requirement")


def requirement_lines() -> list[str]:
    return [line.strip() for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


# --- finding an environment (cheap: file checks and one small JSON, no process) ----------------
def locate() -> TpuMlirEnv:
    """The environment to use, or EnvNotFound saying why not and what fixes it."""
    given = os.environ.get(ENV_VAR)
    if given:
        return user_env(Path(given).expanduser(), f"${ENV_VAR}")
    configured = configured_path()
    if configured is not None:
        return user_env(configured, "bmbuild.yaml toolchains.tpu-mlir.path")
    return managed_env()


def configured_path() -> Path | None:
    """bmbuild.yaml's `toolchains: {tpu-mlir: {path: ...}}` of the current workspace, if any."""
    from bmbuild.workspace import find_root, load_config

    root = find_root(Path.cwd())
    entry = load_config(root).toolchains.get(NAME) or {}
    path = entry.get("path")
    if not path:
        return None
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() else root / path


def managed_env() -> TpuMlirEnv:
    folder = managed_path()
    info = read_info(folder)
    if info is None:
        raise EnvNotFound(f"no tpu-mlir environment: {folder} is not installed; {FIX_HINT}")
    return TpuMlirEnv(folder / "bin", "managed", str(info.get("tpu_mlir", "unknown")), str(info.get("build", "")))


def read_info(folder: Path) -> dict[str, object] | None:
    """The install record of an environment; None when absent or unreadable (never trusted blindly)."""
    try:
        data = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("tpu_mlir"), str) else None


def user_env(path: Path, origin: str) -> TpuMlirEnv:
    """An installation the user points at: its root, its bin/ or a file in bin/ (its python)."""
    bin_dir = path.parent if path.is_file() else path / "bin" if (path / "bin").is_dir() else path
    if not path.exists():
        raise EnvNotFound(f"{origin} points at {path}, which does not exist; {FIX_HINT}")
    missing = [tool for tool in TOOLS if not os.access(bin_dir / tool, os.X_OK)]
    if missing:
        raise EnvNotFound(f"{origin} points at {path}, but {bin_dir} has no {', '.join(missing)}; {FIX_HINT}")
    info = read_info(bin_dir.parent)
    if info is not None:
        return TpuMlirEnv(bin_dir, origin, str(info["tpu_mlir"]), str(info.get("build", "")))
    return TpuMlirEnv(bin_dir, origin, dist_version(bin_dir.parent))


def dist_version(prefix: Path) -> str:
    """tpu_mlir's version from its dist-info folder under `prefix` (a venv or /usr/local)."""
    for pattern in ("lib/python3*/site-packages/tpu_mlir-*.dist-info",
                    "lib/python3*/dist-packages/tpu_mlir-*.dist-info"):
        for found in sorted(glob.glob(str(prefix / pattern))):
            return Path(found).name[len("tpu_mlir-"):-len(".dist-info")]
    return "unknown"


# --- installing the managed environment ---------------------------------------------------------
def find_python(given: str | None = None) -> str:
    """CPython 3.10: `given`, else python3.10 on PATH, else a pyenv 3.10 (pyenv's shim fails when
    3.10 is installed but not selected). Raises EnvNotFound saying what was tried."""
    if given:
        candidates = [given]
    else:
        pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
        candidates = [shutil.which("python3.10") or "",
                      *sorted(glob.glob(f"{pyenv_root}/versions/3.10*/bin/python3.10"), reverse=True)]
    tried = []
    for candidate in filter(None, candidates):
        if is_python310(candidate):
            return candidate
        tried.append(candidate)
    where = f"tried {', '.join(tried)}" if tried else "none on PATH or in pyenv"
    raise EnvNotFound(f"tpu-mlir {pinned_version()} needs CPython 3.10 (its extension modules are cpython-310): "
                      f"{where}; install Python 3.10 or pass `{INSTALL_HINT} --python PATH`")


def is_python310(python: str) -> bool:
    """Runs, is 3.10, and has the standard library pieces a venv and tpu-mlir need."""
    probe = "import sys, ctypes, ssl, venv, sqlite3; print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "3.10"


def install(python: str | None = None, say: Callable[[str], None] = print) -> TpuMlirEnv:
    """Create, fix, smoke-test and publish the managed environment; a no-op when it exists."""
    from filelock import FileLock

    root = toolchains_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = managed_path()
    with FileLock(str(root / f"{final.name}.lock")):
        if read_info(final) is not None:
            say(f"tpu-mlir environment already installed: {final}")
            return managed_env()
        interpreter = find_python(python)
        remove_partials(root, final)
        build = root / f".{final.name}-{uuid.uuid4().hex[:8]}"
        say(f"installing tpu-mlir {pinned_version()} with {interpreter} into {build} ...")
        try:
            create(interpreter, build)
            apply_fixes(build)
            info = smoke_test(build)
            (build / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            publish(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    say(f"installed tpu-mlir {info['tpu_mlir']} ({info['build']}) at {final}")
    return managed_env()


def remove_partials(root: Path, final: Path) -> None:
    """Folders of killed installs of this environment (held lock: nobody is building them)."""
    current = os.path.realpath(final) if final.is_symlink() else None
    if final.exists() and not final.is_symlink():
        shutil.rmtree(final, ignore_errors=True)   # not made by this code: never trusted
    elif final.is_symlink() and not final.exists():
        final.unlink()
    for leftover in root.glob(f".{final.name}-*"):
        if str(leftover.resolve()) != current:
            if leftover.is_symlink() or leftover.is_file():
                leftover.unlink()
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def publish(build: Path, final: Path) -> None:
    """Point `final` at `build` in one atomic rename (a symlink swap: the venv stays where it was built)."""
    link = build.parent / f".{final.name}-link-{uuid.uuid4().hex[:8]}"
    os.symlink(build.name, link)
    os.replace(link, final)


def _run(argv: list[str], what: str) -> str:
    """Run an install step; its output goes to the terminal and, on failure, into the error."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise ToolchainError(f"tpu-mlir install: {what} failed", " ".join(argv), done.returncode, tail)
    return done.stdout


def create(python: str, build: Path) -> None:
    """A venv with tpu_mlir (no deps: its declared pycocotools has no cp310 wheel) and the pinned closure."""
    _run([python, "-m", "venv", str(build)], "creating the venv")
    pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--progress-bar", "off", "--no-input"]
    lines = requirement_lines()
    _run([*pip, "--no-deps", lines[0]], f"pip install {lines[0]}")
    deps = build / "requirements-deps.txt"
    deps.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    _run([*pip, "--only-binary=:all:", "-r", str(deps)], "pip install of the pinned dependencies")


def site_packages(prefix: Path) -> Path:
    found = sorted(glob.glob(str(prefix / "lib" / "python3*" / "site-packages")))
    if not found:
        raise ToolchainError(f"tpu-mlir install: no site-packages under {prefix}")
    return Path(found[0])


def apply_fixes(build: Path) -> None:
    """Move the bundled glibc aside; add the torch stand-in after site-packages when no torch is installed."""
    packages = site_packages(build)
    third_party = packages / "tpu_mlir" / "lib" / "third_party"
    disabled = packages / "tpu_mlir" / "lib" / "third_party_glibc_disabled"
    for name in BUNDLED_GLIBC:
        if (third_party / name).exists():
            disabled.mkdir(exist_ok=True)
            shutil.move(str(third_party / name), str(disabled / name))
    if not (packages / "torch").exists():
        stub = packages / STUB_FOLDER / "torch"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text(TORCH_STUB, encoding="utf-8")
        # .pth lines are relative to site-packages and appended to sys.path after it
        (packages / STUB_PTH).write_text(STUB_FOLDER + "\n", encoding="utf-8")


def smoke_test(build: Path) -> dict[str, str]:
    """Every entry point starts (glibc fix), the ONNX path imports (torch stand-in); the versions."""
    python = str(build / "bin" / "python")
    probe = ("import importlib.metadata as m, sys, onnx, onnxruntime, tpu_mlir; "
             "print(m.version('tpu_mlir'), sys.version.split()[0])")
    for tool in ("model_transform", "model_deploy", "run_calibration"):
        _run([str(build / "bin" / tool), "--help"], f"smoke test: {tool} --help")
    version, py_version = _run([python, "-c", probe], "smoke test: import tpu_mlir").split()[-2:]
    build_version = _run([str(build / "bin" / "model_tool"), "--version"], "smoke test: model_tool --version")
    build_line = (build_version.strip().splitlines() or ["unknown"])[-1].strip()
    return {"tpu_mlir": version, "build": build_line, "python": py_version, "pins": pins_digest(),
            "installer": f"bmbuild install {INSTALL_VERSION}"}


def main_install(python: str | None) -> int:
    """`bmbuild toolchains install tpu-mlir`: exit 0 when the environment is there afterwards."""
    install(python, say=lambda text: print(text, file=sys.stderr))
    return 0
