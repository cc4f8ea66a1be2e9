"""Reproducible bytes: every stage output is a function of its action key, not of where the
workspace or bmbuild live, nor of `-j` (in-process run vs a worker process with fewer threads).

The model is a recipe-relative `models/net.py` that imports a helper module from its folder, so
the traced call stacks hold both the compiled model file and a normally imported one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, build_outputs, deep_merge, read_report

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import BASE, MODELS, write_npz  # noqa: E402

NAME = "repro8"
NET = "from int8_models import tiny_classifier\n\n\ndef model():\n    return tiny_classifier()\n"
SCRIPTED_NET = """import torch
from int8_models import tiny_classifier


@torch.jit.script
def halve(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5


class Halved(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = tiny_classifier()

    def forward(self, x):
        return halve(self.body(x))


def model():
    return Halved()
"""
STAGES = ("trace", "compile_fp32", "calibrate", "quantize", "compile_int8")
# (no compile_fp32/repro8.fp32.onnx: onnxruntime leaves this exported graph as it is, so it is stored once)
STAGE_FILES = {"trace/repro8.pt", "compile_fp32/repro8.onnx",
               "calibrate/repro8_cali_table", "calibrate/repro8_cali_stats.json",
               "quantize/repro8.int8.onnx", "compile_int8/1b.compilation/repro8.int8.onnx"}


def make_clone(root: Path, net: str = NET) -> Path:
    """A workspace at `root` with the int8 recipe, its model folder and calibration data."""
    recipes = root / "recipes"
    (recipes / "models").mkdir(parents=True)
    shutil.copyfile(MODELS, recipes / "models" / MODELS.name)
    (recipes / "models" / "net.py").write_text(net)
    write_npz(recipes / "data" / "calib.npz")
    recipe = deep_merge({"name": NAME, **BASE}, {"source": {"model": "models/net.py:model"}})
    path = recipes / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def build(recipe: Path, workspace: Path, package_parent: Path, cache: Path, jobs: int,
          last_stage: str = "compile_int8") -> None:
    """`bmbuild run` in a subprocess importing bmbuild from `package_parent`, with its own cache;
    every stage up to `last_stage` executes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMBUILD_")}
    env.update(PYTHONPATH=str(package_parent), BMBUILD_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-m", "bmbuild", "run", str(recipe), "--plain", "-j", str(jobs),
                           "--stage", last_stage],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = read_report(NAME, workspace)["stages"]
    expected = STAGES[:STAGES.index(last_stage) + 1]
    assert {s: d["outcome"] for s, d in stages.items()} == dict.fromkeys(expected, "executed")


def archive_bytes(workspace: Path) -> bytes:
    """Every record of the traced file, uncompressed, concatenated."""
    with zipfile.ZipFile(workspace / "build" / NAME / "trace" / f"{NAME}.pt") as traced:
        return b"".join(traced.read(info) for info in traced.infolist())


def test_every_output_has_the_same_bytes_with_j1_and_j2_in_clones_at_different_paths(tmp_path):
    clone_a = tmp_path / "a"
    clone_b = tmp_path / "elsewhere" / "deeper" / "clone-b"
    installed = tmp_path / "site" / "lib"  # a second copy of bmbuild, imported from there
    shutil.copytree(ROOT / "bmbuild", installed / "bmbuild", ignore=shutil.ignore_patterns("__pycache__"))
    build(make_clone(clone_a), clone_a, ROOT, tmp_path / "cache-a", jobs=1)
    build(make_clone(clone_b), clone_b, installed, tmp_path / "cache-b", jobs=2)

    outputs_a, outputs_b = build_outputs(clone_a, NAME), build_outputs(clone_b, NAME)
    assert STAGE_FILES <= set(outputs_a)
    differing = sorted(name for name in outputs_a.keys() | outputs_b.keys()
                       if outputs_a.get(name) != outputs_b.get(name))
    assert differing == []  # manifests included: equal keys, equal metrics

    # no path of either clone, of either bmbuild or of the venv is left in the traced file
    content = archive_bytes(clone_b)
    for place in (tmp_path, ROOT, Path(sys.prefix), Path(sys.base_prefix)):
        assert str(place).encode() not in content, place
    assert b"bmbuild/" not in content and b"doit/" not in content


def test_traced_file_loads_runs_like_eager_and_keeps_portable_source_locations(tmp_path):
    import torch

    clone = tmp_path / "ws"
    build(make_clone(clone), clone, ROOT, tmp_path / "cache", jobs=1)
    module = torch.jit.load(str(clone / "build" / NAME / "trace" / f"{NAME}.pt"))
    from int8_models import tiny_classifier  # the fixture the clone's copy was made from

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(module(x), tiny_classifier().eval()(x))
    # TorchScript still reads the debug records: graph comments and error tracebacks name the
    # model's own lines (relative to the recipe) and torch's, and stop at the model's forward
    assert "# models/int8_models.py:" in str(module.graph)
    assert "# torch/nn/modules/linear.py:" in str(module.fc.graph)
    with pytest.raises(RuntimeError) as raised:
        module(torch.zeros(1, 4, 16, 16))  # 4 channels into a 3-channel convolution
    original = str(raised.value).split("original code (most recent call last):\n", 1)[1].split("RuntimeError")[0]
    frames = original.strip().splitlines()
    assert frames[0].startswith("torch/nn/modules/conv.py(")
    assert any(frame.startswith("models/int8_models.py(") and frame.endswith(": forward") for frame in frames)
    assert not any(frame.startswith("/") or "_trace.py" in frame for frame in frames)


def test_scripted_function_in_a_model_subfolder_traces_with_portable_records(tmp_path):
    """TorchScript compiles a @torch.jit.script function from its source file: the model file
    must be compiled under its real path, and that path is made relative in the saved records."""
    import torch

    clone = tmp_path / "ws"
    build(make_clone(clone, SCRIPTED_NET), clone, ROOT, tmp_path / "cache", jobs=1, last_stage="trace")
    content = archive_bytes(clone)
    assert str(tmp_path).encode() not in content and str(Path(sys.prefix)).encode() not in content
    assert b"models/net.py" in content  # the scripted function's source location, portable
    module = torch.jit.load(str(clone / "build" / NAME / "trace" / f"{NAME}.pt"))
    from int8_models import tiny_classifier

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(module(x), tiny_classifier().eval()(x) * 0.5)


def test_a_model_traced_after_others_in_one_process_has_the_bytes_it_has_alone(tmp_path):
    """TorchScript numbers the classes a process compiles again (`___torch_mangle_<n>`): a trace
    must not depend on what the process traced before it (a -j 1 zoo, reused pool or cluster workers)."""
    from conftest import BASE_RECIPE, TINY_MODELS

    alone, after = tmp_path / "alone", tmp_path / "after"
    build(make_clone(alone, SCRIPTED_NET), alone, ROOT, tmp_path / "cache-alone", jobs=1, last_stage="trace")
    recipe = make_clone(after, SCRIPTED_NET)
    shutil.copyfile(TINY_MODELS, recipe.parent / "tiny_models.py")
    for index, channels in enumerate((4, 6)):  # traced first: the same module classes, other attributes
        other = deep_merge({"name": f"a{index}", **BASE_RECIPE}, {"source": {"kwargs": {"channels": channels}}})
        (recipe.parent / f"a{index}.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    build(recipe.parent, after, ROOT, tmp_path / "cache-after", jobs=1, last_stage="trace")

    assert read_report("a1", after)["stages"]["trace"]["outcome"] == "executed"
    assert build_outputs(after, NAME) == build_outputs(alone, NAME)
