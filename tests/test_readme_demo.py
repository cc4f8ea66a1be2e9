"""The README names only files that are in the repository, and `make demo` installs only what the
demo needs (the reference toolchain, not the test tools or TVM)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

EXAMPLE_FOLDERS = ("build/", "zoo/", "reports/", "recipes/imported", ".bmbuild/", "calib/", "photos/", "info/")


def test_readme_names_only_files_of_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    paths = [m for m in re.findall(r"`([\w.-]+(?:/[\w.-]+)+)`", text)
             if re.search(r"\.(py|md|ya?ml|json|txt|toml|cfg)$", m) and not m.startswith(EXAMPLE_FOLDERS)]
    links = [m for m in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in m]
    assert paths, "the README names repository files (recipes/*.yaml, bmbuild/...)"
    missing = [p for p in paths + links if not (ROOT / p).exists()]
    assert not missing, f"README names files that are not in the repository: {missing}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("toolchain, extras", [("", "reference"), ("tvm", "tvm")])
def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path, toolchain: str, extras: str) -> None:
    result = subprocess.run(["make", "-n", "demo", f"VENV={tmp_path / 'venv'}", f"TOOLCHAIN={toolchain}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " install " in line and "pip" in line]
    assert installs and all(f"-e '.[{extras}]'" in line for line in installs), result.stdout
    assert "bmbuild run recipes/resnet.yaml" in result.stdout
