"""Calibration data through the int8 stages: bad data fails cleanly, held-out samples are never
calibrated on, and the dataset's content is keyed through the stat cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import SHAPE, Int8Workspace, samples, write_npz, write_pngs, ws8  # noqa: E402,F401

IMAGES = {"data": "data/images", "key": None, "samples": 16,
          "preprocess": {"mean": [127.5], "scale": 0.0078125}}


def failed(ws: Int8Workspace, code: int, out: str, err: str, stage: str, *needles: str) -> None:
    text = out + err
    assert code == 2, text  # bad data is a user error, also when a stage finds it (errors.py: exit codes)
    assert ws.outcomes()[stage] == "failed", ws.outcomes()
    for needle in needles:
        assert needle in text, (needle, text)
    assert "Traceback" not in text


# --- bad calibration data --------------------------------------------------------------------------

def test_corrupt_jpeg_fails_calibrate_naming_the_file(ws8: Int8Workspace) -> None:
    folder = ws8.recipes / "data" / "images"
    write_pngs(folder, 15)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    # no held-out samples: every file is a calibration sample, so calibrate must read the bad one
    recipe = ws8.recipe(calibration=IMAGES, int8={"cmp": False})
    code, out, err = ws8.build(recipe)
    failed(ws8, code, out, err, "calibrate", "broken.jpg", "cannot decode image")


def test_wrong_shape_npy_fails_naming_the_file(ws8: Int8Workspace) -> None:
    folder = ws8.recipes / "data" / "arrays"
    folder.mkdir()
    for i, x in enumerate(samples(15)):
        np.save(folder / f"s{i:02d}.npy", x)
    np.save(folder / "s99_small.npy", np.zeros((3, 8, 8), np.float32))
    recipe = ws8.recipe(calibration={"data": "data/arrays", "key": None}, int8={"cmp": False})
    code, out, err = ws8.build(recipe)
    failed(ws8, code, out, err, "calibrate", "s99_small.npy", "found shape (3, 8, 8)",
           f"expected one sample of shape {SHAPE}")


def refused_before_any_stage(ws: Int8Workspace, code: int, out: str, err: str, *needles: str) -> None:
    """The run stopped before tracing (a recipe error: exit 2), naming the recipe's file and key."""
    text = out + err
    assert code == 2, text
    assert not (ws.root / "build" / "tiny8").exists(), "a stage ran"
    for needle in needles:
        assert needle in text, (needle, text)
    assert "Traceback" not in text


def test_too_few_samples_fails_before_any_stage_naming_the_key(ws8: Int8Workspace) -> None:
    write_npz(ws8.recipes / "data" / "small.npz", 10)
    recipe = ws8.recipe(calibration={"data": "data/small.npz"})  # 16 + 8 held out needed
    code, out, err = ws8.build(recipe)
    refused_before_any_stage(ws8, code, out, err, "tiny8.yaml:", "calibration.samples: only 10 samples",
                             "small.npz", "calibration.samples (16) + int8.cmp_samples (8")


def test_wrong_stacked_shape_fails_before_any_stage_naming_the_file(ws8: Int8Workspace) -> None:
    path = ws8.recipes / "data" / "flat.npz"
    np.savez(path, x=np.zeros((30, 3, 16), np.float32))
    recipe = ws8.recipe(calibration={"data": "data/flat.npz"})
    code, out, err = ws8.build(recipe)
    refused_before_any_stage(ws8, code, out, err, "calibration.data:", "flat.npz", "[30, 3, 16]", "[3, 16, 16]")


def test_nan_in_calibration_data_names_the_sample(ws8: Int8Workspace) -> None:
    x = samples(24)
    x[:, 0, 0, 0] = np.nan
    np.savez(ws8.recipes / "data" / "nan.npz", x=x)
    recipe = ws8.recipe(calibration={"data": "data/nan.npz"})
    code, out, err = ws8.build(recipe)
    failed(ws8, code, out, err, "calibrate", "nan.npz", "NaN")


# --- held-out samples -----------------------------------------------------------------------------

def _recipe(data: Path, samples: int, cmp_samples: int, cmp: bool = True, seed: int = 0):
    from bmbuild.recipe import Recipe

    return Recipe.model_validate({
        "name": "split", "source": {"framework": "onnx", "model": "m.onnx"}, "shapes": [[1, *SHAPE]],
        "prec": "INT8", "calibration": {"data": str(data), "samples": samples, "seed": seed},
        "int8": {"cmp": cmp, "cmp_samples": cmp_samples}})


def test_held_out_samples_are_disjoint_from_calibration_samples(tmp_path: Path) -> None:
    from bmbuild.calib.feeds import split

    data = write_npz(tmp_path / "d.npz", 40)
    calib, holdout = split(_recipe(data, 24, 12))
    assert len(calib) == 24 and len(holdout) == 12
    assert not {r.index for r in calib} & {r.index for r in holdout}
    assert split(_recipe(data, 24, 12)) == (calib, holdout)  # deterministic
    # more calibration samples never move a held-out one into calibration
    calib2, holdout2 = split(_recipe(data, 28, 12))
    assert holdout2 == holdout and not set(calib2) & set(holdout2)
    # a different seed picks different, still disjoint, samples
    calib3, holdout3 = split(_recipe(data, 24, 12, seed=1))
    assert holdout3 != holdout and not set(calib3) & set(holdout3)
    # no comparison: nothing held out
    assert split(_recipe(data, 24, 12, cmp=False))[1] == []


def test_held_out_folder_samples_are_disjoint(tmp_path: Path) -> None:
    from bmbuild.calib.feeds import split

    folder = tmp_path / "arrays"
    folder.mkdir()
    for i, x in enumerate(samples(30)):
        np.save(folder / f"{i:02d}.npy", x)
    calib, holdout = split(_recipe(folder, 20, 10))
    assert {r.path for r in calib} | {r.path for r in holdout} == set(folder.glob("*.npy"))
    assert not {r.path for r in calib} & {r.path for r in holdout}


def test_compile_int8_compares_on_held_out_samples_only(ws8: Int8Workspace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on the batches the int8 stages read: calibrate reads the calibration split only,
    compile_int8's comparison the held-out split only."""
    from bmbuild.toolchains import reference_int8

    seen: dict[str, set[int]] = {}
    real = reference_int8.batches

    def spy(ctx, refs, batch_size):
        seen.setdefault(ctx.out_dir.name.split("-")[0], set()).update(r.index for r in refs)
        return real(ctx, refs, batch_size)

    monkeypatch.setattr(reference_int8, "batches", spy)
    recipe = ws8.recipe()
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    assert len(seen["calibrate"]) == 16 and len(seen["compile_int8"]) == 8
    assert not seen["calibrate"] & seen["compile_int8"]


# --- the dataset is keyed by content, through the stat cache -----------------------------------------

def _decide(node_stage: str, recipe: Path):
    """A fresh executor's decision for one node, and how many files it had to read."""
    from bmbuild.executor import Executor
    from bmbuild.project import prepare
    from bmbuild.workspace import Workspace

    build = prepare([str(recipe)], Workspace.at())
    executor = Executor(build.workspace)
    try:
        node = next(n for n in build.nodes if n.stage.name == node_stage)
        decision = executor.decide(node)
        return decision, executor.stat.files_hashed
    finally:
        executor.stat.close()


def test_unchanged_image_folder_is_not_read_again_and_an_edit_reruns_calibrate(ws8: Int8Workspace) -> None:
    from bmbuild.executor import Status

    folder = ws8.recipes / "data" / "images"
    images = write_pngs(folder, 120)
    recipe = ws8.recipe(calibration=IMAGES)
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err

    for stage in ("calibrate", "compile_int8"):  # both are keyed on the whole folder
        decision, hashed = _decide(stage, recipe)
        assert decision.status is Status.UP_TO_DATE, decision.reason
        assert hashed == 0, f"{stage}: {hashed} files were read to decide"

    # one image gets new pixels (and, as any edit does, a new mtime)
    from PIL import Image

    target = images[37]
    before = target.stat().st_mtime_ns
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(target)
    os.utime(target, ns=(before + 10**9, before + 10**9))
    decision, hashed = _decide("calibrate", recipe)
    assert decision.status is Status.RUN and "data/images/img_037.png changed" in decision.reason
    assert hashed == 1  # only the edited file was read

    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["calibrate"] == "executed" and got["trace"] == got["compile_fp32"] == "up-to-date"


def test_touching_images_without_changing_them_reruns_nothing(ws8: Int8Workspace) -> None:
    folder = ws8.recipes / "data" / "images"
    images = write_pngs(folder, 30)
    recipe = ws8.recipe(calibration=IMAGES)
    assert ws8.build(recipe)[0] == 0
    for path in images[:5]:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    assert set(ws8.outcomes().values()) == {"up-to-date"}
