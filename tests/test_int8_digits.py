"""End to end: the real example recipe recipes/digits.yaml, fp32 and int8, in a copy of recipes/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_digits_recipe_int8_top1_within_one_point_of_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bmbuild.cli import main

    shutil.copytree(ROOT / "recipes", tmp_path / "recipes",
                    ignore=shutil.ignore_patterns("__pycache__", "photos"))
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "recipes/digits.yaml", "--plain"])
    out = capsys.readouterr().out
    assert code == 0, out

    report = json.loads((tmp_path / "build" / "digits_cnn" / "report.json").read_text())
    stages = report["stages"]
    assert report["ok"] and report["prec"] == "INT8"
    assert all(stages[s]["outcome"] == "executed" for s in
               ("trace", "compile_fp32", "calibrate", "quantize", "compile_int8"))
    assert stages["calibrate"]["metrics"]["method"] == "kl"
    assert stages["calibrate"]["metrics"]["samples"] == 200
    metrics = stages["compile_int8"]["metrics"]
    evaluation = metrics["eval"]
    assert evaluation["samples"] == 360 and evaluation["fp32"] > 0.95
    assert abs(evaluation["fp32"] - evaluation["int8"]) * 100 <= 1.0
    for label in ("b1/output", "b16/output"):
        assert metrics["cmp"][label]["cos"] >= 0.95 and metrics["cmp"][label]["top1"] >= 0.95
    for batch in (1, 16):
        assert (tmp_path / "build" / "digits_cnn" / "compile_int8" / f"{batch}b.compilation"
                / "digits_cnn.int8.onnx").is_file()
