"""Where calibration samples are: the files of a source and how each model input is fed.

No numpy here: planning hashes these files (the calibrate stage's inputs) and `validate` checks
them, and neither may import numpy, torch or onnx.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmbuild.calib.config import CalibrationConfig
from bmbuild.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARRAY_SUFFIXES = (".npy", ".npz")


def folder_files(root: Path) -> list[Path]:
    """Sample files under `root`, recursively, hidden entries skipped, sorted by relative path.
    A folder that cannot be read is an error, not a silently smaller dataset."""

    def unreadable(exc: OSError) -> None:
        raise DataError(f"cannot read folder: {exc.strerror or exc}", file=exc.filename or root)

    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES):
                continue
            path = Path(dirpath) / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def content_files(cfg: CalibrationConfig) -> list[Path]:
    """Files whose content defines the dataset (to hash). All samples, not only the selected ones,
    since the seeded selection depends on the whole list."""
    data = Path(cfg.data) if cfg.data is not None else None
    if data is None:
        raise DataError("no calibration data given (calibration.data)")
    if data.is_dir():
        files = folder_files(data)
        if not files:
            raise DataError("no .jpg/.jpeg/.png/.npy/.npz files in the calibration folder",
                            file=data)
        return files
    if data.is_file():
        if data.suffix.lower() not in ARRAY_SUFFIXES:
            raise DataError("a single calibration file must be an .npz (or .npy) with samples "
                            "stacked on axis 0; images must be in a folder", file=data)
        return [data]
    raise DataError("calibration data not found", file=data)


@dataclass(frozen=True)
class InputFeed:
    """How one model input gets its values in the int8 stages: samples from its own single-source
    config (`source`), or the recipe's constant (`value`, broadcast to the batch)."""

    name: str
    dtype: str
    batch_axis: int | None
    sample_shape: tuple[int, ...]
    source: CalibrationConfig | None = None
    value: Any = None

    def shape(self, rows: int) -> tuple[int, ...]:
        """This input's shape for a batch of `rows` samples."""
        if self.batch_axis is None:
            return self.sample_shape
        return (*self.sample_shape[:self.batch_axis], rows, *self.sample_shape[self.batch_axis:])


def data_feeds(feeds: Sequence[InputFeed]) -> list[InputFeed]:
    return [feed for feed in feeds if feed.source is not None]


def feed_files(feeds: Sequence[InputFeed]) -> list[Path]:
    """Every file whose content defines the samples of the data inputs (each listed once)."""
    files: dict[Path, None] = {}
    for feed in data_feeds(feeds):
        assert feed.source is not None
        files.update(dict.fromkeys(content_files(feed.source)))
    return list(files)


def unpaired(root_a: Path | None, files_a: Sequence[Path], root_b: Path | None, files_b: Sequence[Path]) -> str:
    """Why two folders' samples do not pair file by file ('' when they do, or are not two folders):
    samples of several inputs in their own folders are paired by file path without its suffix."""
    if root_a is None or root_b is None or root_a == root_b or not (root_a.is_dir() and root_b.is_dir()):
        return ""
    for a, b in zip(files_a, files_b):
        if a.relative_to(root_a).with_suffix("") != b.relative_to(root_b).with_suffix(""):
            return (f"samples are paired by file name, and {b.relative_to(root_b)} stands where "
                    f"{root_a.name}/{a.relative_to(root_a)} is")
    return ""
