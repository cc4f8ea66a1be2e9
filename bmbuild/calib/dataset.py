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
from typing import Any

import numpy as np

from bmbuild.calib.arrays import open_array
from bmbuild.calib.config import CalibrationConfig
from bmbuild.calib.images import load_image
from bmbuild.calib.sources import InputFeed, content_files, data_feeds, is_image, unpaired
from bmbuild.errors import DataError


@dataclass(frozen=True)
class SampleRef:
    """One sample: a file, plus the index along axis 0 when the file stacks many samples."""

    path: Path
    index: int | None = None

    def describe(self) -> str:
        """Human-readable location, for messages."""
        return str(self.path) if self.index is None else f"{self.path}[{self.index}]"


def _sort_key(ref: "Sample") -> tuple[Any, ...]:
    if isinstance(ref, tuple):  # one ref per data input: ordered by the first input's
        return tuple(_sort_key(r) for r in ref)
    return ref.path.as_posix(), -1 if ref.index is None else ref.index


def _check_kind(cfg: CalibrationConfig, images: bool) -> None:
    if images and cfg.preprocess is None:
        raise DataError("holds images but the calibration config has no `preprocess` "
                        "(resize / crop / mean / scale are needed to turn images into inputs)",
                        file=cfg.data)
    if not images and cfg.preprocess is not None:
        raise DataError("holds preprocessed arrays (.npy/.npz), which are fed as they are; "
                        "remove `preprocess`, it applies only to images", file=cfg.data)


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
    kinds = {is_image(p) for p in files}
    if len(kinds) > 1:
        raise DataError("mixes images and .npy/.npz arrays; use one kind per folder", file=data)
    _check_kind(cfg, images=kinds.pop())
    return [SampleRef(p) for p in files]


def split_samples(refs: Sequence[Any], n_calib: int, n_holdout: int,
                  seed: int) -> tuple[list[Any], list[Any]]:
    """Disjoint (calibration, held-out) selections from one seeded permutation of `refs`.

    The held-out samples are taken first, so changing `n_calib` never changes them, and
    calibration samples are never compared on. Each selection keeps the sorted order of `refs`.
    Fewer samples than asked for is an error, not a silent shrink. `refs` are SampleRefs, or
    Samples (one ref per data input) of a multi-input model.
    """
    if n_calib < 1 or n_holdout < 0:
        raise ValueError(f"need n_calib >= 1 and n_holdout >= 0, got {n_calib}, {n_holdout}")
    ordered = sorted(refs, key=_sort_key)
    if len(ordered) < n_calib + n_holdout:
        where = os.path.commonpath([str(refs_of(r)[0].path) for r in ordered]) if ordered else None
        raise DataError(f"only {len(ordered)} samples available, {n_calib} for calibration + "
                        f"{n_holdout} held out for the int8 comparison needed (lower `samples`)",
                        file=where)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    holdout = np.sort(perm[:n_holdout])
    calib = np.sort(perm[n_holdout:n_holdout + n_calib])
    return [ordered[i] for i in calib], [ordered[i] for i in holdout]


TPU_MLIR_SEED = 1684  # calibration/data_selector.py DataSelector._random_select


def tpu_mlir_order(refs: Sequence[Any]) -> list[Any]:
    """The calibration samples in the order tpu-mlir 1.30.2's `run_calibration` reads them: its
    DataSelector sorts the dataset's files (named in `refs`' order by the tpu-mlir toolchain),
    then `random.seed(1684); random.shuffle(...)`; its threshold tuner reads the first
    `--tune_num` of the same order. The order decides kl's histogram (its bin width is the
    first sample's |x| max) and the tuner's samples, so the reference reads them so too."""
    import random

    ordered = list(refs)
    random.Random(TPU_MLIR_SEED).shuffle(ordered)
    return ordered


class SampleLoader:
    """Loads samples for one config and shape, keeping a stacked file open between samples."""

    def __init__(self, cfg: CalibrationConfig, expected_shape: tuple[int, ...], dtype: str = "float32"):
        self.cfg = cfg
        self.shape = tuple(int(d) for d in expected_shape)
        self.dtype = np.dtype(dtype)
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
        """One sample of the expected shape and dtype (float32 by default), validated."""
        where = f"sample {ref.index}: " if ref.index is not None else ""
        if ref.index is not None:
            arr = self._stacked_array(ref.path)
            if not 0 <= ref.index < arr.shape[0]:
                raise DataError(f"sample index {ref.index} out of range (the file holds "
                                f"{arr.shape[0]})", file=ref.path)
            sample = arr[ref.index]
        elif is_image(ref.path):
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
        if self.dtype.kind != "f":
            return self._integers(sample, ref, where)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            out = np.array(sample, dtype=self.dtype, copy=True, order="C")
        return self._finite(out, ref, where)

    def _integers(self, sample: np.ndarray, ref: SampleRef, where: str) -> np.ndarray:
        """An integer input's sample: integral values that fit its dtype, never silently truncated."""
        values = np.asarray(sample)
        info = np.iinfo(self.dtype)
        if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise DataError(f"{where}the input is {self.dtype} but the sample holds non-integer values",
                            file=ref.path)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise DataError(f"{where}values outside the range of {self.dtype}", file=ref.path)
        return np.array(values, dtype=self.dtype, copy=True, order="C")

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


# --- models with several inputs ---------------------------------------------------------------
# A sample of a model with one data input is its SampleRef; with several, one ref per data input.
Sample = SampleRef | tuple[SampleRef, ...]


def refs_of(sample: Sample) -> tuple[SampleRef, ...]:
    """One ref per data input."""
    return sample if isinstance(sample, tuple) else (sample,)


def list_feed_samples(feeds: Sequence[InputFeed]) -> list[Sample]:
    """Every available sample of a model's data inputs: the inputs' sources paired by sorted order
    (sources must hold as many samples; two folders must hold the same file names)."""
    sources = data_feeds(feeds)
    listed = [list_samples(feed.source) for feed in sources]  # type: ignore[arg-type]
    first = listed[0]
    if len(listed) == 1:
        return first
    for feed, refs in zip(sources[1:], listed[1:]):
        assert feed.source is not None and sources[0].source is not None
        if len(refs) != len(first):
            raise DataError(f"input {feed.name!r} has {len(refs)} calibration samples but input "
                            f"{sources[0].name!r} has {len(first)} (from {sources[0].source.data}); "
                            "every input needs one per sample", file=feed.source.data)
        mismatch = unpaired(sources[0].source.data, [r.path for r in first],
                            feed.source.data, [r.path for r in refs])
        if mismatch:
            raise DataError(f"input {feed.name!r}: {mismatch}", file=feed.source.data)
    return list(zip(*listed))


class FeedLoader:
    """Batches of a model's inputs: samples of the data inputs stacked on each input's batch axis,
    constants broadcast to the batch; one array per input, in input order."""

    def __init__(self, feeds: Sequence[InputFeed]):
        self.feeds = list(feeds)
        self.loaders = [SampleLoader(feed.source, feed.sample_shape, feed.dtype) for feed in data_feeds(self.feeds)]

    def load(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        if not samples:
            raise ValueError("no samples to load")
        columns = [np.stack([loader.load(ref) for ref in refs])
                   for loader, refs in zip(self.loaders, zip(*map(refs_of, samples)))]
        return assemble(self.feeds, columns)


def assemble(feeds: Sequence[InputFeed], columns: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every input's array for one batch from the data inputs' samples (`columns`: per data input,
    its samples stacked on axis 0), each moved to its input's batch axis; constants broadcast."""
    rows = len(columns[0]) if len(columns) else 1
    values = iter(columns)
    arrays = []
    for feed in feeds:
        if feed.source is None:
            arrays.append(constant(feed, rows))
            continue
        column = next(values)
        if feed.batch_axis is None:
            if len(column) != 1:
                raise ValueError(f"input {feed.name!r} has no batch axis: one sample at a time")
            arrays.append(column[0])
        else:
            arrays.append(np.ascontiguousarray(np.moveaxis(column, 0, feed.batch_axis)))
    return arrays


def rows_of(arrays: Sequence[np.ndarray], feeds: Sequence[InputFeed]) -> int:
    """How many samples a batch of inputs holds (1 when no data input has a batch axis)."""
    for array, feed in zip(arrays, feeds):
        if feed.source is not None and feed.batch_axis is not None:
            return int(array.shape[feed.batch_axis])
    return 1


def constant(feed: InputFeed, rows: int) -> np.ndarray:
    """A constant input's value for a batch of `rows`."""
    # np.array: a writable copy, and a 0-d value stays 0-d (np.ascontiguousarray makes it 1-d)
    return np.array(np.broadcast_to(np.asarray(feed.value, dtype=feed.dtype), feed.shape(rows)))


def iter_feeds(samples: Sequence[Sample], feeds: Sequence[InputFeed],
               batch_size: int) -> Iterator[list[np.ndarray]]:
    """Batches of every input for `samples`, `batch_size` samples each (the last may be shorter;
    one at a time when a data input has no batch axis). Streams like `iter_batches`."""
    loader = FeedLoader(feeds)
    size = min(batch_size, max_rows(feeds) or batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(samples), size):
        yield loader.load(samples[start:start + size])


def max_rows(feeds: Sequence[InputFeed]) -> int | None:
    """Samples one run can take: 1 when a data input has no batch axis (each sample has its own
    value of it), else no limit."""
    return 1 if any(feed.batch_axis is None for feed in data_feeds(feeds)) else None


def pad_rows(arrays: list[np.ndarray], feeds: Sequence[InputFeed], rows: int, size: int) -> list[np.ndarray]:
    """A batch of `rows` samples padded to `size` (copies of its first sample on each input's batch
    axis), for models whose batch size is fixed."""
    if rows == size:
        return arrays
    padded = []
    for array, feed in zip(arrays, feeds):
        if feed.batch_axis is None:
            padded.append(array)
            continue
        first = np.take(array, [0], axis=feed.batch_axis)
        filler = np.repeat(first, size - rows, axis=feed.batch_axis)
        padded.append(np.concatenate([array, filler], axis=feed.batch_axis))
    return padded
