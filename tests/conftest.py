"""Shared fixtures: an isolated workspace and cache per test, tiny recipes, the CLI in-process.

Every test that builds gets
- its own workspace (a tmp folder, chdir'ed into) with `recipes/tiny_models.py` copied in,
- its own action cache (`BMBUILD_CACHE_DIR`),
and reads outcomes from `build/<name>/report.json`, never from "it ran".
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_MODELS = FIXTURES / "tiny_models.py"

BASE_RECIPE: dict[str, Any] = {
    "toolchain": "reference",
    "source": {"framework": "pytorch", "model": "tiny_models.py:tiny_cnn", "kwargs": {}},
    "shapes": [[1, 3, 8, 8]],
    "fp32": {"opt": 1, "cmp_samples": 1},
}


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` merged into a copy of `base`; a value of None removes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_sha256(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `folder` (manifests included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def build_outputs(root: Path, name: str) -> dict[str, str]:
    """Digests of every stage output of recipe `name` (logs, report and temp folders left out)."""
    base = Path(root) / "build" / name
    out = {}
    for stage_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name not in ("logs", ".tmp")):
        for rel, digest in tree_sha256(stage_dir).items():
            out[f"{stage_dir.name}/{rel}"] = digest
    return out


@pytest.fixture(autouse=True)
def no_managed_toolchains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tpu-mlir environment unless a test asks for the shared one (tests/test_tpu_mlir.py): with
    one installed, `toolchain: auto` would pick tpu-mlir and change what other tests build."""
    monkeypatch.setenv("BMBUILD_TOOLCHAINS_DIR", str(tmp_path / "toolchains"))
    monkeypatch.delenv("BMBUILD_TPU_MLIR", raising=False)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace folder (the cwd) with its own cache; recipes go in `recipes/`."""
    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    shutil.copyfile(TINY_MODELS, root / "recipes" / "tiny_models.py")
    cache = tmp_path / "cache"
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(cache))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def cache_dir(workspace: Path) -> Path:
    return Path(os.environ["BMBUILD_CACHE_DIR"])


@pytest.fixture
def write_recipe(workspace: Path) -> Callable[..., Path]:
    """write_recipe(name, folder="recipes", **overrides) -> path of `<folder>/<name>.yaml`.

    Overrides are deep-merged into a tiny 2-conv recipe (None removes a key).
    """

    def write(name: str, folder: str | Path = "recipes", **overrides: Any) -> Path:
        data = deep_merge({"name": name, **BASE_RECIPE}, overrides)
        target_dir = workspace / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        if not (target_dir / "tiny_models.py").exists():
            shutil.copyfile(TINY_MODELS, target_dir / "tiny_models.py")
        path = target_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def write_text_recipe(workspace: Path) -> Callable[..., Path]:
    """write_text_recipe(filename, text) -> path; for tests that pin exact line numbers."""

    def write(filename: str, text: str, folder: str | Path = "recipes") -> Path:
        target_dir = workspace / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        if not (target_dir / "tiny_models.py").exists():
            shutil.copyfile(TINY_MODELS, target_dir / "tiny_models.py")
        path = target_dir / filename
        path.write_text(text)
        return path

    return write


@pytest.fixture
def run_bmbuild(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """run_bmbuild(*args) -> (exit code, stdout, stderr), running the CLI in this process."""
    from bmbuild.cli import main

    def run(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def read_report(name: str, root: Path | None = None) -> dict[str, Any]:
    return json.loads(((root or Path.cwd()) / "build" / name / "report.json").read_text())


@pytest.fixture
def outcomes() -> Callable[..., dict[str, str]]:
    """outcomes(name) -> {stage: outcome} from build/<name>/report.json of the current workspace."""

    def get(name: str, root: Path | None = None) -> dict[str, str]:
        report = read_report(name, root)
        return {stage: data["outcome"] for stage, data in report["stages"].items()}

    return get


def bmbuild_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "bmbuild", *map(str, args)]


def subprocess_env() -> dict[str, str]:
    """The current environment (BMBUILD_CACHE_DIR included) with bmbuild importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_subprocess(*args: Any, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bmbuild_command(*args), cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def pytest_configure(config: pytest.Config) -> None:
    # the TorchScript ONNX exporter warns on every export of a traced module; it is expected here
    config.addinivalue_line("filterwarnings", "ignore:no signature found for <torch.ScriptMethod:UserWarning")
    # the branchy fixture model is meant to break tracing
    config.addinivalue_line("filterwarnings", "ignore:Converting a tensor to a Python boolean")


def plan_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """`bmbuild plan` output -> {node id: (status, reason)}; rows are '  <status:14> <id> <reason>'."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("  ") and len(line) > 17:
            status = line[2:16].strip()
            node_id, _, reason = line[17:].strip().partition(" ")
            rows[node_id] = (status, reason.strip())
    return rows
