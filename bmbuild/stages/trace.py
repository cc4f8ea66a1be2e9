"""trace: load the PyTorch model on CPU in eval mode and `torch.jit.trace` it (what bmnetp takes).

The traced module is checked against eager execution on seeded inputs at every batch size,
so a trace that baked in control flow or a batch size fails here, with the numbers.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from bmbuild.errors import StageFailed
from bmbuild.modelsource import TORCH_LOCK, load_callable, local_imports
from bmbuild.recipe import LoadedRecipe, Recipe
from bmbuild.stages.base import Stage, StageContext

TRACE_RTOL = 1e-4
# sophon-demo FAQ (sophgo-toolchains.md): the vendor recommends tracing under torch 1.8 for NNTC.
# Noted, not enforced: newer versions mostly work, but bmnetp may reject operators they emit.
NNTC_TORCH = "1.8"


def torch_note(version: str) -> str:
    """A note when `version` is not the torch the vendor recommends for NNTC ('' when it is)."""
    release = version.split("+")[0]
    if release == NNTC_TORCH or release.startswith(NNTC_TORCH + "."):
        return ""
    return f"torch {release}, NNTC recommends {NNTC_TORCH}"


def _params(recipe: Recipe) -> dict[str, Any]:
    source = recipe.source
    return {
        "net_name": recipe.name,  # outputs are named after it
        "callable": source.callable_name,
        "kwargs": source.kwargs,
        "weights_key": source.weights.key if source.weights else None,
        "strip_prefix": source.weights.strip_prefix if source.weights else None,
        "shapes": recipe.shapes,
        "inputs": [spec.model_dump() for spec in recipe.input_specs],
        "batch_sizes": recipe.resolved_batch_sizes,
    }


def _inputs(loaded: LoadedRecipe) -> list[Path]:
    recipe = loaded.recipe
    model_file = (loaded.file.parent / recipe.source.model_file).resolve()
    files = [model_file, *local_imports(model_file)]
    if recipe.source.weights:
        files.append(recipe.source.weights.path)
    return files


def traced_path(out_dir: Path, recipe: Recipe) -> Path:
    return out_dir / f"{recipe.name}.pt"


def load_state_dict(path: Path, key: str | None, strip_prefix: str | None) -> dict[str, Any]:
    """Read weights safely (weights_only) from a plain state_dict or a checkpoint dict."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise StageFailed(f"cannot load weights {path} with weights_only=True: {exc}") from None
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise StageFailed(f"weights {path} have no key {key!r} (found: {found})")
        data = data[key]
    if not isinstance(data, dict):
        raise StageFailed(f"weights {path} hold {type(data).__name__}, not a state_dict")
    if strip_prefix:
        data = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in data.items()}
    return data


def _check_kwargs(ctx: StageContext, factory: Any) -> None:
    """source.kwargs the callable cannot take are a recipe error, not a traceback from its call
    (validate checks plain defs; this catches what only the imported callable tells)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to check: the call itself will tell
        return
    try:
        signature.bind(**ctx.recipe.source.kwargs)
    except TypeError as exc:
        raise ctx.loaded.error(f"{ctx.recipe.source.callable_name}(): {exc}", ("source", "kwargs")) from None


def build_model(ctx: StageContext) -> Any:
    """The recipe's model on CPU, eval mode, weights loaded with strict key matching."""
    import torch

    recipe = ctx.recipe
    factory = load_callable((ctx.loaded.file.parent / recipe.source.model_file).resolve(),
                            recipe.source.callable_name or "", display_name=str(recipe.source.model_file))
    _check_kwargs(ctx, factory)
    model = factory(**recipe.source.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise StageFailed(f"{recipe.source.model} returned {type(model).__name__}, not a torch.nn.Module")
    weights = recipe.source.weights
    if weights:
        state = load_state_dict(weights.path, weights.key, weights.strip_prefix)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise StageFailed(
                f"weights {weights.path.name} do not match the model: "
                f"missing {result.missing_keys[:5]} ({len(result.missing_keys)}), "
                f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
                + ("; set weights.strip_prefix" if any("." in k for k in result.unexpected_keys) else ""))
        ctx.log.info(f"loaded {len(state)} tensors from {weights.path}")
    return model.to("cpu").eval()


def example_inputs(recipe: Recipe, batch: int, seed: int) -> list[Any]:
    """Seeded inputs of the recipe's shapes and dtypes at one batch size (numpy arrays)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for shape, spec in zip(recipe.shapes_for_batch(batch), recipe.input_specs):
        if spec.dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(spec.dtype))
        else:
            arrays.append(rng.integers(0, 10, size=shape).astype(spec.dtype))
    return arrays


def _outputs_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _outputs_list(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _outputs_list(item)]
    return [value]


def run_torch(module: Any, arrays: list[Any]) -> list[Any]:
    """Run a torch module on numpy inputs; returns a flat list of numpy outputs."""
    import torch

    with torch.no_grad():
        out = module(*[torch.from_numpy(a) for a in arrays])
    return [t.detach().cpu().numpy() for t in _outputs_list(out)]


def run(ctx: StageContext) -> None:
    with TORCH_LOCK:
        _trace(ctx)


def _trace(ctx: StageContext) -> None:
    import torch

    from bmbuild.compare import similarity

    recipe = ctx.recipe
    model = build_model(ctx)
    first_batch = recipe.resolved_batch_sizes[0]
    example = [torch.from_numpy(a) for a in example_inputs(recipe, first_batch, seed=0)]
    ctx.log.info(f"tracing {recipe.source.model} with inputs {[list(t.shape) for t in example]}")
    with torch.no_grad():
        try:
            traced = torch.jit.trace(model, tuple(example), check_trace=False)
        except Exception as exc:  # tracing errors come from user model code
            raise StageFailed(f"torch.jit.trace failed: {type(exc).__name__}: {exc}") from None
    worst_rel = 0.0
    checks = {}
    for batch in recipe.resolved_batch_sizes:
        for seed in (1, 2):
            arrays = example_inputs(recipe, batch, seed)
            eager, trace_out = run_torch(model, arrays), run_torch(traced, arrays)
            if len(eager) != len(trace_out):
                raise StageFailed(f"traced model returns {len(trace_out)} outputs, eager {len(eager)}")
            for index, (a, b) in enumerate(zip(eager, trace_out)):
                if a.shape != b.shape:
                    raise StageFailed(f"batch {batch}: traced output {index} has shape {b.shape}, eager {a.shape}")
                sim = similarity(a, b)
                rel = sim.max_abs / max(float(abs(a).max()), 1e-12)
                worst_rel = max(worst_rel, rel)
                checks[f"batch{batch}/output{index}"] = sim.to_json()
                if rel > TRACE_RTOL:
                    raise StageFailed(
                        f"traced model differs from eager at batch {batch} (seed {seed}), output {index}: "
                        f"max abs error {sim.max_abs:.4g} (relative {rel:.3g} > {TRACE_RTOL}), cosine {sim.cos:.6f}"
                        " — data-dependent control flow is frozen by torch.jit.trace")
    out = traced_path(ctx.out_dir, recipe)
    traced.save(str(out))
    ctx.metrics.update({"trace_vs_eager_max_rel": worst_rel, "checks": checks, "torch": torch.__version__})
    note = torch_note(torch.__version__)
    if note:  # the console says it once per run for NNTC builds (cli.cmd_run)
        ctx.log.info(f"note: traced with {note} (bmnetp may reject operators newer versions emit)")
    ctx.log.info(f"traced == eager at batch sizes {recipe.resolved_batch_sizes} (max relative error {worst_rel:.3g})")


STAGE = Stage(
    name="trace",
    version="2",
    upstream=(),
    applies=lambda recipe: recipe.source.framework == "pytorch",
    params=_params,
    external_inputs=_inputs,
    run=run,
    summary=lambda m: f"traced == eager (max rel {m.get('trace_vs_eager_max_rel', 0):.2g})",
    uses_toolchain=False,
)
