"""Planning must stay cheap: the CLI, `plan`, `validate` and a no-op `run` never import torch,
onnx or onnxruntime, nor dask unless a cluster build asks for it; for an INT8 recipe calibrating
on images, `plan`, `status` and a no-op `run` import no numpy either (each check runs in a fresh
interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import subprocess_env

HEAVY = ("torch", "onnx", "onnxruntime", "dask", "distributed")
WITH_NUMPY = (*HEAVY, "numpy")  # INT8 planning too: the calibration data is listed, not read

PROBE = """
import json, sys
heavy = json.loads(sys.argv.pop(1))
import bmbuild.cli
code = bmbuild.cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print("PROBE " + json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}))
"""


def _probe(cwd, *args, heavy: tuple[str, ...] = HEAVY) -> dict:
    """Runs the CLI with `args` in a fresh interpreter: its exit code and the `heavy` modules it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(heavy), *map(str, args)], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
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


def _int8_recipe(workspace, write_recipe):
    """An INT8 recipe calibrating on a folder of PNG images (the image decoding path)."""
    from PIL import Image

    folder = workspace / "recipes" / "data" / "images"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 7 * i)).save(folder / f"img_{i}.png")
    return write_recipe("tiny8", prec="INT8", fp32={"cmp": False},
                        calibration={"data": "data/images", "samples": 4, "method": "minmax", "bins": 128,
                                     "preprocess": {"mean": [127.5], "scale": 0.0078125}},
                        int8={"cmp": False})


def test_plan_and_status_of_an_int8_recipe_import_no_heavy_library(workspace, write_recipe):
    recipe = _int8_recipe(workspace, write_recipe)

    assert _probe(workspace, "plan", recipe, heavy=WITH_NUMPY) == {"code": 0, "heavy": []}
    assert _probe(workspace, "status", recipe, heavy=WITH_NUMPY) == {"code": 0, "heavy": []}


def test_noop_run_of_an_int8_recipe_imports_no_heavy_library(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _int8_recipe(workspace, write_recipe)
    assert run_bmbuild("run", recipe, "--plain")[0] == 0  # build it (imports torch in this process only)
    assert set(outcomes("tiny8").values()) == {"executed"}

    assert _probe(workspace, "run", recipe, "--plain", heavy=WITH_NUMPY) == {"code": 0, "heavy": []}
    assert set(outcomes("tiny8").values()) == {"up-to-date"}
    for image in (workspace / "recipes" / "data" / "images").iterdir():  # new mtimes: the keys are recomputed
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert _probe(workspace, "run", recipe, "--plain", heavy=WITH_NUMPY) == {"code": 0, "heavy": []}
    assert set(outcomes("tiny8").values()) == {"up-to-date"}
    assert _probe(workspace, "plan", recipe, heavy=WITH_NUMPY) == {"code": 0, "heavy": []}
    assert _probe(workspace, "status", recipe, heavy=WITH_NUMPY) == {"code": 0, "heavy": []}
