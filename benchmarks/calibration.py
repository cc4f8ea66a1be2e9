"""int8 calibration: bmbuild's streaming calibrate+quantize against onnxruntime's quantize_static.

On the ResNet-18 recipe (recipes/resnet.yaml) and the same 64 calibration photos, preprocessed
exactly as the recipe says (through bmbuild.calib), this measures for each configuration the
wall time and the peak memory of calibration + quantization alone, and the quality of the int8
QDQ model it produces against fp32 on the same 16 held-out photos (never calibrated on):
cosine, SQNR and top-1 agreement of the 1000 logits, evaluated like bmbuild does (onnxruntime,
session.disable_quant_qdq=1, see bmbuild/toolchains/reference.py:ort_session).

Configurations
- bmbuild minmax / kl: the reference toolchain's calibrate + quantize steps, run directly
  with the recipe's calibrate/quantize parameters (streaming |x| histograms, 2048 bins; QDQ
  through quantize_static with bmbuild's ranges).
- ort minmax: onnxruntime.quantization.quantize_static, CalibrationMethod.MinMax.
- ort entropy: quantize_static cannot pass num_bins (its Entropy default of 128 bins is one
  candidate threshold, i.e. MinMax). So, as quantize_static does internally, this calls
  create_calibrator(..., CalibrationMethod.Entropy, extra_options={"symmetric": True,
  "num_bins": 2048, "num_quantized_bins": 255}), collect_data, compute_data, saves the ranges
  as a calibration cache and hands that cache to quantize_static. ORT's entropy histogram is
  signed (2048 bins over [-max, max]), so 255 quantized bins are the 255 levels of symmetric
  int8 (MXNet's setting); its default 128 would model 7-bit levels.
- every configuration: QDQ, QInt8 activations and weights, symmetric activations and weights
  (ActivationSymmetric, WeightSymmetric, CalibTensorRangeSymmetric), per-channel weights,
  calibration batches of 8 samples streamed from the image files by bmbuild.calib.
- bmbuild kl at 256 samples: the 64 calibration photos x 4 variants (as decoded, mirrored,
  brightness x0.8, mirrored + brightness x1.2; written as lossless PNGs and preprocessed by the
  same recipe settings) -- to show that memory does not grow with the number of samples.

One benchmark invocation measures everything; each configuration runs in a fresh subprocess of
this script (`--one <config>`) so that `ru_maxrss` is that configuration's own peak. Reported
"work MiB" = peak RSS at the end minus the peak after imports and loading the model (the
baseline); "process MiB" is the whole peak. The fp32 model comes from bmbuild itself
(`bmbuild run resnet.yaml --stage compile_fp32` in a temp workspace). Time ratios are against
ort minmax, measured in the same invocation.

Run: `python benchmarks/calibration.py` (about 3-5 minutes on 2 cores). Writes
benchmarks/results/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "calibration.md"
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name -> (kind, method, recipe file in the temp workspace)
    "ort minmax": ("ort", "minmax", "resnet.yaml"),
    "ort entropy (2048 bins)": ("ort", "entropy", "resnet.yaml"),
    "bmbuild minmax": ("bmbuild", "minmax", "resnet_minmax.yaml"),
    "bmbuild kl": ("bmbuild", "kl", "resnet_kl.yaml"),
    "bmbuild kl, 256 samples": ("bmbuild", "kl", "resnet_kl256.yaml"),
}
BASELINE = "ort minmax"
BATCH = 8


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the parent: workspace, fp32 model, configurations, table ------------------------------------

def prepare_workspace(ws: Path) -> dict[str, str]:
    """Copy the recipe and its data, build compile_fp32 with bmbuild, write recipe variants."""
    recipes = ws / "recipes"
    shutil.copytree(ROOT / "recipes" / "models", recipes / "models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes" / "data" / "photos", recipes / "data" / "photos")
    text = (ROOT / "recipes" / "resnet.yaml").read_text()
    (recipes / "resnet.yaml").write_text(text)
    env = {**os.environ, "BMBUILD_CACHE_DIR": str(ws / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bmbuild", "run", "recipes/resnet.yaml", "--stage",
                    "compile_fp32", "--plain"], cwd=ws, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"compile_fp32 (bmbuild, ResNet-18 export + checks): {time.perf_counter() - started:.1f}s",
          flush=True)
    assert "method: kl" in text and "samples: 64" in text
    (recipes / "resnet_minmax.yaml").write_text(text.replace("method: kl", "method: minmax"))
    (recipes / "resnet_kl.yaml").write_text(text)
    augmented = write_augmented(recipes)
    (recipes / "resnet_kl256.yaml").write_text(
        text.replace("data: data/photos ", f"data: data/{augmented} ")
            .replace("samples: 64", "samples: 256").replace("  cmp: true\n  cmp_samples: 16", "  cmp: false"))
    return env


def write_augmented(recipes: Path) -> str:
    """256 PNGs from the 64 calibration photos (disjoint from the held-out ones)."""
    import numpy as np
    from PIL import Image

    from bmbuild.calib.images import decode_image
    from bmbuild.recipe import load_recipe
    from bmbuild.calib.feeds import split

    calib, _ = split(load_recipe(recipes / "resnet.yaml").recipe)
    folder = recipes / "data" / "photos256"
    folder.mkdir()
    for ref in calib:
        rgb = decode_image(ref.path, 3)
        variants = {"a": rgb, "b": rgb[:, ::-1],
                    "c": np.clip(rgb * 0.8 + 0.5, 0, 255).astype(np.uint8),
                    "d": np.clip(rgb[:, ::-1] * 1.2 + 0.5, 0, 255).astype(np.uint8)}
        for tag, pixels in variants.items():
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{ref.path.stem}_{tag}.png")
    assert len(list(folder.iterdir())) == 256
    return folder.name


def run_config(name: str, ws: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", name, "--workspace", str(ws)],
                          cwd=ws, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {name}: {result['wall_s']:.1f}s ({result['cpu_s']:.1f}s CPU), work {result['work_mib']:.0f} MiB, "
          f"cos {result['cos']:.4f}", flush=True)
    return result


def table(results: list[dict]) -> str:
    base = next(r for r in results if r["config"] == BASELINE)
    lines = ["| config | samples | wall s | CPU s | time ratio (wall / CPU) | peak RSS MiB (work) | "
             "RSS ratio | process peak MiB | cos | SQNR dB | top-1 agree | T / max abs(x): median, min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['samples']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['wall_s'] / base['wall_s']:.2f}x / {r['cpu_s'] / base['cpu_s']:.2f}x | "
            f"{r['work_mib']:.0f} | {r['work_mib'] / base['work_mib']:.2f}x | {r['peak_mib']:.0f} | "
            f"{r['cos']:.4f} | {r['sqnr']:.2f} | {r['top1']:.3f} ({r['agree']}/{r['held_out']}) | "
            + ("1, 1 (by construction)" if r["clip"] is None else f"{r['clip'][0]:.3f}, {r['clip'][1]:.3f}")
            + " |")
    return "\n".join(lines)


def main_parent(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    started = time.perf_counter()
    print("One benchmark invocation; each configuration runs in a fresh subprocess of this script "
          "so that its peak RSS (ru_maxrss) is its own.", flush=True)
    with tempfile.TemporaryDirectory(prefix="bmbuild-calib-bench-") as tmp:
        ws = Path(tmp)
        env = prepare_workspace(ws)
        results = [run_config(name, ws, env) for name in (args.configs or list(CONFIGS))]
    total = time.perf_counter() - started
    text = "\n".join([
        "# int8 calibration: bmbuild vs onnxruntime quantize_static",
        "",
        f"ResNet-18 (recipes/resnet.yaml, fp32 ONNX from `bmbuild run --stage compile_fp32`), "
        f"calibrated on the recipe's 64 photos, compared int8 vs fp32 on its 16 held-out photos. "
        f"Generated by `python benchmarks/calibration.py` in {total:.0f}s "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"onnxruntime {version('onnxruntime')}, torch {version('torch')}).",
        "",
        table(results),
        "",
        "- wall s / CPU s / peak RSS: calibration + quantization only, each configuration in a "
        "fresh subprocess of one benchmark invocation; CPU s = user + system time of that work "
        "(steadier than wall time on a busy machine); work MiB = ru_maxrss at the end minus "
        "ru_maxrss after imports and loading the fp32 model. Ratios are against ort minmax.",
        "- cos / SQNR: all 16x1000 held-out logits pooled; top-1 agree: argmax int8 == argmax fp32 "
        "(onnxruntime, `session.disable_quant_qdq=1`, as bmbuild compares).",
        "- every configuration: QDQ, S8 activations and S8 per-channel weights, symmetric, "
        "batches of 8 streamed from the JPEG files through bmbuild.calib.",
        "- ort entropy: `create_calibrator(Entropy, extra_options={symmetric: True, num_bins: 2048, "
        "num_quantized_bins: 255})` + `compute_data()`, ranges passed to `quantize_static` as its "
        "calibration cache (quantize_static itself cannot set num_bins; its default 128 bins give "
        "the MinMax result). ORT keeps every intermediate output of every sample until "
        "compute_data().",
        "- T / max abs(x): each calibrated tensor's threshold over its largest abs(x) on the calibration "
        "set, median and minimum over the tensors (how much the method clips).",
        "- ort entropy clips hard (low T / max abs(x), low SQNR): its histogram is signed, so every "
        "exact zero of a ReLU output lands in its centre bin, and that spike pulls the KL search "
        "to small thresholds (on this model ReLU outputs were cut to 0.12-0.37 of their max). "
        "bmbuild's kl flattens the zero bin of its |x| histogram (bmbuild/calib/methods.py).",
        "- bmbuild kl, 256 samples: the 64 calibration photos x {as decoded, mirrored, brightness "
        "x0.8, mirrored + x1.2} as PNGs, same preprocessing; compared on the same 16 held-out photos.",
    ]) + "\n"
    print()
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


# --- one configuration, in its own process -------------------------------------------------------

class Reader:
    """onnxruntime CalibrationDataReader over bmbuild's preprocessed, streamed batches."""

    def __init__(self, refs, cfg, shape, input_name: str):
        self.args = (refs, cfg, shape)
        self.input_name = input_name
        self.rewind()

    def rewind(self) -> None:
        from bmbuild.calib.dataset import iter_batches

        refs, cfg, shape = self.args
        self._it = iter_batches(refs, cfg, shape, BATCH)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def __len__(self) -> int:
        return -(-len(self.args[0]) // BATCH)


def ort_quantize(kind: str, fp32: Path, target: Path, reader: Reader, tmp: Path) -> list[float] | None:
    """Quantize with onnxruntime; for entropy, also T / max|x| of every calibrated tensor."""
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True}
    common = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                  weight_type=QuantType.QInt8, per_channel=True, extra_options=options)
    if kind == "minmax":
        quantize_static(str(fp32), str(target), reader, calibrate_method=CalibrationMethod.MinMax, **common)
        return None  # symmetric minmax: T = max|x| by construction
    calibrator = create_calibrator(fp32, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": 2048,
                                                  "num_quantized_bins": 255})
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    ratios = []
    for name, (_hist, _edges, low, high, *_rest) in calibrator.collector.histogram_dict.items():
        absmax = max(abs(float(low)), abs(float(high)))
        if absmax > 0 and name in ranges.data:
            threshold = max(abs(float(np.ravel(v)[0])) for v in ranges.data[name].range_value)
            ratios.append(threshold / absmax)
    del calibrator
    cache = tmp / "entropy_ranges.json"
    save_tensors_data(ranges, cache)
    quantize_static(str(fp32), str(target), None, calibration_cache_path=str(cache),
                    calibrate_method=CalibrationMethod.Entropy, **common)
    return ratios


def bmbuild_quantize(loaded, fp32_dir: Path, tmp: Path) -> tuple[Path, list[float]]:
    """bmbuild's calibrate + quantize; the int8 model and T / max|x| of every table row."""
    from bmbuild.stagelog import StageLog
    from bmbuild.stages import calibrate as calibrate_stage
    from bmbuild.stages import quantize as quantize_stage
    from bmbuild.stagecontext import StageContext
    from bmbuild.steps import run_steps
    from bmbuild.toolchains.reference import ReferenceToolchain

    recipe = loaded.recipe
    outputs = {}
    for stage, inputs in ((calibrate_stage.STAGE, {"compile_fp32": fp32_dir}),
                          (quantize_stage.STAGE, {"compile_fp32": fp32_dir})):
        out, work = tmp / stage.name, tmp / f"{stage.name}.work"
        out.mkdir()
        work.mkdir()
        log = StageLog(tmp / f"{stage.name}.log")
        ctx = StageContext(loaded, stage.params(recipe), {**inputs, **outputs}, out, work, log, None)
        run_steps(ctx, ReferenceToolchain().steps(stage.name, ctx), stage.name)
        log.close()
        outputs[stage.name] = out
    from bmbuild.calib.table import read_table
    from bmbuild.artifacts import table_name

    rows = read_table(outputs["calibrate"] / table_name(recipe)).values()
    ratios = [t / max(abs(lo), abs(hi)) for t, lo, hi in rows if max(abs(lo), abs(hi)) > 0]
    return outputs["quantize"] / f"{recipe.name}.int8.onnx", ratios


def compare(fp32: Path, int8: Path, holdout, cfg, shape) -> dict:
    import numpy as np

    from bmbuild.calib.dataset import iter_batches
    from bmbuild.compare import pooled_top1, similarity
    from bmbuild.toolchains.reference import ort_session, run_session

    ref_session, test_session = ort_session(fp32, 0), ort_session(int8, 0)
    pairs = []
    for batch in iter_batches(holdout, cfg, shape, 4):
        pairs.append((run_session(ref_session, [batch])[0], run_session(test_session, [batch])[0]))
    ref = np.concatenate([p[0] for p in pairs])
    test = np.concatenate([p[1] for p in pairs])
    sim = similarity(ref, test)
    top1 = pooled_top1(pairs)
    return {"cos": sim.cos, "sqnr": sim.sqnr, "top1": top1, "agree": round(top1 * len(ref)),
            "held_out": len(ref)}


def main_one(name: str, ws: Path) -> None:
    import numpy as np  # (imports first: they belong to the baseline)
    import onnx
    import onnxruntime  # noqa: F401
    import onnxruntime.quantization  # noqa: F401

    import bmbuild.calib  # noqa: F401
    import bmbuild.toolchains.reference_int8  # noqa: F401
    from bmbuild.recipe import load_recipe
    from bmbuild.calib.feeds import split

    kind, method, recipe_file = CONFIGS[name]
    loaded = load_recipe(ws / "recipes" / recipe_file)
    reference = load_recipe(ws / "recipes" / "resnet.yaml").recipe  # the 16 held-out photos
    calib, _ = split(loaded.recipe)
    _, holdout = split(reference)
    fp32_dir = ws / "build" / "resnet18" / "compile_fp32"
    fp32 = fp32_dir / "resnet18.onnx"
    model = onnx.load(str(fp32))  # noqa: F841  (the model load belongs to the baseline)
    baseline = max_rss_mib()

    tmp = Path(tempfile.mkdtemp(prefix="one-", dir=ws))
    cpu = cpu_seconds()
    started = time.perf_counter()
    if kind == "bmbuild":
        int8, ratios = bmbuild_quantize(loaded, fp32_dir, tmp)
    else:
        int8 = tmp / "ort.int8.onnx"
        reader = Reader(calib, loaded.recipe.calibration, loaded.recipe.sample_shape(0), "input")
        ratios = ort_quantize(method, fp32, int8, reader, tmp)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    peak = max_rss_mib()

    quality = compare(fp32_dir / "resnet18.fp32.onnx", int8, holdout, reference.calibration,
                      reference.sample_shape(0))
    print(json.dumps({"config": name, "samples": len(calib), "wall_s": wall, "cpu_s": cpu, "peak_mib": peak,
                      "baseline_mib": baseline, "work_mib": peak - baseline, **quality,
                      "clip": None if ratios is None else
                      [float(np.median(ratios)), float(np.min(ratios)), len(ratios)]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=list(CONFIGS), help="run one configuration (internal)")
    parser.add_argument("--workspace", type=Path, help="with --one: the prepared workspace")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="a subset (default: all)")
    args = parser.parse_args()
    if args.one:
        main_one(args.one, args.workspace)
    else:
        if args.configs and BASELINE not in args.configs:
            args.configs.insert(0, BASELINE)
        main_parent(args)


if __name__ == "__main__":
    main()
