"""`bmbuild import tpu-perf`: tpu-perf model zoos (sophgo/model-zoo) as bmbuild recipes.

The corpus in tests/fixtures/tpu_perf/model-zoo holds real configs (SOURCE.md there); the
round-trip tests compare the commands tpu-perf would run for a config (its strings, expanded here
independently of the importer) flag by flag with what `bmbuild run --dry-run --toolchain nntc`
(or `tpu-mlir`) prints for the imported recipe.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmbuild.importers.tpu_perf import import_zoo, write_import
from tools.cli_flags import dry_run_commands, flags
from conftest import FIXTURES

CORPUS = FIXTURES / "tpu_perf" / "model-zoo"
ONNX_BYTES = b"\x08\x07\x12\x07pytorch"          # starts like a serialized ModelProto (ir_version)


# --- helpers ------------------------------------------------------------------------------------
def zoo(tmp_path: Path, configs: dict[str, Any], root: dict[str, Any] | None = None) -> Path:
    """A tpu-perf tree: root config.yaml + {relative config path: data (dict) or text}."""
    folder = tmp_path / "zoo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(root if root is not None else
                                                       {"cali_set": "$(root)/dataset/cali"}))
    for rel, data in configs.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return folder


def nntc_config(name: str = "net", **extra: Any) -> dict[str, Any]:
    config = {"name": name, "model": "$(home)/net.pt",
              "fp_compile_options": "python3 -m bmnetp --model $(model) --shapes [1,3,8,8] --net_name $(name) "
                                    "--target $(target)",
              "cali": "python3 -m ufw.cali.cali_model --model $(model) --net_name $(name) --cali_iterations 20 "
                      "--cali_image_path $(cali_set) --input_shapes [1,3,8,8] "
                      "--cali_image_preprocess 'resize_h=8,resize_w=8;mean_value=1:2:3,scale=0.5'",
              "bmnetu_options": "--model $(workdir)/$(name)_bmnetp_deploy_int8_unique_top.prototxt "
                                "--weight $(workdir)/$(name)_bmnetp.int8umodel --target $(target)",
              "bmnetu_batch_sizes": [1, 4]}
    config.update(extra)
    return config


def one(result: Any, name: str | None = None) -> Any:
    found = [t for t in result.translations if name is None or t.name == name]
    assert len(found) == 1, [t.name for t in result.translations]
    return found[0]


def imported(folder: Path, tmp_path: Path, **kwargs: Any) -> Any:
    return import_zoo(folder, tmp_path / "out", **kwargs)


# --- reading the tree: variables, target blocks, +key, shapes ---------------------------------------
def test_variables_expand_and_dataset_variables_become_workspace_vars(tmp_path):
    folder = zoo(tmp_path, {"cls/net/config.yaml": nntc_config(
        int8_model="$(workdir)/$(name)_bmnetp_deploy_int8_unique_top.prototxt",
        shape_text="[1,3,8,8]",
        fp_compile_options="python3 -m bmnetp --model $(model) --shapes $(shape_text) --target $(target)")},
        root={"cali_set": "$(root)/dataset/cali", "other_set": "$(cali_set)/more", "iter_opt": "--calculate_times"})
    result = imported(folder, tmp_path)
    t = one(result)
    assert t.status == "imported", t.untranslated
    recipe = t.recipe
    assert recipe["shapes"] == [[1, 3, 8, 8]]                         # $(shape_text), a config key
    assert recipe["calibration"]["data"] == "${cali_set}"              # a root variable stays a variable
    out_recipe = tmp_path / "out" / "cls" / "net" / "net.yaml"
    assert (out_recipe.parent / recipe["source"]["model"]).resolve() == folder / "cls" / "net" / "net.pt"
    root = folder.resolve()
    assert result.zoo.variables == {"tpu_perf_root": str(root), "cali_set": f"{root}/dataset/cali",
                                    "other_set": f"{root}/dataset/cali/more"}   # recursive, iter_opt is not data


def test_unknown_and_cyclic_variables_skip_the_config_with_the_name(tmp_path):
    folder = zoo(tmp_path, {
        "a/config.yaml": nntc_config("a", cali="python3 -m ufw.cali.cali_model --cali_image_path $(nowhere)"),
        "b/config.yaml": nntc_config("b", model="$(x)", x="$(model)/y"),
        # tpu-mlir's model-zoo generator (gen_shell.py) writes `excepts: ""` and `--excepts $(excepts)`
        "c/config.yaml": nntc_config("c", excepts="", fp_compile_options="python3 -m bmnetp --model $(model) "
                                                                         "--shapes [1,3,8,8] --excepts $(excepts)")})
    result = imported(folder, tmp_path)
    assert one(result, "a").status == "skipped" and "unknown variable $(nowhere)" in one(result, "a").skipped
    assert one(result, "b").status == "skipped" and "cyclic variable" in one(result, "b").skipped
    assert one(result, "c").skipped == ("variable $(excepts) in 'python3 -m bmnetp --model $(model) --shapes [1,3,8,8] "
                                        "--excepts $(excepts)' is empty (''): tpu-perf takes an empty value for no "
                                        "value and stops")


def test_target_blocks_override_for_the_chosen_target_only(tmp_path):
    config = nntc_config(BM1684={"bmnetu_batch_sizes": [2]},
                         BM1684X={"bmnetu_batch_sizes": [8]},
                         **{"BM1684/BM1684X": {"fp_compile_options":
                                               "python3 -m bmnetp --model $(model) --shapes [1,3,8,8] --opt 2"}})
    folder = zoo(tmp_path, {"net/config.yaml": config})
    bm1684 = one(imported(folder, tmp_path)).recipe
    assert bm1684["batch_sizes"] == [1, 2] and bm1684["fp32"]["opt"] == 2
    bm1684x = one(imported(folder, tmp_path, target="BM1684X")).recipe
    assert bm1684x["batch_sizes"] == [1, 8] and bm1684x["fp32"]["opt"] == 2
    assert "target" not in bm1684x              # defaults.yaml holds the shared target
    result = imported(folder, tmp_path, target="BM1684X")
    write_import(result)
    assert yaml.safe_load((tmp_path / "out" / "defaults.yaml").read_text()) == {"target": "BM1684X"}


def test_plus_keys_append_in_target_blocks_and_from_the_folder_context(tmp_path):
    folder = zoo(tmp_path, {
        "group/config.yaml": {"+bmnetu_batch_sizes": [16]},        # context of every model below group/
        "group/net/config.yaml": nntc_config(BM1684={"+bmnetu_batch_sizes": [8]}),
        "bad/config.yaml": nntc_config("bad", BM1684={"+fp_compile_options": ["x"]})})
    result = imported(folder, tmp_path)
    assert one(result, "net").recipe["batch_sizes"] == [1, 4, 8, 16]
    assert "appends to a list" in one(result, "bad").skipped


def test_multi_shape_configs_become_batch_sizes_or_variants(tmp_path):
    def mlir(name: str, shapes: list[Any], gops: list[float]) -> dict[str, Any]:
        return {"name": name, "shapes": shapes, "gops": gops,
                "mlir_transform": "model_transform.py --model_name $(name) --model_def $(home)/m.onnx "
                                  "--input_shapes [$(shape_param)] --mlir $(workdir)/t.mlir",
                "deploy": ["model_deploy.py --mlir $(workdir)/t.mlir --quantize F32 --chip bm1684x "
                           "--model $(workdir)/$(name)_f32.bmodel"]}
    folder = zoo(tmp_path, {
        "batches/config.yaml": mlir("batches", [[1, 3, 224, 224], [4, 3, 224, 224]], [1.0, 4.0]),
        "sizes/config.yaml": mlir("sizes", [[1, 3, 224, 224], [1, 3, 320, 320]], [1.0, 2.0]),
        "gops/config.yaml": mlir("gops", [[1, 3, 224, 224], [4, 3, 224, 224]], [1.0])})
    result = imported(folder, tmp_path, target="BM1684X")
    batches = one(result, "batches").recipe
    assert batches["shapes"] == [[1, 3, 224, 224]] and batches["batch_sizes"] == [1, 4]
    sizes = one(result, "sizes").recipe
    assert sizes["shapes"] == [[1, 3, 224, 224]]
    assert sizes["variants"] == [{"suffix": "1x3x224x224"}, {"suffix": "1x3x320x320", "shapes": [[1, 3, 320, 320]]}]
    assert "one value per entry of shapes" in one(result, "gops").skipped
    write_import(result)
    from bmbuild.recipe import load_recipe_file

    (tmp_path / "zoo" / "sizes" / "m.onnx").write_bytes(ONNX_BYTES)
    loaded = load_recipe_file(tmp_path / "out" / "sizes" / "sizes.yaml", tmp_path / "out")
    assert [(x.name, x.recipe.shapes) for x in loaded] == [("sizes_1x3x224x224", [[1, 3, 224, 224]]),
                                                          ("sizes_1x3x320x320", [[1, 3, 320, 320]])]


def test_ignored_configs_and_configs_for_other_targets(tmp_path):
    folder = zoo(tmp_path, {"off/config.yaml": nntc_config("off", ignore=True),
                            "x/config.yaml": {"name": "x", "BM1684X": {"fp_compile_options": "python3 -m bmnetp"}}})
    result = imported(folder, tmp_path)
    assert one(result, "off").status == "ignored" and one(result, "off").skipped == "ignore: true"
    assert one(result, "x").status == "ignored"
    assert one(result, "x").skipped == "no NNTC or tpu-mlir commands for BM1684 (blocks for BM1684X only)"


# --- what cannot be translated --------------------------------------------------------------------
@pytest.mark.parametrize("command, framework", [
    ("bmnetc --model $(home)/a.prototxt --weight $(home)/a.caffemodel --shapes [1,3,8,8]", "Caffe (bmnetc)"),
    ("python3 -m bmnett --model $(home)/a.pb --shapes [1,8,8,3]", "TensorFlow (bmnett)"),
    ("python3 -m bmpaddle --model $(home)/a/ --shapes [[1,3,8,8]]", "PaddlePaddle (bmpaddle)"),
    ("python3 -m bmnetm --model $(home)/a.json --shapes [1,3,8,8]", "MXNet (bmnetm)"),
])
def test_frameworks_bmbuild_does_not_build_are_skipped(tmp_path, command, framework):
    folder = zoo(tmp_path, {"a/config.yaml": {"name": "a", "fp_compile_options": command}})
    t = one(imported(folder, tmp_path))
    assert (t.status, t.skipped, t.recipe) == ("skipped", f"unsupported framework: {framework}", None)


def test_tpu_mlir_model_formats_bmbuild_does_not_build_are_skipped(tmp_path):
    folder = zoo(tmp_path, {"t/config.yaml": {
        "name": "t", "mlir_transform": "model_transform.py --model_def $(home)/m.tflite --input_shapes [[1,3,8,8]]"}})
    t = one(imported(folder, tmp_path))
    assert t.skipped == "unsupported framework: TFLite (model_transform --model_def m.tflite)"


def test_unknown_flags_and_keys_are_named(tmp_path):
    config = nntc_config(
        fp_compile_options="python3 -m bmnetp --model $(model) --shapes [1,3,8,8] --frobnicate 3 --cmp 0",
        bmnetu_options="--model x --weight y --seed 42 --input_as_fp32 data",
        build_env=["BMCOMPILER_X=1"], mystery={"a": 1})
    config["cali"] += " --try_cali_accuracy_opt='-th_method=ADMM;-per_channel=false' --debug_cmd 'odd_thing'"
    folder = zoo(tmp_path, {"net/config.yaml": config})
    result = imported(folder, tmp_path)
    t = one(result)
    assert t.status == "partial"
    assert t.untranslated == [
        "fp_compile_options --frobnicate 3: no bmbuild equivalent for bmnetp --frobnicate",
        "cali --try_cali_accuracy_opt -th_method=ADMM: -th_method ADMM: bmbuild calibrates with kl, minmax (MAX), "
        "mse or percentile (PERCENTILE9999)",
        "cali --debug_cmd odd_thing: no bmbuild equivalent",
        "bmnetu_options --seed 42: no bmbuild equivalent for bmnetu --seed",
        "bmnetu_options --input_as_fp32 data: no bmbuild equivalent for bmnetu --input_as_fp32",
        "build_env: BMCOMPILER_X=1: compiler environment variables have no recipe key"]
    assert "mystery: not read by tpu-perf's build" in t.notes
    assert t.recipe["fp32"] == {"cmp": False} and t.recipe["int8"] == {"per_channel": False}
    write_import(result)
    text = (tmp_path / "out" / "net" / "net.yaml").read_text()
    assert "#   - fp_compile_options --frobnicate 3: no bmbuild equivalent" in text   # in the recipe too


def test_cli_summary_and_strict(tmp_path, run_bmbuild, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = zoo(tmp_path, {"good/config.yaml": nntc_config("good"),
                            "caffe/config.yaml": {"name": "c", "fp_compile_options": "bmnetc --model x"},
                            "odd/config.yaml": nntc_config("odd", bmnetu_options="--model x --seed 1")})
    code, out, err = run_bmbuild("import", "tpu-perf", folder, "--out", "strict", "--strict")
    assert code == 2 and "--strict: 2 config(s) not imported completely; nothing written" in err
    assert not (tmp_path / "strict").exists()
    assert "3 config(s): 1 imported, 1 partial, 1 skipped" in out
    assert "skipped   caffe/config.yaml: unsupported framework: Caffe (bmnetc)" in out
    assert "untranslated: bmnetu_options --seed 1: no bmbuild equivalent for bmnetu --seed" in out
    code, out, err = run_bmbuild("import", "tpu-perf", folder, "--out", "lenient")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "lenient").rglob("*.yaml")) == [
        "bmbuild.yaml", "defaults.yaml", "good.yaml", "odd.yaml"]
    code, out, err = run_bmbuild("import", "tpu-perf", folder / "good", "--out", "one", "--strict")
    assert code == 0 and "1 config(s): 1 imported, 0 partial, 0 skipped" in out


def test_reimport_keeps_workspace_vars_the_user_changed(tmp_path):
    folder = zoo(tmp_path, {"net/config.yaml": nntc_config()})
    write_import(imported(folder, tmp_path))
    workspace = tmp_path / "out" / "bmbuild.yaml"
    data = yaml.safe_load(workspace.read_text())
    data["vars"]["cali_set"] = "/data/moved"
    data["jobs"] = 3
    workspace.write_text(yaml.safe_dump(data))
    write_import(imported(folder, tmp_path))
    again = yaml.safe_load(workspace.read_text())
    assert again["vars"]["cali_set"] == "/data/moved" and again["jobs"] == 3


# --- translations ---------------------------------------------------------------------------------
def test_tpu_mlir_calibration_and_deploys_translate(tmp_path):
    qtable = "# op_name quantize_mode\nhead F32\nneck F32\nbody F16\n"
    config = {
        "name": "det", "shapes": [[1, 3, 224, 224]],
        "mlir_transform": "model_transform.py --model_name $(name) --model_def $(home)/det.onnx "
                          "--input_shapes [$(shape_param)] --resize_dims 256,256 --mean 1,2,3 --scale 0.5,0.25,0.125 "
                          "--pixel_format bgr --keep_aspect_ratio --keep_ratio_mode letterbox --pad_value 114 "
                          "--pad_type normal "
                          "--output_names boxes,scores --test_input $(root)/cat.jpg --mlir $(workdir)/t.mlir",
        "mlir_calibration": "run_calibration.py $(workdir)/t.mlir --dataset $(cali_set) --input_num 50 "
                            "--cali_method mse -o $(workdir)/$(name).calitable",
        "deploy": ["model_deploy.py --mlir $(workdir)/t.mlir --quantize F32 --chip bm1684x --tolerance 0.99,0.98 "
                   "--model $(workdir)/f32.bmodel",
                   "model_deploy.py --mlir $(workdir)/t.mlir --quantize INT8 --asymmetric --chip bm1684x "
                   "--calibration_table $(workdir)/$(name).calitable --quantize_table $(home)/qtable "
                   "--tolerance 0.9,0.6 --model $(workdir)/int8.bmodel",
                   "model_deploy.py --mlir $(workdir)/t.mlir --quantize BF16 --chip bm1684x --model x.bmodel",
                   "model_deploy.py --mlir $(workdir)/t.mlir --quantize INT8 --chip bm1684x "
                   "--calibration_table $(workdir)/$(name).calitable --model $(workdir)/sym.bmodel"]}
    folder = zoo(tmp_path, {"det/config.yaml": config, "det/qtable": qtable})
    t = one(imported(folder, tmp_path))
    assert t.recipe["target"] == "BM1684X" and t.recipe["prec"] == "INT8"
    assert t.recipe["source"]["framework"] == "onnx"
    assert t.recipe["fp32"] == {"tolerance": {"cos": 0.99, "euclid": 0.98}}
    assert t.recipe["int8"] == {"asymmetric": True, "tolerance": {"cos": 0.9, "euclid": 0.6},
                                "fp32_layers": ["head", "neck"]}
    assert t.recipe["output_names"] == ["boxes", "scores"]
    assert t.recipe["calibration"] == {
        "data": "${cali_set}", "samples": 50, "method": "mse",
        "preprocess": {"resize": [256, 256], "center_crop": [224, 224], "mean": [1.0, 2.0, 3.0],
                       "scale": [0.5, 0.25, 0.125], "bgr2rgb": False, "keep_aspect_ratio": True,
                       "pad_value": 114, "pad_type": "normal"}}
    assert t.untranslated == [
        "deploy[2] --quantize BF16: bmbuild builds one F32 and one INT8 bmodel per batch size",
        "deploy[3] --quantize INT8: another INT8 build (symmetric): bmbuild builds one int8 bmodel per batch "
        "size, here deploy[1]'s (a copy of the recipe with int8.asymmetric: false builds this one)",
        "deploy[1] --quantize_table $(home)/qtable (body F16): only F32 layers have a bmbuild equivalent "
        "(int8.fp32_layers)".replace("$(home)", str(folder.resolve() / "det"))]


def test_example_configs_translate(tmp_path):
    """The three example configs of the issue (identical to their sophgo/model-zoo originals)."""
    result = import_zoo(CORPUS, tmp_path / "out")
    eff = one(result, "efficientnetv2")
    assert eff.status == "imported"
    assert {k: v for k, v in eff.recipe.items() if k not in ("source", "description")} == {
        "name": "efficientnetv2", "shapes": [[1, 3, 288, 288]], "prec": "INT8", "batch_sizes": [1, 3],
        "fp32": {"enable_profile": True, "cmp": False},
        "calibration": {"data": "${imagenet2012_cali_set}", "samples": 100, "method": "mse",
                        "preprocess": {"resize": [288, 288], "mean": [123.675, 116.28, 103.53],
                                       "scale": [0.0171, 0.0175, 0.0174], "bgr2rgb": True}},
        "int8": {"fp32_layers": ["1643", "1290", "1283", "1284"], "cmp": False, "enable_profile": True}}
    assert eff.recipe["source"]["framework"] == "onnx"

    vgg = one(result, "vgg11")
    assert vgg.status == "partial"
    assert vgg.recipe["fp32"] == {"enable_profile": True, "opt": 1, "cmp": True}
    assert vgg.recipe["int8"] == {"opt": 2, "cmp": False, "enable_profile": True}
    assert "prec" not in vgg.recipe and "batch_sizes" not in vgg.recipe
    assert vgg.hint == {"prec": "INT8", "batch_sizes": [1, 4, 8, 16],
                        "calibration": {"data": "<folder of calibration images>"}}
    assert [u.split(":")[0] for u in vgg.untranslated] == ["time_only_cali", "bmnetu_options --seed 42"]

    yolo = one(result, "yolov5s")
    # tpu-mlir flags against the translated keys (the dry-run round trip is test_tpu_mlir_dry_run_...)
    assert yolo.recipe["target"] == "BM1684X"                                 # --chip bm1684x
    assert yolo.recipe["shapes"] == [[1, 3, 640, 640]]                        # --input_shapes [$(shape_param)]
    assert yolo.recipe["source"]["framework"] == "onnx"                       # --model_def yolov5s.onnx
    assert yolo.recipe["fp32"] == {"tolerance": {"cos": 0.99, "euclid": 0.99}}  # F32 --tolerance
    assert yolo.recipe["int8"] == {"tolerance": {"cos": 0.95, "euclid": 0.68},  # INT8 --tolerance
                                   "asymmetric": False}  # no --asymmetric: symmetric, not bmbuild's auto
    assert yolo.hint["calibration"]["preprocess"] == {                        # --mean --scale --pixel_format
        "resize": [640, 640], "mean": [0.0, 0.0, 0.0], "scale": [0.0039216] * 3, "bgr2rgb": True,
        "keep_aspect_ratio": True}                                            # --keep_aspect_ratio
    assert yolo.recipe["output_names"] == ["350", "498", "646"]              # --output_names
    assert [u.split(":")[0] for u in yolo.untranslated] == [
        "deploy[2] --quantize INT8 --asymmetric",                            # a second int8 build
        f"deploy[1] --calibration_table {CORPUS.resolve()}/vision/detection/yolov5/cali_table",
        "deploy[1] --quant_input", "deploy[1] --quant_output"]
    assert not [n for n in yolo.notes if "aspect" in n or "output_names" in n]


EXPECTED_CORPUS = {
    "vision/classification/efficientnetv2/config.yaml": ("imported", "efficientnetv2"),
    "vision/classification/vgg11-torch/config.yaml": ("partial", "vgg11"),
    "vision/classification/mm_resnet50/config.yaml": ("partial", "resnet50"),
    "vision/classification/resnet50-v2/config.yaml": ("partial", "resnet50-v2"),
    "vision/classification/efficientnet-lite4/config.yaml": ("partial", "efficientnet-lite4"),
    "vision/classification/ResNet50-Caffe/config.yaml": ("skipped", "unsupported framework: Caffe (bmnetc)"),
    "vision/classification/inception_v4/mlir.tflite.config.yaml": ("skipped", "unsupported framework: TFLite"),
    "vision/detection/yolov5/yolov5s.config.yaml": ("partial", "yolov5s"),
    "vision/detection/yolov5/yolov5s5.config.yaml": ("imported", "yolov5s-5"),
    "vision/detection/ultralytics-yolov3/config.yaml": ("imported", "ultralytics_yolov3"),
    "vision/segmentation/unet_plusplus/config.yaml": ("skipped", "unsupported framework: PaddlePaddle (bmpaddle)"),
    "vision/recognition/facenet/config.yaml": ("skipped", "unsupported framework: TensorFlow (bmnett)"),
    "language/asr/conformer/ConformerEncoder.config.yaml": ("ignored", "blocks for BM1684X only"),
    "language/nlp/bert/config.yaml": ("ignored", "blocks for BM1684X only"),
}


def test_corpus_imports_with_a_status_per_config(tmp_path):
    result = import_zoo(CORPUS, tmp_path / "out")
    got = {str(t.config.relative_to(CORPUS.resolve())): t for t in result.translations}
    assert set(got) == set(EXPECTED_CORPUS)
    for rel, (status, detail) in EXPECTED_CORPUS.items():
        t = got[rel]
        assert t.status == status, (rel, t.skipped, t.untranslated)
        assert detail == t.name if t.recipe else detail in t.skipped, (rel, t.name, t.skipped)
    bm1684x = {str(t.config.relative_to(CORPUS.resolve())): t
               for t in import_zoo(CORPUS, tmp_path / "x", target="BM1684X").translations}
    conformer = bm1684x["language/asr/conformer/ConformerEncoder.config.yaml"]
    assert conformer.recipe["shapes"] == [[1, 458, 256], [1, 458, 256], [1, 1, 458]]
    assert conformer.recipe["fp32"] == {"enable_profile": True, "opt": 2, "dyn": True, "cmp": False}
    assert bm1684x["language/nlp/bert/config.yaml"].untranslated[0].startswith("fp_loops[1]: another build")
    yolo = bm1684x["vision/detection/yolov5/yolov5s5.config.yaml"]
    assert any("-asym_threshold=true" in u for u in yolo.untranslated)


def test_a_flat_folder_of_example_configs_and_a_single_config_file(tmp_path):
    """A folder of `<model>.config.yaml` files whose root config has another name (as the issue's
    examples are kept) imports with that root config's variables; so does one config file."""
    flat = tmp_path / "examples"
    flat.mkdir()
    shutil.copyfile(CORPUS / "config.yaml", flat / "root.config.yaml")
    shutil.copyfile(CORPUS / "vision/classification/efficientnetv2/config.yaml", flat / "efficientnetv2.config.yaml")
    shutil.copyfile(CORPUS / "vision/classification/vgg11-torch/config.yaml", flat / "vgg11-torch.config.yaml")
    result = import_zoo(flat, tmp_path / "out")
    assert sorted(t.name for t in result.translations) == ["efficientnetv2", "vgg11"]
    assert one(result, "efficientnetv2").recipe["calibration"]["data"] == "${imagenet2012_cali_set}"
    single = import_zoo(flat / "vgg11-torch.config.yaml", tmp_path / "one")
    assert [t.name for t in single.translations] == ["vgg11"] and single.zoo.root == flat.resolve()


def test_missing_model_files_import_and_fail_validate_with_the_path(tmp_path, run_bmbuild, monkeypatch):
    result = import_zoo(CORPUS / "vision" / "classification" / "efficientnetv2", tmp_path / "out")
    t = one(result)
    missing = CORPUS.resolve() / "vision" / "classification" / "efficientnetv2" / "efficientnetv2.onnx"
    assert t.status == "imported" and any(n.startswith(f"model: {missing} is not present") for n in t.notes)
    caliset = CORPUS.resolve() / "dataset" / "ILSVRC2012" / "caliset"     # datasets are fetched apart
    assert f"calibration.data: {caliset} is not present (a dataset fetched apart from the zoo?): `bmbuild " \
           "validate` fails until the data is there" in t.notes
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("validate", ".")
    assert code == 2 and f"model file not found: {missing}" in err


def test_git_lfs_pointers_are_noted(tmp_path):
    folder = zoo(tmp_path, {"net/config.yaml": nntc_config(),
                            "net/net.pt": "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"})
    t = one(imported(folder, tmp_path))
    assert any("is a Git LFS pointer: run `git lfs pull`" in n for n in t.notes)


# --- round trip: tpu-perf's commands vs bmbuild's NNTC dry run ---------------------------------------
def corpus_copy(tmp_path: Path, model: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The corpus root config and one model's folder, with placeholder model files and a calibration
    image folder for every dataset variable (room for 100 samples + 16 held out, so no recipe
    calibrates on fewer than its config); returns (model folder, model config, root variables)."""
    root = tmp_path / "zoo"
    shutil.copytree(CORPUS / model, root / model)
    shutil.copyfile(CORPUS / "config.yaml", root / "config.yaml")
    config = yaml.safe_load(next((root / model).glob("*config.yaml")).read_text())
    variables = {k: str(v).replace("$(root)", str(root.resolve()))
                 for k, v in yaml.safe_load((root / "config.yaml").read_text()).items() if isinstance(v, str)}
    for key, value in variables.items():
        if key.endswith("_set") and not Path(value).suffix:
            Path(value).mkdir(parents=True, exist_ok=True)
            for i in range(116):
                (Path(value) / f"{i:03d}.jpg").write_bytes(b"\xff\xd8\xff placeholder")
    for file in (root / model).glob("*config.yaml"):
        for path in re.findall(r"\$\(home\)/([\w.-]+\.(?:pt|onnx))", file.read_text()):
            (root / model / path).write_bytes(ONNX_BYTES)
    return root / model, config, variables


def expand(text: str, scope: dict[str, Any]) -> str:
    """tpu-perf's $(var) expansion, written here independently of the importer."""
    for _ in range(10):
        text, before = re.sub(r"\$\((\w+)\)", lambda m: str(scope[m.group(1)]), text), text
        if text == before:
            break
    return text


def shapes(text: str) -> list[list[int]]:
    return [[int(d) for d in group.split(",")] for group in re.findall(r"\[([\d,\s]+)\]", text)]


BOOLEAN_FLAGS = ("dyn", "cmp", "enable_profile")


def norm(flag: str, value: str | None) -> Any:
    """Booleans as the tools accept them (True/true/1); other values as written."""
    text = str(value)
    if flag in BOOLEAN_FLAGS:
        return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
    return text


BMNETP_DEFAULTS = {"opt": "1", "dyn": False, "cmp": True, "enable_profile": False}     # bmnetp.md
BMNETU_ADDED = {"prec": "INT8", "opt": "2", "dyn": False, "cmp": True, "enable_profile": False}  # bmnetu.compile()


def same_flags(tpu_perf: dict[str, Any], bmbuild: dict[str, Any], name: str, defaults: dict[str, Any],
               paths: tuple[str, ...]) -> None:
    for flag, value in tpu_perf.items():
        assert flag in bmbuild, (flag, bmbuild)
        if flag in paths:
            continue
        if flag == "shapes":
            assert [s[1:] for s in shapes(bmbuild[flag])] == [s[1:] for s in shapes(value)]
        else:
            assert norm(flag, bmbuild[flag]) == norm(flag, value), (flag, bmbuild[flag], value)
    for flag in set(bmbuild) - set(tpu_perf) - {"outdir", "shapes"}:
        assert (flag == "net_name" and bmbuild[flag] == name) or norm(flag, bmbuild[flag]) == defaults.get(flag), flag


@pytest.mark.parametrize("model", ["vision/classification/efficientnetv2", "vision/classification/vgg11-torch",
                                   "vision/detection/yolov5/yolov5s5", "vision/detection/ultralytics-yolov3"])
def test_nntc_dry_run_matches_the_configs_commands(tmp_path, run_bmbuild, monkeypatch, model):
    if model.endswith("yolov5s5"):   # one config of a folder with several: copy the folder, keep that one
        folder, config, variables = corpus_copy(tmp_path, "vision/detection/yolov5")
        for other in folder.glob("*config.yaml"):
            if other.name != "yolov5s5.config.yaml":
                other.unlink()
        config = yaml.safe_load((folder / "yolov5s5.config.yaml").read_text())
        config.update(config.pop("BM1684"))
    else:
        folder, config, variables = corpus_copy(tmp_path, model)
    result = import_zoo(folder, tmp_path / "out")
    t = one(result)
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("run", ".", "--dry-run", "--toolchain", "nntc")
    assert code == 0, out + err
    commands = dry_run_commands(out)
    name = config["name"]
    scope = {**variables, **config, "home": str(folder.resolve()), "workdir": "/WORKDIR", "target": "BM1684",
             "root": str((tmp_path / "zoo").resolve()), "name": name}

    # fp_compile_options: the same compiler, flags and values (tpu-perf adds --outdir)
    fp_words = shlex.split(expand(config["fp_compile_options"], scope))
    tool = fp_words[2]
    fp = flags(fp_words[3:])
    ours = [flags(c[3:]) for c in commands if c[1:3] == ["-m", tool]]
    batch = shapes(fp["shapes"])[0][0]
    (mine,) = [f for f in ours if shapes(f["shapes"])[0][0] == batch]
    same_flags(fp, mine, name, BMNETP_DEFAULTS, paths=("model",))
    assert Path(mine["model"]).resolve() == Path(fp["model"]).resolve()      # the config's model file itself

    if "cali" not in config:     # time_only_cali: an FP32 import, no calibration, no bmnetu
        assert t.recipe.get("prec") is None and not any(c[0] == "bmnetu" for c in commands)
        return
    # cali: ufw.cali.cali_model's flags against the LMDB writer, the umodel converter and calibration_use_pb
    cali = flags(shlex.split(expand(config["cali"], scope))[3:])
    converter = "on_to_umodel" if fp["model"].endswith(".onnx") else "pt_to_umodel"
    (to_umodel,) = [flags(c[3:]) for c in commands if c[1:3] == ["-m", f"ufw.tools.{converter}"]]
    assert to_umodel["s"] == "(" + ",".join(map(str, shapes(cali["input_shapes"])[0])) + ")"
    assert to_umodel["n"] == cali["net_name"] == name
    (lmdb,) = [c for c in commands if c[1:3] == ["-m", "bmbuild.toolchains.nntc_lmdb"]]
    calibration = json.loads(lmdb[lmdb.index("--calibration") + 1])
    assert Path(calibration["data"]).resolve() == Path(cali["cali_image_path"]).resolve()
    assert calibration["samples"] == int(cali["cali_iterations"])
    items = dict(part.split("=") for part in re.split(r"[;,]", cali["cali_image_preprocess"]) if part)
    pre = calibration["preprocess"]
    assert pre["resize"] == [int(items["resize_h"]), int(items["resize_w"])]
    assert pre["bgr2rgb"] == (items.get("bgr2rgb") == "True")
    scale = [float(s) for s in items["scale"].split(":")]
    assert (pre["scale"] if isinstance(pre["scale"], list) else [pre["scale"]]) == scale
    assert pre["mean"] == ([float(m) for m in items["mean_value"].split(":")] if "mean_value" in items else [0.0] * 3)
    (quantize,) = [flags(c[2:]) for c in commands if c[0] == "calibration_use_pb"]
    assert quantize["iterations"] == cali["cali_iterations"]
    options = dict(o.lstrip("-").split("=", 1) for o in (cali.get("try_cali_accuracy_opt") or "").split(";") if o)
    assert quantize["th_method"] == options.get("th_method", "KL")
    layers = cali.get("fp32_layer_list") or options.get("fpfwd_outputs")
    assert quantize.get("fpfwd_outputs") == layers

    # bmnetu_options: one bmnetu per bmnetu_batch_sizes entry (tpu-perf adds --max_n <b> --outdir)
    base = flags(shlex.split(expand("python3 -m bmnetu " + config["bmnetu_options"], scope))[3:])
    ours = [flags(c[1:]) for c in commands if c[0] == "bmnetu"]
    for b in config["bmnetu_batch_sizes"]:
        (mine,) = [f for f in ours if shapes(f["shapes"])[0][0] == b]
        same_flags(base, mine, name, BMNETU_ADDED, paths=("model", "weight"))
        for flag in ("model", "weight"):      # the files cali_model would have written, by name
            assert Path(mine[flag]).name == Path(base[flag]).name


# --- what the imported recipes need from the NNTC toolchain: bmneto and bmnetu -enable_profile -------
def tiny_onnx(path: Path) -> None:
    """A 1-conv ONNX model with input [1,3,8,8] (onnx.helper; the double only checks the format)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_onnx_recipes_build_with_bmneto_and_on_to_umodel(workspace, write_recipe, run_bmbuild, monkeypatch, outcomes):
    import numpy as np
    from test_nntc_toolchain import activate, by_tool

    log = workspace.parent / "double.jsonl"
    activate(monkeypatch, Path(__file__).resolve().parent / "nntc_double", log)
    tiny_onnx(workspace / "recipes" / "tiny.onnx")
    np.savez(workspace / "recipes" / "calib.npz", x=np.random.default_rng(0).standard_normal((12, 3, 8, 8),
                                                                                          dtype=np.float32))
    recipe = write_recipe("tiny", toolchain="nntc", prec="INT8", batch_sizes=[1, 2],
                          source={"framework": "onnx", "model": "tiny.onnx", "kwargs": None},
                          calibration={"data": "calib.npz", "key": "x", "samples": 8},
                          int8={"cmp_samples": 4, "enable_profile": True})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {s: "executed" for s in ("compile_fp32", "calibrate", "quantize", "compile_int8")}
    build = workspace.resolve() / "build" / "tiny"
    first, _ = by_tool(log, "bmneto")
    assert first[0] == f"--model={workspace.resolve()}/recipes/tiny.onnx" and first[1] == "--shapes=[[1,3,8,8]]"
    assert by_tool(log, "bmnetp") == []
    (to_umodel,) = by_tool(log, "on_to_umodel")
    assert to_umodel[:2] == ["-m", f"{build}/compile_fp32/tiny.onnx"] and to_umodel[-2:] == ["-n", "tiny"]
    assert sorted(p.name for p in (build / "quantize").iterdir() if not p.name.startswith(".")) == [
        "tiny_bmneto.int8umodel", "tiny_bmneto_deploy_int8_unique_top.prototxt"]
    for argv in by_tool(log, "bmnetu"):
        assert argv[0] == f"-model={build}/quantize/tiny_bmneto_deploy_int8_unique_top.prototxt"
        assert argv[-1] == "-enable_profile=True"


def test_enable_profile_changes_the_int8_key_only_when_set(workspace, write_recipe):
    """Recipes without int8.enable_profile keep their compile_int8 parameters (and cached results)."""
    from bmbuild.recipe import load_recipe
    from bmbuild.stages.compile_int8 import STAGE

    base = {"prec": "INT8", "calibration": {"data": "calib.npz"}}
    (workspace / "recipes" / "calib.npz").write_bytes(b"")
    plain = STAGE.params(load_recipe(write_recipe("a", **base)).recipe)
    profiled = STAGE.params(load_recipe(write_recipe("b", **base, int8={"enable_profile": True})).recipe)
    assert "enable_profile" not in plain
    assert {k: v for k, v in profiled.items() if k != "net_name"} == {
        **{k: v for k, v in plain.items() if k != "net_name"}, "enable_profile": True}


def test_the_first_fp_loop_is_the_build_imported_and_the_others_are_named(tmp_path):
    """tpu-perf expands fp_compile_options once per fp_loops entry, with the entry's keys as variables."""
    config = nntc_config(
        fp_compile_options="python3 -m bmnetp --model $(model) --shapes [1,3,8,8] --opt $(opt) --dyn $(dyn)",
        fp_loops=[{"opt": 2, "dyn": "True", "fp_outdir_template": "a.{}b"},
                  {"opt": 1, "dyn": "False", "build_env": ["BMCOMPILER_LAYER_DTYPE_MODE=auto"], "prec": "FP16"}])
    folder = zoo(tmp_path, {"net/config.yaml": config})
    t = one(imported(folder, tmp_path))
    assert t.recipe["fp32"] == {"opt": 2, "dyn": True}
    assert t.untranslated == ["fp_loops[1]: another build with opt=1, dyn=False, "
                              "build_env=['BMCOMPILER_LAYER_DTYPE_MODE=auto'], prec=FP16: no bmbuild equivalent"]


# --- round trip: tpu-perf's tpu-mlir commands vs bmbuild's tpu-mlir dry run ------------------------
MLIR_PREPROCESS = ("mean", "scale", "pixel_format", "resize_dims", "channel_format", "keep_aspect_ratio")
MLIR_TEST_DATA = ("test_input", "test_result", "test_reference", "mlir", "model", "correctness")


def tool_commands(commands: list[list[str]], tool: str) -> list[dict[str, Any]]:
    return [flags(c[1:]) for c in commands if c and Path(c[0]).name == tool]


def mlir_case(tmp_path: Path, model: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    if not model.startswith("int8"):
        folder, config, variables = corpus_copy(tmp_path, model)
        for other in folder.glob("*config.yaml"):
            if yaml.safe_load(other.read_text()).get("name") != "yolov5s" and model.endswith("yolov5"):
                other.unlink()
        return folder, yaml.safe_load(next(folder.glob("*config.yaml")).read_text()), variables
    # no corpus config calibrates (theirs use a prebuilt table): one that does, with a quantize table
    folder, _, variables = corpus_copy(tmp_path, "vision/classification/resnet50-v2")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["mlir_calibration"] = ("run_calibration.py $(workdir)/transformed.mlir "
                                  "--dataset $(imagenet2012_mlir_cali_set) --input_num 100 --cali_method mse "
                                  "-o $(workdir)/$(name).calitable")
    # int8-asym: the asymmetric deploy, a letterboxing transform cut at an inner tensor
    int8 = config["deploy"][2 if model == "int8-asym" else 1].replace("$(home)/cali_table",
                                                                      "$(workdir)/$(name).calitable")
    config["deploy"] = [config["deploy"][0], int8.replace("--quant_input", "--quantize_table $(home)/qtable")
                        .replace("--quant_output", "").replace("--asymmetric", "--asymmetric --quantize_table "
                                                                              "$(home)/qtable")]
    if model == "int8-asym":
        config["mlir_transform"] = config["mlir_transform"].replace(
            "--pixel_format", "--keep_aspect_ratio --pad_value 114 --output_names resnetv24_flatten0_reshape0 "
                              "--pixel_format")
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "qtable").write_text("resnetv24_dense0_fwd F32\n")
    return folder, config, variables


@pytest.mark.parametrize("model", ["vision/detection/yolov5", "vision/classification/resnet50-v2",
                                   "vision/classification/efficientnet-lite4", "int8", "int8-asym"])
def test_tpu_mlir_dry_run_matches_the_configs_commands(tmp_path, run_bmbuild, monkeypatch, model):
    folder, config, variables = mlir_case(tmp_path, model)
    result = import_zoo(folder, tmp_path / "out")
    t = one(result)
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("run", ".", "--dry-run", "--toolchain", "tpu-mlir")
    assert code == 0, out + err
    commands = dry_run_commands(out)
    name, recipe = config["name"], t.recipe
    scope = {**variables, **config, "home": str(folder.resolve()), "workdir": "/WORKDIR", "target": "bm1684",
             "root": str((tmp_path / "zoo").resolve())}
    ours = tool_commands(commands, "model_transform")
    preprocess = (recipe.get("calibration") or (t.hint or {}).get("calibration") or {}).get("preprocess", {})
    for shape in config["shapes"]:
        param = ",".join("[" + ",".join(map(str, s)) + "]" for s in ([shape] if isinstance(shape[0], int) else shape))
        theirs = flags(shlex.split(expand(config["mlir_transform"], {**scope, "shape_param": param}))[1:])
        matching = [f for f in ours if shapes(f["input_shapes"]) == shapes(theirs["input_shapes"])]
        assert matching                              # (INT8: calibrate transforms batch 1 again)
        for mine in matching:
            assert mine["model_name"] == theirs["model_name"] == name
            assert Path(mine["model_def"]).suffix == Path(theirs["model_def"]).suffix == ".onnx"
        for flag, value in theirs.items():
            if flag in ("model_name", "model_def", "input_shapes") + MLIR_TEST_DATA:
                continue
            if flag == "mean":
                assert preprocess["mean"] == [float(v) for v in value.split(",")]
            elif flag == "scale":
                assert preprocess["scale"] == [float(v) for v in value.split(",")]
            elif flag == "pixel_format":
                assert preprocess["bgr2rgb"] == (value == "rgb")
            elif flag == "resize_dims":
                assert preprocess["resize"] == [int(v) for v in value.split(",")]
            elif flag == "channel_format":
                assert preprocess["layout"] == value.upper()
            elif flag == "output_names":           # every transform ends the graph there
                assert recipe["output_names"] == value.split(",")
                assert all(mine["output_names"] == value for mine in ours), ours
            elif flag in ("keep_aspect_ratio", "pad_value", "pad_type"):
                assert preprocess[flag] is True if flag == "keep_aspect_ratio" else str(preprocess[flag]) == value
                letterboxing = [mine for mine in ours if "keep_aspect_ratio" in mine]  # calibrate's transform
                assert len(letterboxing) == (recipe.get("prec") == "INT8")
                assert all(mine.get(flag) == value for mine in letterboxing)
            else:
                raise AssertionError(f"unexpected model_transform flag --{flag}")
    deploys = [flags(shlex.split(expand(d, scope))[1:]) for d in config["deploy"]]
    mine = {q: tool_commands(commands, "model_deploy") for q in ("F32", "INT8")}
    int8_seen = False
    for index, theirs in enumerate(deploys):
        quantize = theirs["quantize"]
        if quantize == "INT8" and (int8_seen or recipe.get("prec") != "INT8"):
            assert any(u.startswith(f"deploy[{index}]") for u in t.untranslated)  # named, not built
            continue
        int8_seen = int8_seen or quantize == "INT8"
        built = [f for f in mine[quantize] if f["quantize"] == quantize and "not_gen_bmodel" not in f]
        assert len(built) == len(recipe.get("batch_sizes") or [1])            # one per batch size
        for f in built:
            assert f["chip"] == theirs["chip"]
            assert ("asymmetric" in f) == ("asymmetric" in theirs)           # int8.asymmetric
            assert ("calibration_table" in f) == (quantize == "INT8") == ("calibration_table" in theirs)
        role = "fp32" if quantize == "F32" else "int8"
        cos, euclid = (float(v) for v in theirs["tolerance"].split(","))
        assert recipe[role]["tolerance"] == {"cos": cos, "euclid": euclid}      # bmbuild's own gate
        if "quantize_table" in theirs:
            assert all("quantize_table" in f for f in built)
            layers = [line.split()[0] for line in Path(theirs["quantize_table"]).read_text().splitlines()]
            assert recipe["int8"]["fp32_layers"] == layers
    if "mlir_calibration" in config:
        theirs = flags(shlex.split(expand(config["mlir_calibration"], scope))[2:])
        (cali,) = tool_commands(commands, "run_calibration")
        assert cali["input_num"] == theirs["input_num"] and cali["cali_method"] == theirs["cali_method"]
        assert recipe["calibration"]["data"] == "${imagenet2012_mlir_cali_set}"


def test_inputs_whose_first_dims_differ_build_as_written(tmp_path, run_bmbuild, monkeypatch):
    """tpu-perf compiles `--shapes` as written: a sequence [6,4] beside a length [1] has no shared
    batch size, so the recipe says so (every batch_axis null) and builds those exact shapes."""
    import torch

    class Scale(torch.nn.Module):
        def forward(self, x: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
            return x * length

    folder = zoo(tmp_path, {"seq/config.yaml": {
        "name": "seq", "model": "$(home)/seq.pt",
        "fp_compile_options": "python3 -m bmnetp --model $(model) --shapes '[6,4],[1]' --target $(target) --opt 1"}})
    torch.jit.trace(Scale(), (torch.ones(6, 4), torch.ones(1))).save(str(folder / "seq" / "seq.pt"))
    result = imported(folder, tmp_path)
    t = one(result)
    assert t.recipe["inputs"] == [{"name": "input0", "batch_axis": None}, {"name": "input1", "batch_axis": None}]
    assert any("first dimensions differ (6, 1)" in n for n in t.notes)
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("run", ".", "--toolchain", "reference", "--plain")
    assert code == 0, err
    import onnx

    onnx_file = next(Path("build").rglob("seq*.onnx"))
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(str(onnx_file)).graph.input]
    assert dims == [[6, 4], [1]]


LFS_TEXT = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 9\n".format("0" * 64)


@pytest.mark.parametrize("what", ["torchscript", "onnx", "weights", "eval", "images"])
def test_git_lfs_pointers_fail_validate_by_name(what, workspace, write_recipe, run_bmbuild):
    """A clone without `git lfs pull` holds pointer files in place of models and data: `validate`
    names the file as an LFS pointer at the key that reads it, before any stage runs."""
    folder = workspace / "recipes"
    files = {"torchscript": "net.pt", "onnx": "net.onnx", "weights": "w.pt", "eval": "eval.npz",
             "images": "photos/a.jpg"}
    pointer = folder / files[what]
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(LFS_TEXT)
    overrides: dict[str, Any] = {
        "torchscript": {"source": {"framework": "torchscript", "model": "net.pt"}},
        "onnx": {"source": {"framework": "onnx", "model": "net.onnx"}},
        "weights": {"source": {"weights": {"path": "w.pt"}}},
        "eval": {"eval": {"data": "eval.npz", "metric": "top1"}},
        "images": {"prec": "INT8", "calibration": {"data": "photos", "samples": 1,
                                                   "preprocess": {"resize": 8, "mean": [0, 0, 0], "scale": 1}}},
    }[what]
    key = {"torchscript": "source.model", "onnx": "source.model", "weights": "source.weights",
           "eval": "eval.data", "images": "calibration.data"}[what]
    path = write_recipe("lfs", **overrides)
    code, out, err = run_bmbuild("validate", path)
    assert code == 2, (out, err)
    assert f"{key}: {pointer.resolve()} is a Git LFS pointer, not the file itself: run `git lfs pull`" in err, err


def test_a_calibration_set_without_room_for_held_out_samples_calibrates_on_the_rest(tmp_path, run_bmbuild,
                                                                                    monkeypatch):
    """sophgo/model-zoo's COCO caliset has 100 images and yolov5 calibrates on all 100; bmbuild holds
    int8.cmp_samples (16) out, so the imported recipe calibrates on 84 and validates."""
    folder = zoo(tmp_path, {"net/config.yaml": nntc_config(), "net/net.pt": "placeholder"})
    cali = folder / "dataset" / "cali"
    cali.mkdir(parents=True)
    for i in range(20):
        (cali / f"{i:03d}.jpg").write_bytes(b"\xff\xd8\xff placeholder")
    result = imported(folder, tmp_path)
    t = one(result)
    assert t.recipe["calibration"]["samples"] == 4
    assert any("holds 20 samples and bmbuild holds 16 out" in n and "calibrates on 4, not 20" in n for n in t.notes)
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("validate", ".")
    assert code == 0, err


def onnx_model(path: Path, inputs: list[tuple[str, int, list[Any]]]) -> None:
    """An ONNX model whose graph inputs are `inputs` (name, onnx element type, dims); one Identity each."""
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs], "m",
        [helper.make_tensor_value_info(name, kind, dims) for name, kind, dims in inputs],
        [helper.make_tensor_value_info(f"{name}_out", kind, dims) for name, kind, dims in inputs])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_onnx_input_names_and_types_come_from_the_model(tmp_path, run_bmbuild, monkeypatch):
    """tpu-perf's commands never name a model's inputs; bmbuild feeds them by name (and as float32
    unless told). A fetched vendor ONNX model names its input `data` (resnet50-v2-7.onnx), ...: the recipe
    names them as the graph does, so it validates (it failed validate on the input names)."""
    from onnx import TensorProto

    folder, _, _ = corpus_copy(tmp_path, "vision/classification/resnet50-v2")
    onnx_model(folder / "resnet50-v2-7.onnx", [("data", TensorProto.FLOAT, ["N", 3, 224, 224])])
    (tmp_path / "zoo" / "seq").mkdir()
    onnx_model(tmp_path / "zoo" / "seq" / "seq.onnx", [("feats", TensorProto.FLOAT, [6, 4]),
                                                      ("length", TensorProto.INT64, [1])])
    (tmp_path / "zoo" / "seq" / "config.yaml").write_text(yaml.safe_dump({
        "name": "seq", "fp_compile_options": "python3 -m bmneto --model $(home)/seq.onnx --shapes '[6,4],[1]'"}))
    result = import_zoo(tmp_path / "zoo", tmp_path / "out")
    assert one(result, "resnet50-v2").recipe["inputs"] == [{"name": "data"}]
    assert one(result, "seq").recipe["inputs"] == [{"name": "feats", "batch_axis": None},
                                                   {"name": "length", "dtype": "int64", "batch_axis": None}]
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("validate", ".")
    assert code == 0, out + err


def test_nntc_layer_names_keep_nntc_or_are_named_where_tpu_mlir_builds(tmp_path, run_bmbuild, monkeypatch):
    """yolov5s5 keeps NNTC's names for three PyTorch layers in float (-fpfwd_outputs=< 24 >14,...):
    only NNTC knows them. For BM1684 the recipe asks for NNTC; for BM1684X, which bmbuild builds
    with tpu-mlir, they are untranslated (tpu-mlir's dry run failed on them)."""
    folder, _, _ = corpus_copy(tmp_path, "vision/detection/yolov5")
    for other in folder.glob("*config.yaml"):
        if other.name != "yolov5s5.config.yaml":
            other.unlink()
    layers = ["< 24 >14", "< 24 >51", "< 24 >82"]
    for target, toolchain in (("BM1684", None), ("BM1684X", "tpu-mlir")):
        result = import_zoo(folder, tmp_path / target, target=target)
        t = one(result)
        if target == "BM1684":
            assert t.recipe["toolchain"] == "nntc" and t.recipe["int8"]["fp32_layers"] == layers
            assert t.status == "imported"
        else:
            assert "toolchain" not in t.recipe and "fp32_layers" not in t.recipe["int8"]
            assert f"fp32 layers {', '.join(layers)}: NNTC's names for the model's layers" in " ".join(t.untranslated)
        write_import(result)
        monkeypatch.chdir(tmp_path / target)
        code, out, err = run_bmbuild("run", ".", "--dry-run", *(["--toolchain", toolchain] if toolchain else []))
        assert code == 0 and "error:" not in out + err, out + err
        if toolchain is None:
            assert "-fpfwd_outputs=< 24 >14,< 24 >51,< 24 >82" in out


# tpu-mlir's model-zoo config generator (python/utils/gen_shell.py, yaml_template): a folder of
# .npz inputs (one data.npz, keyed by input name) calibrated with --input_num 10.
GEN_SHELL_CONFIG = """
name: {name}
pure_name: {name}
gops: [1]
shapes:
 - [1,3,8,8]
model: $(home)/{name}.onnx
cali_input_key: {name}/cali_data
time_rountds: 50
mlir_transform: model_transform.py
  --model_name $(name)
  --model_def $(model)
  --tolerance 0.99,0.9
  --test_input $(root)/dataset/{name}/test_input.npz
  --input_shapes [$(shape_param)]
  --test_result $(workdir)/$(pure_name)_top_outputs.npz
  --mlir $(workdir)/$(pure_name).mlir
mlir_calibration: run_calibration.py $(workdir)/$(pure_name).mlir
  --dataset $(root)/dataset/$(cali_input_key)
  --input_num 10
  -o $(workdir)/$(pure_name)_cali_table
BM1684X:
  deploy:
    - model_deploy.py
      --mlir $(workdir)/$(pure_name).mlir
      --quantize F32
      --chip $(target)
      --model $(workdir)/$(pure_name)_$(target)_f32.bmodel
    - model_deploy.py
      --mlir $(workdir)/$(pure_name).mlir
      --quantize INT8
      --chip $(target)
      --tolerance 0.8,0.4
      --model $(workdir)/$(pure_name)_$(target)_int8_sym.bmodel
      --calibration_table $(workdir)/$(pure_name)_cali_table
"""


def test_npz_calibration_sets_are_fed_as_they_are_and_small_ones_calibrate_on_what_is_there(
        tmp_path, run_bmbuild, monkeypatch):
    """run_calibration feeds a --dataset of .npz files as they are and calibrates on at most the
    files there are. The recipes had a calibration.preprocess (refused for arrays) and 10 samples +
    16 held out from a folder of 1 or 13: neither validated."""
    import numpy as np
    from onnx import TensorProto

    folder = zoo(tmp_path, {f"m/{name}/{name}.mlir.config.yaml": GEN_SHELL_CONFIG.format(name=name)
                            for name in ("one", "some")}, root={})
    for name, files in (("one", 1), ("some", 13)):
        onnx_model(folder / "m" / name / f"{name}.onnx", [("x.1", TensorProto.FLOAT, [1, 3, 8, 8])])
        cali = folder / "dataset" / name / "cali_data"
        cali.mkdir(parents=True)
        for i in range(files):
            np.savez(cali / f"data{i}.npz", **{"x.1": np.zeros((1, 3, 8, 8), np.float32)})
    result = import_zoo(folder, tmp_path / "out", target="BM1684X")
    one_npz, some = one(result, "one").recipe, one(result, "some").recipe
    assert one_npz["calibration"] == {"data": "${tpu_perf_root}/dataset/one/cali_data", "samples": 1}
    assert one_npz["int8"]["cmp"] is False
    assert some["calibration"]["samples"] == 7 and some["int8"]["cmp_samples"] == 6
    assert "preprocess" not in some["calibration"]
    write_import(result)
    monkeypatch.chdir(tmp_path / "out")
    code, out, err = run_bmbuild("validate", ".")
    assert code == 0, out + err


def test_tool_option_aliases_translate_like_their_first_names(tmp_path):
    """tpu-mlir's tools take --processor for --chip and run_calibration --calibration_table for -o
    (argparse aliases). The table written under the long name was taken for a prebuilt one: the
    recipe stayed FP32, and both --processor flags were untranslated."""
    folder, _, _ = corpus_copy(tmp_path, "vision/classification/resnet50-v2")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["mlir_calibration"] = ("run_calibration.py $(workdir)/transformed.mlir --dataset $(imagenet2012_mlir_cali_set) "
                                  "--input_num 100 --processor bm1684x --calibration_table $(workdir)/$(name).calitable")
    config["deploy"] = [config["deploy"][0].replace("--chip", "--processor"),
                        config["deploy"][2].replace("$(home)/cali_table", "$(workdir)/$(name).calitable")]
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    t = one(import_zoo(folder, tmp_path / "out"))
    assert t.recipe["prec"] == "INT8" and t.recipe["target"] == "BM1684X"
    assert t.recipe["int8"]["asymmetric"] is True
    assert t.status == "imported", t.untranslated
