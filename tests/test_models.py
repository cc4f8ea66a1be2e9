"""The plain-torch model factories under recipes/models and the committed recipe assets.

``recipes/`` is not a package, so the model files are imported by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _load(name: str):
    path = RECIPES / "models" / f"{name}.py"
    module_name = f"_recipes_models_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def resnet18(**kw):
    return _load("resnet").resnet18(**kw)


def mobilenet_v2(**kw):
    return _load("mobilenet").mobilenet_v2(**kw)


def digits_cnn(**kw):
    return _load("digits_cnn").digits_cnn(**kw)


# factory, kwargs, example input shape, expected output shape
CASES = {
    "resnet18": (resnet18, {}, (1, 3, 64, 64), (1, 1000)),
    "mobilenet_v2": (mobilenet_v2, {}, (1, 3, 96, 96), (1, 1000)),
    "digits_cnn": (digits_cnn, {}, (2, 1, 8, 8), (2, 10)),
}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    factory, kwargs, in_shape, out_shape = CASES[request.param]
    return request.param, factory, kwargs, in_shape, out_shape


def test_factory_is_deterministic_and_leaves_global_rng_alone(case):
    _, factory, kwargs, _, _ = case
    before = torch.random.get_rng_state()
    a = factory(seed=0, **kwargs).state_dict()
    b = factory(seed=0, **kwargs).state_dict()
    c = factory(seed=1, **kwargs).state_dict()
    assert torch.equal(before, torch.random.get_rng_state())
    assert _same_state(a, b)
    assert a.keys() == c.keys()
    assert not _same_state(a, c)


def test_forward_shape_eval_mode_and_trace(case):
    _, factory, kwargs, in_shape, out_shape = case
    model = factory(**kwargs)
    assert not model.training
    x = torch.rand(in_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(x)
        traced = torch.jit.trace(model, x)
        traced_out = traced(x)
    assert tuple(eager.shape) == out_shape
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(traced_out, eager, rtol=1e-5, atol=1e-5)


def test_num_classes_is_honoured():
    with torch.no_grad():
        assert digits_cnn(num_classes=3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
        assert mobilenet_v2(num_classes=7)(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    assert resnet18(num_classes=5).fc.out_features == 5


def test_resnet18_matches_torchvision_layout():
    sd = resnet18().state_dict()
    # torchvision's resnet18: 62 parameters + 60 BatchNorm buffers.
    assert len(sd) == 122
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.num_batches_tracked": (),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.0.downsample.0.weight": (256, 128, 1, 1),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd
    names = [n for n, _ in resnet18().named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]


def test_mobilenet_uses_depthwise_convolutions():
    convs = [m for m in mobilenet_v2().modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert any(isinstance(m, torch.nn.ReLU6) for m in mobilenet_v2().modules())


def test_committed_digits_weights_load_and_are_accurate():
    ckpt = torch.load(RECIPES / "digits" / "digits_cnn.pt", weights_only=True)
    assert set(ckpt) == {"epoch", "state_dict"}
    raw = ckpt["state_dict"]
    assert raw and all(k.startswith("module.") for k in raw)
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    model = digits_cnn()
    model.load_state_dict(state, strict=True)
    model.eval()

    with np.load(RECIPES / "data" / "digits.npz") as data:
        x_test, y_test = data["x_test"], data["y_test"]
        assert data["x_train"].shape == (1437, 1, 8, 8) and data["x_train"].dtype == np.float32
        assert data["y_train"].dtype == np.int64
    assert x_test.shape == (360, 1, 8, 8) and x_test.dtype == np.float32
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    assert (pred == y_test).mean() >= 0.95


def test_committed_photos():
    from PIL import Image

    photos = sorted((RECIPES / "data" / "photos").glob("*.jpg"))
    assert 80 <= len(photos) <= 128
    assert sum(p.stat().st_size for p in photos) < 3_500_000
    for path in photos[:: max(1, len(photos) // 8)]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (256, 256)
