"""Train the digits CNN on scikit-learn's bundled ``load_digits`` data (no download).

Run from the repository root::

    python recipes/digits/train.py

It writes two files, both committed:

* ``recipes/digits/digits_cnn.pt`` -- a checkpoint dict ``{"epoch": E, "state_dict": {...}}``
  whose state_dict keys carry a ``module.`` prefix, as if saved from
  ``torch.nn.DataParallel``. The digits recipe uses it to demonstrate
  ``weights.key: state_dict`` and ``weights.strip_prefix: "module."``. It loads with
  ``torch.load(path, weights_only=True)``.
* ``recipes/data/digits.npz`` -- the split used for training and evaluation:
  ``x_train``/``x_test`` (float32, N x 1 x 8 x 8, pixels scaled to [0, 1] by dividing by 16)
  and ``y_train``/``y_test`` (int64). Split: stratified 80/20, ``random_state=0``
  (1437 train / 360 test).

Everything is seeded and runs on a single thread (``torch.set_num_threads(1)``), so re-running
the script on the same machine reproduces the committed files byte for byte (the ``.pt``
zip records are prefixed with the file's stem, so write to the same file name to compare;
different CPUs or torch builds may differ in the last bits of the weights). It takes about
ten seconds on one CPU core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent
SEED = 0
EPOCHS = 15
BATCH_SIZE = 32
LR = 3e-3


def _load_model_factory():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipes_models_digits_cnn", RECIPES / "models" / "digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.digits_cnn


def load_split() -> dict[str, np.ndarray]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return {
        "x_train": np.ascontiguousarray(x_train, dtype=np.float32),
        "y_train": np.ascontiguousarray(y_train, dtype=np.int64),
        "x_test": np.ascontiguousarray(x_test, dtype=np.float32),
        "y_test": np.ascontiguousarray(y_test, dtype=np.int64),
    }


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=HERE / "digits_cnn.pt")
    parser.add_argument("--data", type=Path, default=RECIPES / "data" / "digits.npz")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    split = load_split()
    x_train = torch.from_numpy(split["x_train"])
    y_train = torch.from_numpy(split["y_train"])

    model = _load_model_factory()(num_classes=10, seed=SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)

    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        print(f"epoch {epoch:2d}  loss {total / len(order):.4f}")

    model.eval()
    train_acc = accuracy(model, split["x_train"], split["y_train"])
    test_acc = accuracy(model, split["x_test"], split["y_test"])

    state_dict = {f"module.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": args.epochs, "state_dict": state_dict}, args.weights)
    args.data.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.data, **split)

    print(f"train accuracy {train_acc:.4f} ({len(split['y_train'])} images)")
    print(f"test accuracy  {test_acc:.4f} ({len(split['y_test'])} images)")
    print(f"wrote {args.weights} and {args.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
