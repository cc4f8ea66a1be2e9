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
QUANT_LEVELS = 128  # positive half of int8, as in TensorRT's entropy calibration
KL_GRID = 256  # candidates tried before the search narrows to single bins
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


def _smooth(d: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Give zero bins eps, taken evenly from the nonzero ones (total unchanged), as TensorRT and
    MXNet do; eps shrinks when the nonzero bins are too small to give it."""
    nz = d > 0
    n_nz = int(nz.sum())
    n_zero = d.size - n_nz
    if n_zero == 0 or n_nz == 0:
        return d
    eps = min(eps, 0.5 * float(d[nz].min()) * n_nz / n_zero)
    return np.where(nz, d - eps * n_zero / n_nz, eps)


def kl(stats: TensorStats) -> float:
    """TensorRT-style entropy calibration (as in TensorRT's description and MXNet's code).

    For each candidate i in [128, bins]: the reference P = hist[:i] with the outliers
    sum(hist[i:]) added to its last bin; the candidate Q = hist[:i] (without the outliers, which
    is what penalises clipping) merged into 128 levels (the last level absorbs the remainder)
    and spread back evenly over the bins where P is nonzero (zero bins stay zero). Both are
    eps-smoothed so that Q has no zero where P has mass, normalised, and KL(P||Q) computed.
    Returns (i* + 0.5) * bin_width for the minimising i*, capped at the |x| max. Candidates stop
    at the last nonzero bin: wider ones only quantize the same P more coarsely.
    """
    if stats.bins < QUANT_LEVELS:
        raise ValueError(f"kl needs at least {QUANT_LEVELS} bins, the histogram has {stats.bins}")
    if stats.hi == 0.0:
        return TINY
    hist = stats.hist.astype(np.float64)
    # The first bin holds every exact zero (half of a ReLU output). Left in, its spike is
    # smeared over the first merged level and drives the search towards tiny thresholds
    # (1.87 sigma on a ReLU'd Gaussian); NVIDIA's entropy calibrator flattens it the same way.
    if hist.size > 1:
        hist[0] = hist[1]
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    # A candidate that clips most values is not an outlier cut, and on sparse data it is
    # degenerate: below the first nonzero bin P and Q are the same one-bin spike (KL = 0), so
    # 160 logits far from zero were clipped to their smallest |x|. Keep at least half in range.
    half = 0.5 * tail[0]
    last = int(np.flatnonzero(hist)[-1]) + 1
    stop = min(stats.bins, max(last, QUANT_LEVELS))
    positions = np.arange(stats.bins)
    ids_by_merge: dict[int, np.ndarray] = {}
    scores: dict[int, float] = {}

    def divergence(i: int) -> float:
        """KL(P||Q) of candidate i (inf when Q is empty)."""
        if i in scores:
            return scores[i]
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        merge = i // QUANT_LEVELS
        ids = ids_by_merge.get(merge)
        if ids is None:
            ids = ids_by_merge[merge] = np.minimum(positions // merge, QUANT_LEVELS - 1)
        ids = ids[:i]
        nz = p > 0
        level_sum = np.bincount(ids, weights=sliced, minlength=QUANT_LEVELS)
        level_nz = np.bincount(ids, weights=nz, minlength=QUANT_LEVELS)
        q = np.zeros(i)
        q[nz] = level_sum[ids[nz]] / level_nz[ids[nz]]
        if not q.any():
            scores[i] = math.inf
            return math.inf
        ps, qs = _smooth(p), _smooth(q)
        ps /= ps.sum()
        qs /= qs.sum()
        mask = ps > 0
        scores[i] = float(np.sum(ps[mask] * np.log(ps[mask] / qs[mask])))
        return scores[i]

    candidates = [i for i in range(QUANT_LEVELS, stop + 1) if tail[i] <= half]
    if not candidates:
        return _finish((stop + 0.5) * stats.bin_width, stats)
    # Every candidate costs O(bins): search a grid of them, then every bin around the best
    # (7x fewer evaluations at 2048 bins; the divergence varies smoothly between neighbours).
    step = max(1, len(candidates) // KL_GRID)
    grid = candidates[::step] + [candidates[-1]]
    best = min(grid, key=lambda i: (divergence(i), i))
    at = candidates.index(best)
    best_i = min(candidates[max(0, at - step): at + step + 1], key=lambda i: (divergence(i), i))
    if math.isinf(divergence(best_i)):
        best_i = stop
    return _finish((best_i + 0.5) * stats.bin_width, stats)


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


def kl_checked(stats: TensorStats) -> float:
    """kl, unless clipping there costs more than not clipping at all (|x| max).

    KL divergence judges the shape of a histogram, and on a tensor with few values (a pooled
    vector, a gate) it cuts real values as outliers. tpu-mlir tunes each kl threshold against
    the error it causes (its SimpleTuner, on samples); here the check is the expected squared
    error on the calibration histogram, which keeps kl wherever its clipping pays off.
    """
    t = kl(stats)
    if stats.hi == 0.0:
        return t
    errors = expected_error(stats, np.asarray([t, stats.absmax]))
    return t if errors[0] <= errors[1] else _finish(stats.absmax, stats)


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
    "kl": lambda stats, percentile: kl_checked(stats),
    "mse": lambda stats, percentile: mse(stats),
}

