"""The recipe's PyTorch model, built and run: weights, seeded example inputs, eager execution on
numpy arrays, and the vendor's torch note.

Shared by the trace stage and the toolchains (which export and compare against the eager
module), so it sits below both. torch and numpy are imported inside the functions only.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.errors import StageFailed
from bmbuild.modelsource import load_callable
from bmbuild.recipe import Recipe

if TYPE_CHECKING:
    from bmbuild.stagecontext import StageContext

# sophon-demo FAQ (sophgo-toolchains.md): the vendor recommends tracing under torch 1.8 for NNTC.
# Noted, not enforced: newer versions mostly work, but bmnetp may reject operators they emit.
NNTC_TORCH = "1.8"


def torch_note(version: str) -> str:
    """A note when `version` is not the torch the vendor recommends for NNTC ('' when it is)."""
    release = version.split("+")[0]
    if release == NNTC_TORCH or release.startswith(NNTC_TORCH + "."):
        return ""
    return f"torch {release}, NNTC recommends {NNTC_TORCH}"


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
                            recipe.source.callable_name or "")
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
    """Seeded inputs of the recipe's shapes and dtypes at one batch size (numpy arrays); inputs
    with a constant value get that value."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for shape, spec in zip(recipe.shapes_for_batch(batch), recipe.input_specs):
        if spec.value is not None:
            # np.array, not np.ascontiguousarray: that makes a 0-d value 1-d
            arrays.append(np.array(np.broadcast_to(np.asarray(spec.value, dtype=spec.dtype), tuple(shape))))
        elif spec.dtype.startswith("float"):
            arrays.append(np.asarray(rng.standard_normal(shape), dtype=spec.dtype))
        else:
            arrays.append(np.asarray(rng.integers(0, 10, size=shape), dtype=spec.dtype))
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
