"""`bmbuild import tpu-perf`: a tpu-perf model zoo (sophgo/model-zoo layout) as bmbuild recipes.

Each model config becomes one recipe: its NNTC commands (`fp_compile_options` for bmnetp/bmneto,
`cali` for `ufw.cali.cali_model`, `bmnetu_options` with `bmnetu_batch_sizes`) or its tpu-mlir
commands (`mlir_transform`, `mlir_calibration`, `deploy`) are parsed flag by flag into recipe keys.
A flag bmbuild has no equivalent for is *untranslated* and named in the report (and in the recipe's
header); a flag that only moves files around or only affects tpu-perf's own checks is *ignored* with
a note. A config whose framework bmbuild does not build (Caffe, TensorFlow, Paddle, ...) is skipped.

`translate_file` is pure (a config in, recipe data and a report out; it reads a quantize table if
one is named); `import_zoo` walks a zoo and `write_import` writes the recipes, a `defaults.yaml`
(the shared target) and a `bmbuild.yaml` whose `vars` are the root config's dataset variables.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bmbuild.errors import BmbuildError, DataError
from bmbuild.calib.config import CalibrationConfig
from bmbuild.calib.sources import folder_files, is_image
from bmbuild.fileinfo import onnx_graph_inputs
from bmbuild.recipe import INPUT_DTYPES, Int8, default_input_names
from bmbuild.importers.tpu_perf.mlir import translate_mlir
from bmbuild.importers.tpu_perf.nntc import translate_nntc
from bmbuild.importers.tpu_perf.translator import TARGETS, Skip, Translation, Translator, append
from bmbuild.importers.tpu_perf.tree import (
    ROOT_VAR,
    Build,
    ConfigError,
    Zoo,
    config_files,
    find_root,
    is_target_key,
    open_zoo,
    read_builds,
)

DEFAULT_OUT = Path("recipes/imported")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Config keys tpu-perf's build reads that have no effect on the bmodels, and why.
RUNTIME_KEYS = {
    "gops": "benchmark metadata", "harness": "accuracy harness of tpu_perf.precision_benchmark",
    "dataset": "accuracy harness data", "precision": "selects the model for tpu_perf's precision runs",
    "time": "selects the model for tpu_perf's --time runs", "runtime_cmp": "tpu_perf.run option",
    "iter_opt": "bmrt_test option", "memory_hint": "tpu-perf's scheduling",
    "build_single_process": "tpu-perf's scheduling", "fp_outdir_template": "tpu-perf's output folder names",
    "int8_outdir_template": "tpu-perf's output folder names", "num_core": "multi-core runs (default 1)",
    "input": "tpu_perf.make_lmdb input (used through $(lmdb_out))",
}
INTERNAL_KEYS = {"name", "shapes", "shape", "shape_key", "shape_param", "home", "workdir", "target", "num_core",
                 "bmnetu_batch_sizes", "fp_batch_sizes", "ignore", "config_fn", "lmdb_out"}
NNTC_KEYS = {"fp_compile_options", "cali", "time_only_cali", "bmnetu_options", "fp_loops", "int8_loops",
             "build_env", "concat_files"}
MLIR_KEYS = {"mlir_transform", "mlir_calibration", "deploy", "mlir_build_env"}


# --- keys of the config ----------------------------------------------------------------------------
def report_keys(t: Translator, written: dict[str, Any]) -> None:
    """Every key of the config as written is translated, a variable, or noted as ignored."""
    used = t.build.scope.used
    handled = NNTC_KEYS if t.build.mode == "nntc" else MLIR_KEYS
    for key in map(str, written):
        if key in handled or key in INTERNAL_KEYS or key in used:
            continue
        if is_target_key(key):
            if t.zoo.target not in key.split("/"):
                t.note(key, f"block for another target (importing for {t.zoo.target})")
            continue
        if key.startswith("+"):
            continue
        why = RUNTIME_KEYS.get(key)
        if why:
            continue   # runtime and scheduling settings: listed in the README, not per recipe
        other = NNTC_KEYS | MLIR_KEYS
        t.note(key, "a command of the other toolchain" if key in other else "not read by tpu-perf's build")


# --- one config file ------------------------------------------------------------------------------
def recipe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "model"
    return cleaned if NAME_PATTERN.match(cleaned) else f"m{cleaned}"


def recipe_path(file: Path, zoo: Zoo, out: Path, name: str) -> Path:
    folder = file.parent.resolve()
    relative = folder.relative_to(zoo.root) if folder == zoo.root or zoo.root in folder.parents else Path()
    return out / relative / f"{name}.yaml"


def translate_file(file: Path, zoo: Zoo, out: Path) -> list[Translation]:
    """The recipes one model config stands for (one per toolchain flavour it has)."""
    try:
        builds, written, reason = read_builds(file, zoo)
    except ConfigError as exc:
        return [Translation(file, _written_name(file), skipped=str(exc))]
    if not builds:
        return [Translation(file, str(written.get("name") or _written_name(file)),
                            skipped=reason or "nothing to build", ignored=True)]
    by_flavour: dict[str, list[Build]] = {}
    for build in builds:
        by_flavour.setdefault(build.mode, []).append(build)
    results = []
    for mode, group in by_flavour.items():
        name = recipe_name(str(group[0].config["name"]) + ("-mlir" if mode == "mlir" and len(by_flavour) > 1 else ""))
        results.append(_translate_group(file, zoo, group, name, recipe_path(file, zoo, out, name), written))
    return results


def _written_name(file: Path) -> str:
    return file.parent.name if file.name == "config.yaml" else file.name.removesuffix(".config.yaml")


def _translate_group(file: Path, zoo: Zoo, builds: list[Build], name: str, path: Path,
                     written: dict[str, Any]) -> Translation:
    """One build per shape of one config, merged into one recipe (batch sizes or variants)."""
    parts: list[Translator] = []
    try:
        for build in builds:
            t = Translator(build, zoo, path.parent.resolve())
            (translate_nntc if build.mode == "nntc" else translate_mlir)(t)
            report_keys(t, written)
            parts.append(t)
    except (Skip, ConfigError, ValueError) as exc:
        return Translation(file, name, skipped=str(exc))
    result = Translation(file, name, hint=parts[0].hint or None)
    for t in parts:
        for item in t.untranslated:
            append(result.untranslated, item)
        for item in t.notes:
            append(result.notes, item)
    if str(builds[0].config["name"]) != name and not name.endswith("-mlir"):
        result.notes.insert(0, f"name: {builds[0].config['name']!r} is not a bmbuild recipe name; using {name!r}")
    recipe = _merge_shapes([t.recipe for t in parts], builds)
    _inputs(recipe, result, path.parent.resolve())
    data, files = _calibration_files(recipe, zoo)  # listed once for the three checks
    _absent_calibration_data(data, files, result)
    _arrays_fed_as_they_are(recipe, data, files, result)
    _hold_out_comparison_samples(recipe, data, files, result)
    result.recipe = _ordered(name, recipe, file, zoo)
    return result


def _graph_inputs(recipe: dict[str, Any], recipe_dir: Path) -> list[Any] | None:
    """The ONNX source's graph inputs, None when it is not ONNX or cannot be read (an LFS pointer,
    a file not fetched: `validate` names it)."""
    source = recipe.get("source") or {}
    if source.get("framework") != "onnx" or "${" in str(source.get("model")):
        return None
    try:
        return onnx_graph_inputs((recipe_dir / str(source.get("model"))).resolve())
    except DataError:
        return None


def _inputs(recipe: dict[str, Any], result: Translation, recipe_dir: Path) -> None:
    """`inputs` as the model has them. bmbuild feeds inputs by name (`input`, `input0`, ... unless
    named) and as float32 unless told, while tpu-perf's commands name neither: the names and
    element types come from the ONNX graph when it can be read."""
    shapes = recipe.get("shapes") or []
    graph = _graph_inputs(recipe, recipe_dir)
    if "inputs" in recipe or (graph is not None and len(graph) != len(shapes)):
        return
    unbatched = len({s[0] for s in shapes if s}) >= 2 and len(recipe.get("batch_sizes") or [1]) == 1
    names = [item.name for item in graph] if graph is not None else default_input_names(len(shapes))
    specs: list[dict[str, Any]] = [{"name": name} for name in names]
    for spec, item in zip(specs, graph or [], strict=False):
        if item.dtype != "float32" and item.dtype in INPUT_DTYPES:
            spec["dtype"] = item.dtype
    if unbatched:
        firsts = ", ".join(str(s[0]) if s else "[]" for s in shapes)
        result.notes.append(f"shapes: the inputs' first dimensions differ ({firsts}), so none is a batch axis: "
                            "compiled as written (inputs[].batch_axis: null)")
        for spec in specs:
            spec["batch_axis"] = None
    elif names == default_input_names(len(shapes)) and all(len(spec) == 1 for spec in specs):
        return      # bmbuild's defaults already
    recipe["inputs"] = specs


def _merge_shapes(recipes: list[dict[str, Any]], builds: list[Build]) -> dict[str, Any]:
    """tpu-perf builds each entry of `shapes` on its own. Entries that differ in batch only become
    batch sizes of one recipe; others become variants (name_<shape key>)."""
    first = recipes[0]
    if len(recipes) == 1:
        return first
    shapes = [r["shapes"] for r in recipes]
    rest = [{k: v for k, v in r.items() if k not in ("shapes", "batch_sizes")} for r in recipes]
    same_rest = all(r == rest[0] for r in rest)
    same_dims = all([s[1:] for s in shape] == [s[1:] for s in shapes[0]] for shape in shapes)
    merged = copy.deepcopy(first)
    if same_rest and same_dims:
        batches = sorted({b for r in recipes for b in (r.get("batch_sizes") or [r["shapes"][0][0]])})
        merged["batch_sizes"] = batches
        return merged
    merged["variants"] = [{"suffix": b.shape_key or f"v{i}", **{k: v for k, v in r.items() if v != first.get(k)}}
                          for i, (r, b) in enumerate(zip(recipes, builds, strict=True))]
    return merged


def _calibration_folder(recipe: dict[str, Any], zoo: Zoo) -> str | None:
    """calibration.data of an INT8 recipe with the zoo's ${vars} expanded."""
    data = (recipe.get("calibration") or {}).get("data")
    if recipe.get("prec") != "INT8" or not isinstance(data, str):
        return None
    for name, value in zoo.variables.items():
        data = data.replace("${" + name + "}", value)
    return data


def _calibration_files(recipe: dict[str, Any], zoo: Zoo) -> tuple[str | None, list[Path] | None]:
    """The calibration folder (None: not INT8) and its sample files (None when the recipe
    calibrates on no folder here: a folder not fetched, a single file)."""
    data = _calibration_folder(recipe, zoo)
    try:
        return data, folder_files(Path(data)) if data is not None and Path(data).is_dir() else None
    except DataError:
        return data, None


def _absent_calibration_data(data: str | None, files: list[Path] | None, result: Translation) -> None:
    """Datasets are fetched apart from a zoo's configs (sophgo/model-zoo ships a 100-image caliset,
    not val2017): the report says so at import, as it does for model files."""
    if data is None or "${" in data or files:
        return
    what = "holds no .jpg/.jpeg/.png/.npy/.npz files" if Path(data).is_dir() else "is not present"
    result.notes.append(f"calibration.data: {data} {what} (a dataset fetched apart from the zoo?): "
                        "`bmbuild validate` fails until the data is there")


def _arrays_fed_as_they_are(recipe: dict[str, Any], data: str | None, files: list[Path] | None,
                            result: Translation) -> None:
    """A tpu-mlir --dataset of .npz/.npy files holds model inputs, which run_calibration feeds as
    they are (model_transform's --mean/--scale/--resize_dims apply to images): the recipe has no
    calibration.preprocess then, as bmbuild refuses one for arrays."""
    if not files or any(is_image(path) for path in files):
        return
    preprocess = recipe["calibration"].pop("preprocess", None)
    if preprocess:
        result.notes.append(f"calibration.preprocess: {data} holds .npy/.npz arrays, fed as they are "
                            "(tpu-mlir applies its preprocessing to images only)")


def _hold_out_comparison_samples(recipe: dict[str, Any], data: str | None, files: list[Path] | None,
                                 result: Translation) -> None:
    """tpu-perf calibrates on at most the files there are (a 100-image caliset, `--cali_iterations
    100`; a one-file npz set, `--input_num 10`); bmbuild holds `int8.cmp_samples` of them out to
    compare int8 with fp32 and needs calibration.samples + those. Where the folder has no room for
    both, calibration takes what is left, or the comparison takes half (none of a single sample)."""
    calibration = recipe.get("calibration") or {}
    samples = calibration.get("samples", CalibrationConfig.model_fields["samples"].default)
    if not isinstance(samples, int) or files is None:
        return
    count = len(files)
    int8 = dict(recipe.get("int8") or {})
    held_out = int(int8.get("cmp_samples", Int8.model_fields["cmp_samples"].default)) if int8.get("cmp", True) else 0
    if not count or samples + held_out <= count:
        return
    kept = held_out if count > held_out else count // 2
    calibration["samples"] = min(samples, count - kept)
    why = f"calibration.samples: {data} holds {count} samples"
    if kept == held_out:
        why += (f" and bmbuild holds {held_out} out for the int8 comparison (int8.cmp_samples)" if held_out
                else " (tpu-perf calibrates on at most those)")
    elif kept:
        int8["cmp_samples"] = kept
        why += (f" (tpu-perf calibrates on at most those) and bmbuild holds {kept} out for the int8 comparison "
                f"(int8.cmp_samples, not {held_out})")
    else:
        int8["cmp"] = False
        why += " (tpu-perf calibrates on at most those), none left for bmbuild's int8 comparison (int8.cmp: false)"
    if int8:
        recipe["int8"] = int8
    result.notes.append(f"{why}, so it calibrates on {calibration['samples']}, not {samples}")


KEY_ORDER = ("name", "description", "source", "shapes", "inputs", "output_names", "target", "toolchain", "prec",
             "batch_sizes", "fp32", "calibration", "int8", "variants")


def _ordered(name: str, recipe: dict[str, Any], file: Path, zoo: Zoo) -> dict[str, Any]:
    """Recipe keys in the README's order; the target only where it differs from defaults.yaml."""
    recipe = dict(recipe)
    recipe["name"] = name
    recipe["description"] = f"imported from tpu-perf {_relative(file, zoo)}"
    if recipe.get("target") == zoo.target:
        del recipe["target"]
    if recipe.get("prec") == "FP32":
        del recipe["prec"]
    return {key: recipe[key] for key in KEY_ORDER if key in recipe}


def _relative(file: Path, zoo: Zoo) -> str:
    try:
        return str(file.resolve().relative_to(zoo.root))
    except ValueError:
        return str(file)


# --- a whole zoo ----------------------------------------------------------------------------------
@dataclass
class ImportResult:
    zoo: Zoo
    out: Path
    translations: list[Translation]

    def count(self, status: str) -> int:
        return sum(1 for t in self.translations if t.status == status)

    @property
    def problems(self) -> int:
        return self.count("partial") + self.count("skipped")


class ImportIncomplete(BmbuildError):
    """--strict: some configs were not imported completely (exit 2)."""


def import_zoo(path: Path, out: Path = DEFAULT_OUT, target: str = "BM1684", root: Path | None = None
               ) -> ImportResult:
    """Translate every model config below `path` (a tpu-perf root or a folder inside one)."""
    path = Path(path)
    if not path.exists():
        raise BmbuildError(f"{path}: no such file or folder")
    if target not in TARGETS:
        raise BmbuildError(f"target {target}: bmbuild builds for {', '.join(TARGETS)}")
    folder = path.parent if path.is_file() else path
    zoo_root = Path(root).resolve() if root else find_root(folder)
    try:
        zoo = open_zoo(zoo_root, target)
    except ConfigError as exc:
        raise BmbuildError(f"{zoo_root}: root config: {exc}") from None
    files = [path.resolve()] if path.is_file() else config_files(path, zoo)
    translations: list[Translation] = []
    for file in files:
        translations += translate_file(file, zoo, out.resolve())
    _check_unique(translations, zoo)
    return ImportResult(zoo, out, translations)


def _check_unique(translations: list[Translation], zoo: Zoo) -> None:
    seen: dict[str, Path] = {}
    for t in translations:
        if t.recipe is None:
            continue
        if t.name in seen:
            t.skipped = f"recipe name {t.name!r} is also used by {_relative(seen[t.name], zoo)}"
            t.recipe = None
        else:
            seen[t.name] = t.config


def write_import(result: ImportResult) -> list[Path]:
    """Write the recipes, defaults.yaml and bmbuild.yaml; returns the files written."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in result.translations:
        if t.recipe is None:
            continue
        path = recipe_path(t.config, result.zoo, out, t.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_recipe(t, result.zoo), encoding="utf-8")
        written.append(path)
    written.append(_write_defaults(result))
    written.append(_write_workspace(result))
    return written


def render_recipe(t: Translation, zoo: Zoo) -> str:
    assert t.recipe is not None
    lines = [f"# Imported from tpu-perf {_relative(t.config, zoo)} (target {zoo.target}) by",
             "# `bmbuild import tpu-perf`; importing again overwrites this file."]
    if t.untranslated:
        lines.append("# Not translated (this recipe builds without them):")
        lines += [f"#   - {item}" for item in t.untranslated]
    text = "\n".join(lines) + "\n" + _dump(t.recipe)
    if t.hint:
        text += "# To build int8, add calibration images and uncomment:\n"
        text += "".join(f"# {line}\n" for line in _dump(t.hint).splitlines())
    return text


def _dump(data: Any, flow: bool | None = None) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=110, allow_unicode=True)


def _write_defaults(result: ImportResult) -> Path:
    zoo = result.zoo
    path = result.out / "defaults.yaml"
    header = [f"# Shared by the recipes imported from tpu-perf {zoo.root} (`bmbuild import tpu-perf`).",
              f"# tpu-perf's --target ({zoo.target}) selects every config's per-target blocks."]
    ignored = [key for key in zoo.root_keys if key in RUNTIME_KEYS or key in ("data_dir", "default_cases")]
    if ignored:
        header.append(f"# Root config keys with no build effect, not imported: {', '.join(ignored)}.")
    path.write_text("\n".join(header) + "\n" + _dump({"target": zoo.target}), encoding="utf-8")
    return path


def _write_workspace(result: ImportResult) -> Path:
    """bmbuild.yaml `vars`: the root config's variables. Values already there win (a dataset moved)."""
    path = result.out / "bmbuild.yaml"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise BmbuildError(f"{path}: cannot update its vars: {exc}") from None
        data = loaded if isinstance(loaded, dict) else {}
    existing = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    data["vars"] = {**result.zoo.variables, **existing}
    header = (f"# Workspace of the recipes imported from tpu-perf {result.zoo.root}: its root config's\n"
              f"# variables, as ${{name}}; {ROOT_VAR} is tpu-perf's $(root). Run bmbuild from this folder.\n")
    path.write_text(header + _dump(data, flow=False), encoding="utf-8")
    return path


def render_report(result: ImportResult) -> list[str]:
    """One line per config, then its untranslated items and notes, then the summary."""
    lines = []
    for t in result.translations:
        where = _relative(t.config, result.zoo)
        if t.recipe is not None:
            target = recipe_path(t.config, result.zoo, result.out, t.name)
            lines.append(f"{t.status:<9} {where} -> {target}")
        else:
            lines.append(f"{t.status:<9} {where}: {t.skipped}")
        lines += [f"            untranslated: {item}" for item in t.untranslated]
        lines += [f"            note: {item}" for item in t.notes]
    lines.append(summary(result))
    return lines


def summary(result: ImportResult) -> str:
    parts = [f"{result.count(s)} {s}" for s in ("imported", "partial", "skipped")]
    ignored = result.count("ignored")
    text = f"{len(result.translations)} config(s): {', '.join(parts)}"
    return text + (f", {ignored} ignored (nothing to build)" if ignored else "")
