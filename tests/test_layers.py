"""The layering holds: each layer of bmbuild imports only the layers below it, stages and
toolchains never import each other, and the reports never import the stages (the import-linter
contracts in pyproject.toml, checked on the import graph, indirect imports included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("importlinter", reason="import-linter is a test dependency (pip install -e '.[test]')")

LINT = ("import sys\nfrom importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the bmbuild package below `root`, with `root`'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_import_points_down():
    done = lint(ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("toolchains/reference.py", "from bmbuild.stages.trace import STAGE"),
    ("stages/quantize.py", "from bmbuild.toolchains import reference"),
    ("artifacts.py", "from bmbuild.stages import all_stages"),
    ("report/html.py", "from bmbuild.executor import Executor"),
])
def test_an_import_pointing_up_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(ROOT / "bmbuild", tmp_path / "bmbuild", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "bmbuild" / module
    target.write_text(target.read_text() + f"\n{upward}  # noqa\n")

    done = lint(tmp_path)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "1 broken" in done.stdout, done.stdout
