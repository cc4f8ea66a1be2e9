"""Threshold selection for symmetric int8 (scale = T / 127) from a tensor's |x| histogram.

Every method returns a finite T > 0 and never more than the largest |x| seen: a threshold above
the data only wastes int8 levels. A tensor that is all zeros gets `TINY`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from bmbuild.calib.histogram import TensorStats
from bmbuild.calib.registry import METHOD_NAMES

TINY = 1e-8
QUANT_LEVELS = 128  # positive half of int8: kl's levels (tpu-mlir's dst_bins)
METHODS = METHOD_NAMES  # the registry (bmbuild.calib.registry): recipes, schema and keys read it


def _finish(t: float, stats: TensorStats) -> float:
    t = min(float(t), stats.absmax)
    return t if math.isfinite(t) and t > TINY else TINY


def minmax(stats: TensorStats) -> float:
    """max(|min|, |max|): no clipping at all."""
    return _finish(stats.absmax, stats)


def percentile(stats: TensorStats, p: float = 99.99) -> float:
    """The |x| below which p% of the values lie, interpolated linearly inside its bin."""
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    if stats.hi == 0.0:
        return TINY
    hist = stats.hist
    cum = np.cumsum(hist)
    target = p / 100.0 * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(k, stats.bins - 1)
    before = float(cum[k - 1]) if k else 0.0
    frac = (target - before) / hist[k] if hist[k] else 1.0
    return _finish((k + min(max(frac, 0.0), 1.0)) * stats.bin_width, stats)


_percentile = percentile  # compute_threshold's `percentile` argument shadows the function


def _rounding_integral(u: np.ndarray) -> np.ndarray:
    """G(u) = integral from -1/2 to u of (t - round(t))^2 dt (one period integrates to 1/12)."""
    n = np.floor(u + 0.5)
    r = u - n
    return n / 12.0 + (r**3 + 0.125) / 3.0


def expected_error(stats: TensorStats, thresholds: np.ndarray) -> np.ndarray:
    """The expected squared error of symmetric int8 quantization at each threshold.

    Values are taken as uniform inside each histogram bin; for a threshold T (step s = T/127)
    values below T cost their exact mean rounding error, values above T the clipping error
    (x - T)^2.
    """
    nzb = np.flatnonzero(stats.hist)
    w = stats.bin_width
    a = nzb * w
    b = a + w
    c = stats.hist[nzb].astype(np.float64) / (w * stats.count)  # density per unit of |x|
    out = np.empty(len(thresholds))
    for start in range(0, len(thresholds), 256):  # chunks bound the (candidates x bins) temporaries
        t = np.asarray(thresholds[start:start + 256], dtype=np.float64)[:, None]
        s = t / 127.0
        upper = np.minimum(b, t)
        inside = np.where(a < t, s**3 * (_rounding_integral(upper / s) - _rounding_integral(a / s)), 0.0)
        lower = np.maximum(a, t)
        clipped = np.where(b > t, ((b - t) ** 3 - (lower - t) ** 3) / 3.0, 0.0)
        out[start:start + 256] = ((inside + clipped) * c).sum(axis=1)
    return out


def mse(stats: TensorStats, candidates: int = 2048) -> float:
    """The threshold minimising `expected_error`, among up to `candidates` evenly spaced
    thresholds in (0, |x| max]."""
    if stats.hi == 0.0:
        return TINY
    absmax = stats.absmax
    k = max(1, min(candidates, int(math.ceil(absmax / stats.bin_width))))
    # A coarse grid, then the full resolution between the best point's neighbours: the expected
    # error is smooth in T, and this evaluates ~0.25 of the `k` candidates.
    grid = absmax * np.arange(1, k + 1) / k
    step = max(1, k // 256)
    coarse = grid[step - 1::step]
    best = int(np.argmin(expected_error(stats, coarse))) * step + step - 1
    fine = grid[max(0, best - step): best + step + 1]
    return _finish(float(fine[int(np.argmin(expected_error(stats, fine)))]), stats)


def tpu_mlir_histogram(stats: TensorStats) -> tuple[np.ndarray, float]:
    """The histogram tpu-mlir's kl reads, rebuilt from the streaming one: counts of the nonzero
    |x| (exact zeros left out) in `stats.bins` bins of width |x| max / (bins - 1), value v in bin
    floor(v / width + 0.5) (tpu-mlir 1.30.2 `calibration/cali_math.py` `CaliMathCpu.histogram`),
    padded with empty bins to a multiple of 128 (`kld_calibrator.py` `find_threshold`).

    tpu-mlir sets the width from the first sample's |x| max and appends bins when a later sample
    goes further (`combine_histogram`, kept exactly by `TensorStats.tpu_mlir`); here, for
    statistics saved without that histogram, the width is set as if the first sample held the
    largest value. The streaming bins are spread evenly over the bins they overlap."""
    bins = stats.bins
    width = stats.absmax / (bins - 1)
    counts = stats.hist.astype(np.float64)
    counts[0] = max(counts[0] - stats.zeros, 0.0)
    below = np.concatenate([[0.0], np.cumsum(counts)])  # nonzero values below each streaming edge
    cuts = (np.arange(bins + 1) - 0.5) * width
    cuts[0] = 0.0
    cumulative = np.interp(cuts, np.arange(stats.bins + 1) * stats.bin_width, below)
    cumulative[-1] = below[-1]
    hist = np.diff(cumulative)
    return np.concatenate([hist, np.zeros(-bins % QUANT_LEVELS)]), width


KL_MAX_BINS = 64 * 2048  # kld_calibrator.py find_threshold: longer histograms are halved first


def kl_histogram(stats: TensorStats) -> tuple[np.ndarray, float]:
    """The histogram tpu-mlir's kl reads and its bin width: the one built as tpu-mlir builds it
    (`TensorStats.tpu_mlir`), padded to a multiple of 128 and halved (adjacent bins summed, the
    width doubled) while longer than `KL_MAX_BINS` (`kld_calibrator.py` `find_threshold`); from
    the streaming histogram (`tpu_mlir_histogram`) for statistics saved without it."""
    if not stats.tpu_mlir.hist.size:
        return tpu_mlir_histogram(stats)
    hist, width = stats.tpu_mlir.hist.astype(np.float64), stats.tpu_mlir.width
    hist = np.concatenate([hist, np.zeros(-hist.size % QUANT_LEVELS)])
    while hist.size > KL_MAX_BINS:
        hist = hist[::2] + hist[1::2]
        hist = np.concatenate([hist, np.zeros(-hist.size % QUANT_LEVELS)])
        width *= 2.0
    return hist, width


def kl_tpu_mlir(stats: TensorStats) -> float:
    """tpu-mlir's kl threshold: `kl_diversity_hist` (its `calibration_math.cpp`, loaded by
    `kld_calibrator.py`) on `kl_histogram`, capped at |x| max (`calibration_result.canonicalize`).

    The candidates are every 128th bin i. P is hist[:i] with the values beyond added to its last
    bin, over all nonzero values; Q merges hist[:i] into 128 levels, spreads each level evenly
    over its nonempty bins and divides by sum(hist[:i]) (so Q lacks the clipped values); KL(P||Q)
    in log10 with 1e-30 for empty bins, no smoothing. The threshold is width * i of the first
    smallest KL. The bins are as wide as the first sample's |x| max / 2047: when later samples
    reach further, the histogram is longer and the candidates (128 bins apart) sit closer
    together relative to the whole range. The threshold tuning (`bmbuild.calib.tune`) then only
    moves it within [kl, |x| max].
    """
    if stats.hi == 0.0 or stats.count <= stats.zeros:
        return _finish(stats.absmax, stats)
    hist, width = kl_histogram(stats)
    total = hist.sum()
    if not total > 0:
        return _finish(stats.absmax, stats)
    tails = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])
    best, best_i = math.inf, hist.size
    for i in range(QUANT_LEVELS, hist.size + 1, QUANT_LEVELS):
        kept = total - tails[i]
        if not kept > 0:
            continue  # every value beyond the candidate: Q is empty (NaN in the C code, never chosen)
        p = hist[:i] / total
        p[-1] += tails[i] / total
        blocks = hist[:i].reshape(QUANT_LEVELS, -1)
        filled = blocks > 0
        level = blocks.sum(axis=1) / np.maximum(filled.sum(axis=1), 1) / kept
        q = np.where(filled, level[:, None], 0.0).ravel()
        divergence = float(np.sum(p * (np.log10(p + 1e-30) - np.log10(q + 1e-30))))
        if divergence < best:
            best, best_i = divergence, i
    return _finish(width * best_i, stats)


PERCENTILE_FIRST, PERCENTILE_LAST = 99.99, 99.999999  # kld_calibrator.py: per = 99.99 + i * step


def asymmetric_range(stats: TensorStats, position: int, count: int) -> tuple[float, float]:
    """The (min, max) tpu-mlir 1.30.2's `run_calibration --part_asymmetric` records for a tensor
    it quantizes asymmetrically (`kld_calibrator.py` `process_statistic` and
    `process_compute_threshold`, `self.asym_op`): not kl, but the values at percentile
    per = 99.99 + position * (99.999999 - 99.99) / count from the top and from the bottom, where
    `position` is the op's place among the `count` ops in graph order (later ops clip less).
    Those tensors are SiLU/GELU outputs (`targets.asymmetric_output`), whose negative side is
    bounded (SiLU >= -0.279, GELU >= -0.17): the max is the |x| percentile, the min the min."""
    per = PERCENTILE_FIRST + position * (PERCENTILE_LAST - PERCENTILE_FIRST) / max(count, 1)
    high = max(percentile(stats, min(per, 100.0)), 0.0) if stats.max > 0 else stats.max
    return stats.min, min(high, stats.max)


def compute_threshold(stats: TensorStats, method: str = "kl", percentile: float = 99.99) -> float:
    """Dispatch to a method by name; T > 0 always (TINY for an all-zero tensor)."""
    if stats.count == 0:
        raise ValueError("no values were recorded for this tensor")
    if method not in THRESHOLDS:
        raise ValueError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")
    return THRESHOLDS[method](stats, percentile)


# registered method -> its threshold function (stats, the method's own settings); one per name in
# the registry (tests/test_toolchain_contract.py checks both agree)
THRESHOLDS: dict[str, Callable[[TensorStats, float], float]] = {
    "minmax": lambda stats, percentile: minmax(stats),
    "percentile": lambda stats, percentile: _percentile(stats, percentile),
    "kl": lambda stats, percentile: kl_tpu_mlir(stats),
    "mse": lambda stats, percentile: mse(stats),
}

