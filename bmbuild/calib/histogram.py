"""Streaming per-tensor statistics: min, max, count and a fixed-size histogram of |x|.

Calibration sees every activation of every sample; keeping them (as onnxruntime's entropy
calibrator does) costs gigabytes. Here each tensor owns `bins` counters whatever the number of
updates.

Range growth: the histogram covers [0, hi] where hi is the first nonzero batch's |x| max. When a
later batch exceeds hi, the range is widened by the smallest *integer* factor m that covers it
(hi *= m) and every m adjacent old bins merge into one new bin. Old bin edges are then new bin
edges, so no count is ever split or guessed (counts stay exact integers); the price is that the
final range can exceed the true |x| max by up to 2x, i.e. the histogram may use only half its
bins. Data seen while hi == 0 is all exactly zero and sits in bin 0, which stays exact.

Beside it, `TpuMlirHistogram` keeps the histogram tpu-mlir's kl reads, built as tpu-mlir builds it
(its bin width is set by the first sample and bins are appended when later samples go further),
so that its kl threshold is tpu-mlir's and not a guess from the fixed-size one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

_CHUNK = 1 << 20
TPU_MLIR_MAX_BINS = 8_000_000  # combine_histogram's limit: beyond it the histogram starts again


class TpuMlirHistogram:
    """tpu-mlir 1.30.2's kl histogram of one tensor (`calibration/cali_math.py`, `histogram` and
    `combine_histogram`, as `kld_calibrator.py` `process_statistic` feeds them, per sample).

    The first sample that is not all zeros (|x| max >= 1e-8) sets `bins` bins of width
    th / (bins - 1), th the running |x| max of min and max; value v counts in bin
    floor(v / width + 0.5), exact zeros are left out. A later sample within th adds its counts;
    one beyond th appends int((new - th) // (th / n) + 1) bins of th / n each (n: bins so far) and
    is counted with the new width. So when the first sample's range is a fraction of the
    tensor's, the histogram has many more bins than `bins`, and kl cuts at a fraction of |x| max
    that a histogram of `bins` bins over the whole range could not express."""

    def __init__(self, bins: int):
        self.bins = bins
        self.hist = np.zeros(0, dtype=np.int64)
        self.width = 0.0
        self.th = 0.0

    def _counts(self, x: np.ndarray, th: float, bins: int) -> tuple[np.ndarray, float]:
        width = th / (bins - 1)
        a = np.abs(x[x != 0])
        idx = np.floor(a / width + 0.5)
        idx = idx[(idx >= 0) & (idx <= bins - 1)].astype(np.intp)
        return np.bincount(idx, minlength=bins)[:bins].astype(np.int64), width

    def update(self, x: np.ndarray, low: float, high: float) -> None:
        """One sample `x`; `low`, `high`: the running min and max including it."""
        if float(np.abs(x).max()) < 1e-8:
            return  # tpu-mlir skips an all-zero sample's histogram (its min/max still count)
        th = max(abs(low), abs(high))
        if not self.hist.size:
            self.hist, self.width = self._counts(x, th, self.bins)
            self.th = th
        elif th <= self.th:
            self.hist += self._counts(x, self.th, self.hist.size)[0]
        else:
            step = self.th / self.hist.size
            added = int((th - self.th) // step + 1)
            total = added + self.hist.size
            if total > TPU_MLIR_MAX_BINS:
                self.hist, self.width = self._counts(x, th, self.bins)
                self.th = th
                return
            self.th = added * step + self.th
            grown, self.width = self._counts(x, self.th, total)
            grown[:self.hist.size] += self.hist
            self.hist = grown

    def to_dict(self) -> dict[str, Any]:
        return {"hist": self.hist.tolist(), "width": self.width, "th": self.th}

    def load(self, d: dict[str, Any]) -> None:
        self.hist = np.asarray(d["hist"], dtype=np.int64)
        self.width, self.th = float(d["width"]), float(d["th"])


class TensorStats:
    """Running statistics of one tensor; memory is O(bins), independent of the updates."""

    def __init__(self, bins: int = 2048):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self.hist = np.zeros(self.bins, dtype=np.int64)
        self.hi = 0.0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0  # exact zeros, which tpu-mlir leaves out of its histogram
        self.tpu_mlir = TpuMlirHistogram(self.bins)

    @property
    def absmax(self) -> float:
        """Largest |x| seen (0.0 before any data)."""
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def bin_width(self) -> float:
        """Width of one histogram bin (0.0 while everything seen is zero)."""
        return self.hi / self.bins

    def _grow(self, amax: float) -> None:
        if self.hi == 0.0:
            self.hi = amax  # all previous data is exactly 0, already in bin 0
            return
        m = math.ceil(amax / self.hi)
        while self.hi * m < amax:  # guard against rounding in the division
            m += 1
        padded = np.zeros(-(-self.bins // m) * m, dtype=np.int64)
        padded[: self.bins] = self.hist
        merged = padded.reshape(-1, m).sum(axis=1)
        self.hist = np.zeros(self.bins, dtype=np.int64)
        self.hist[: merged.size] = merged
        self.hi *= m

    def update(self, array: Any) -> None:
        """Add every element of `array` (one sample, for `tpu_mlir`'s histogram). ValueError on
        NaN or inf."""
        x = np.asarray(array)
        if x.size == 0:
            return
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        x = x.reshape(-1)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{int((~np.isfinite(x)).sum())} non-finite values (NaN/inf)")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self.zeros += x.size - int(np.count_nonzero(x))
        self.tpu_mlir.update(x, self.min, self.max)
        amax = max(-lo, hi)
        if amax > self.hi:
            self._grow(amax)
        if self.hi == 0.0:
            self.hist[0] += x.size
            return
        per_unit = self.bins / self.hi
        for start in range(0, x.size, _CHUNK):  # bounded temporaries for huge activations
            a = np.abs(x[start:start + _CHUNK])
            a *= per_unit
            idx = a.astype(np.intp)
            np.minimum(idx, self.bins - 1, out=idx)
            self.hist += np.bincount(idx, minlength=self.bins)

    def to_dict(self, histogram: bool = False) -> dict[str, Any]:
        """JSON-ready summary; with `histogram`, enough to rebuild the object (`from_dict`)."""
        d: dict[str, Any] = {
            "count": self.count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "absmax": self.absmax,
            "bins": self.bins,
            "hist_range": self.hi,
            "zeros": self.zeros,
        }
        if histogram:
            d["hist"] = self.hist.tolist()
            d["tpu_mlir"] = self.tpu_mlir.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorStats:
        """Inverse of `to_dict(histogram=True)`."""
        stats = cls(int(d["bins"]))
        hist = np.asarray(d["hist"], dtype=np.int64)
        if hist.shape != (stats.bins,):
            raise ValueError(f"histogram has {hist.size} bins, expected {stats.bins}")
        stats.hist = hist
        stats.hi = float(d["hist_range"])
        stats.count = int(d["count"])
        stats.zeros = min(max(int(d.get("zeros", 0)), 0), stats.count)
        if "tpu_mlir" in d:
            stats.tpu_mlir.load(d["tpu_mlir"])
        if stats.count:
            stats.min, stats.max = float(d["min"]), float(d["max"])
        return stats


class StatsCollector:
    """TensorStats per tensor name, in first-seen order (the order the table is written in).

    A tensor that cannot be calibrated is never a crash: integer or boolean values, NaN/inf, or
    no values at all put it in `skipped` with the reason, and it is left out of the thresholds
    (the quantizer then keeps it in float).
    """

    def __init__(self, bins: int = 2048):
        self.bins = int(bins)
        self._stats: dict[str, TensorStats] = {}
        self.skipped: dict[str, str] = {}

    def update(self, name: str, array: Any) -> None:
        """Add a batch of values of tensor `name`."""
        if name in self.skipped:
            return
        x = np.asarray(array)
        if x.dtype.kind != "f":
            self._skip(name, f"holds {x.dtype} values, not float")
            return
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = TensorStats(self.bins)
        try:
            stats.update(x)
        except ValueError as exc:
            self._skip(name, f"has {exc}")

    def _skip(self, name: str, reason: str) -> None:
        self._stats.pop(name, None)
        self.skipped[name] = reason

    def __getitem__(self, name: str) -> TensorStats:
        return self._stats[name]

    def __contains__(self, name: object) -> bool:
        return name in self._stats

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)

    def items(self) -> Iterator[tuple[str, TensorStats]]:
        """(name, stats) pairs in first-seen order."""
        return iter(self._stats.items())

    def to_dict(self, histogram: bool = False) -> dict[str, dict[str, Any]]:
        """{name: TensorStats.to_dict()} in first-seen order."""
        return {n: s.to_dict(histogram) for n, s in self._stats.items()}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]]) -> StatsCollector:
        """Inverse of `to_dict(histogram=True)`."""
        first = next(iter(d.values()), {"bins": 2048})
        coll = cls(int(first["bins"]))
        coll._stats = {n: TensorStats.from_dict(s) for n, s in d.items()}
        return coll

    def thresholds(self, method: str = "kl",
                   percentile: float = 99.99) -> dict[str, tuple[float, float, float]]:
        """{name: (threshold, min, max)}, ready for `write_table`; tensors that never held a
        value move to `skipped`."""
        from bmbuild.calib.methods import compute_threshold

        for name in [n for n, s in self._stats.items() if s.count == 0]:
            self._skip(name, "held no values (empty in every sample)")
        return {n: (compute_threshold(s, method, percentile), s.min, s.max)
                for n, s in self._stats.items()}
