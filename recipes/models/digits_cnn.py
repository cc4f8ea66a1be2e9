"""A small CNN for the 1x8x8 scikit-learn ``load_digits`` images (10 classes).

conv(1->16) - BN - ReLU - conv(16->32) - BN - ReLU - maxpool2 - conv(32->64) - ReLU -
global average pool - linear(64->num_classes). Plain PyTorch, no data-dependent control
flow, so it traces with ``torch.jit.trace``. The trained weights live in
``recipes/digits/digits_cnn.pt`` (produced by ``recipes/digits/train.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "digits_cnn"]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def digits_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Build the digits CNN in eval mode, initialised from ``seed``.

    The global torch RNG state is left untouched (``torch.random.fork_rng``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(num_classes=num_classes)
    return model.eval()
