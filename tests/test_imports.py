"""Planning must stay cheap: the CLI, `plan`, `validate` and a no-op `run` never import torch,
onnx or onnxruntime, nor dask unless a cluster build asks for it (each check runs in a fresh
interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import subprocess_env

HEAVY = ("torch", "onnx", "onnxruntime", "dask", "distributed")

PROBE = """
import json, sys
import bmbuild.cli
code = bmbuild.cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print("PROBE " + json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(cwd, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1][len("PROBE "):])


def test_importing_the_cli_imports_no_heavy_library(workspace):
    assert _probe(workspace) == {"code": 0, "heavy": []}


def test_plan_and_validate_import_no_heavy_library(workspace, write_recipe):
    recipe = write_recipe("tiny")
    assert _probe(workspace, "validate", recipe) == {"code": 0, "heavy": []}
    assert _probe(workspace, "plan", recipe) == {"code": 0, "heavy": []}
    assert _probe(workspace, "graph", recipe) == {"code": 0, "heavy": []}
    assert _probe(workspace, "status", recipe) == {"code": 0, "heavy": []}


def test_noop_run_imports_no_heavy_library(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0  # build it (imports torch in this process only)

    assert _probe(workspace, "run", recipe, "--plain") == {"code": 0, "heavy": []}
    assert _probe(workspace, "plan", recipe) == {"code": 0, "heavy": []}


def test_restore_from_cache_imports_no_heavy_library(workspace, write_recipe, run_bmbuild):
    import shutil

    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    shutil.rmtree(workspace / "build")
    assert _probe(workspace, "run", recipe, "--plain") == {"code": 0, "heavy": []}
