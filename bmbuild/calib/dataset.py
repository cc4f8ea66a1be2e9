"""Calibration datasets: listing, deterministic selection, validated loading and streaming.

Everything here is a pure function of the data's content, the config and the seed: samples are
sorted by relative path (never file-system order) and selected with numpy's seeded generator
(never Python's hash), so two machines build the same int8 model from the same data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmbuild.calib.arrays import open_array
from bmbuild.calib.config import CalibrationConfig
from bmbuild.calib.images import IMAGE_SUFFIXES, load_image
from bmbuild.errors import DataError

ARRAY_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class SampleRef:
    """One sample: a file, plus the index along axis 0 when the file stacks many samples."""

    path: Path
    index: int | None = None

    def describe(self) -> str:
        """Human-readable location, for messages."""
        return str(self.path) if self.index is None else f"{self.path}[{self.index}]"


def _folder_files(root: Path) -> list[Path]:
    """Sample files under `root`, recursively, hidden entries skipped, sorted by relative path."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES):
                continue
            path = Path(dirpath) / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def _sort_key(ref: SampleRef) -> tuple[str, int]:
    return ref.path.as_posix(), -1 if ref.index is None else ref.index


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _check_kind(cfg: CalibrationConfig, images: bool) -> None:
    if images and cfg.preprocess is None:
        raise DataError("holds images but the calibration config has no `preprocess` "
                        "(resize / crop / mean / scale are needed to turn images into inputs)",
                        file=cfg.data)
    if not images and cfg.preprocess is not None:
        raise DataError("holds preprocessed arrays (.npy/.npz), which are fed as they are; "
                        "remove `preprocess`, it applies only to images", file=cfg.data)


def content_files(cfg: CalibrationConfig) -> list[Path]:
    """Files whose content defines the dataset (to hash). All samples, not only the selected ones,
    since the seeded selection depends on the whole list."""
    data = Path(cfg.data)
    if data.is_dir():
        files = _folder_files(data)
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


def list_samples(cfg: CalibrationConfig) -> list[SampleRef]:
    """Every available sample, sorted: files by relative path, or indices of a stacked file."""
    files = content_files(cfg)
    data = Path(cfg.data)
    if data.is_file():
        _check_kind(cfg, images=False)
        arr = open_array(data, cfg.key, mmap=True)
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise DataError(f"expected samples stacked on axis 0, found shape {arr.shape}",
                            file=data)
        return [SampleRef(data, i) for i in range(arr.shape[0])]
    kinds = {_is_image(p) for p in files}
    if len(kinds) > 1:
        raise DataError("mixes images and .npy/.npz arrays; use one kind per folder", file=data)
    _check_kind(cfg, images=kinds.pop())
    return [SampleRef(p) for p in files]


def split_samples(refs: Sequence[SampleRef], n_calib: int, n_holdout: int,
                  seed: int) -> tuple[list[SampleRef], list[SampleRef]]:
    """Disjoint (calibration, held-out) selections from one seeded permutation of `refs`.

    The held-out samples are taken first, so changing `n_calib` never changes them, and
    calibration samples are never compared on. Each selection keeps the sorted order of `refs`.
    Fewer samples than asked for is an error, not a silent shrink.
    """
    if n_calib < 1 or n_holdout < 0:
        raise ValueError(f"need n_calib >= 1 and n_holdout >= 0, got {n_calib}, {n_holdout}")
    ordered = sorted(refs, key=_sort_key)
    if len(ordered) < n_calib + n_holdout:
        where = os.path.commonpath([str(r.path) for r in ordered]) if ordered else None
        raise DataError(f"only {len(ordered)} samples available, {n_calib} for calibration + "
                        f"{n_holdout} held out for the int8 comparison needed (lower `samples`)",
                        file=where)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    holdout = np.sort(perm[:n_holdout])
    calib = np.sort(perm[n_holdout:n_holdout + n_calib])
    return [ordered[i] for i in calib], [ordered[i] for i in holdout]


class SampleLoader:
    """Loads samples for one config and shape, keeping a stacked file open between samples."""

    def __init__(self, cfg: CalibrationConfig, expected_shape: tuple[int, ...]):
        self.cfg = cfg
        self.shape = tuple(int(d) for d in expected_shape)
        self._stacked: tuple[Path, np.ndarray] | None = None

    def _stacked_array(self, path: Path) -> np.ndarray:
        if self._stacked is None or self._stacked[0] != path:
            arr = open_array(path, self.cfg.key, mmap=True)
            self._check_dtype(arr, path)
            if arr.ndim < 1 or tuple(arr.shape[1:]) != self.shape:
                raise DataError(f"expected samples of shape {self.shape} stacked on axis 0, "
                                f"found array of shape {arr.shape}", file=path)
            self._stacked = (path, arr)
        return self._stacked[1]

    @staticmethod
    def _check_dtype(arr: np.ndarray, path: Path, where: str = "") -> None:
        if arr.dtype.kind not in "iuf":
            raise DataError(f"{where}expected a numeric (int or float) array, found dtype "
                            f"{arr.dtype}", file=path)

    def load(self, ref: SampleRef) -> np.ndarray:
        """One float32 sample of the expected shape, validated."""
        where = f"sample {ref.index}: " if ref.index is not None else ""
        if ref.index is not None:
            arr = self._stacked_array(ref.path)
            if not 0 <= ref.index < arr.shape[0]:
                raise DataError(f"sample index {ref.index} out of range (the file holds "
                                f"{arr.shape[0]})", file=ref.path)
            sample = arr[ref.index]
        elif _is_image(ref.path):
            if self.cfg.preprocess is None:
                _check_kind(self.cfg, images=True)
            return self._finite(load_image(ref.path, self.cfg.preprocess, self.shape), ref, "")
        else:
            sample = open_array(ref.path, self.cfg.key)
            self._check_dtype(sample, ref.path)
            if sample.ndim == len(self.shape) + 1 and sample.shape[0] == 1:
                sample = sample[0]  # a leading batch dimension of 1
            if tuple(sample.shape) != self.shape:
                raise DataError(f"expected one sample of shape {self.shape} (or "
                                f"{(1, *self.shape)}), found shape {sample.shape}", file=ref.path)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            out = np.array(sample, dtype=np.float32, copy=True, order="C")
        return self._finite(out, ref, where)

    @staticmethod
    def _finite(out: np.ndarray, ref: SampleRef, where: str) -> np.ndarray:
        if not np.isfinite(out).all():
            nan = int(np.isnan(out).sum())
            inf = int(out.size - nan - np.isfinite(out).sum())
            raise DataError(f"{where}expected finite values, found {nan} NaN and {inf} inf "
                            f"(after conversion to float32)", file=ref.path)
        return out


def load_sample(ref: SampleRef, cfg: CalibrationConfig,
                expected_shape: tuple[int, ...]) -> np.ndarray:
    """One validated float32 sample of `expected_shape` (the input shape without batch)."""
    return SampleLoader(cfg, expected_shape).load(ref)


def iter_batches(refs: Sequence[SampleRef], cfg: CalibrationConfig,
                 sample_shape: tuple[int, ...], batch_size: int) -> Iterator[np.ndarray]:
    """Stacked float32 batches of `batch_size` (the last may be shorter), in `refs` order.
    Streams: at most one batch of samples is held at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = SampleLoader(cfg, sample_shape)
    for start in range(0, len(refs), batch_size):
        yield np.stack([loader.load(r) for r in refs[start:start + batch_size]])
