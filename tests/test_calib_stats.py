"""Streaming histograms and threshold methods against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bmbuild.calib import StatsCollector, TensorStats, compute_threshold
from bmbuild.calib.methods import TINY


def stats_of(*arrays: np.ndarray, bins: int = 2048) -> TensorStats:
    s = TensorStats(bins)
    for a in arrays:
        s.update(a)
    return s


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_minmax_known_array() -> None:
    s = stats_of(np.array([[-3.5, 0.25], [2.0, 1.0]], dtype=np.float32))
    assert (s.min, s.max, s.count) == (-3.5, 2.0, 4)
    assert compute_threshold(s, "minmax") == 3.5


def test_percentile_uniform(rng: np.random.Generator) -> None:
    s = stats_of(rng.random(1_000_000))
    for p in (50.0, 90.0, 99.0):
        assert compute_threshold(s, "percentile", p) == pytest.approx(p / 100, abs=1e-3)
    assert compute_threshold(s, "percentile", 100.0) <= s.absmax


def test_percentile_uses_absolute_values() -> None:
    s = stats_of(np.linspace(-1.0, 1.0, 200_001))
    assert compute_threshold(s, "percentile", 50.0) == pytest.approx(0.5, abs=1e-3)


def test_kl_clips_outliers_of_gaussian(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1_000_000)
    x[:5] = [50.0, -60.0, 80.0, -90.0, 100.0]
    s = stats_of(x)
    t = compute_threshold(s, "kl")
    assert 2.0 < t < 30.0


def test_kl_keeps_range_of_uniform(rng: np.random.Generator) -> None:
    assert compute_threshold(stats_of(rng.random(200_000)), "kl") > 0.9


def test_mse_uniform_is_near_max(rng: np.random.Generator) -> None:
    s = stats_of(rng.random(1_000_000))
    # analytic optimum: (1 - T)^2 = T / (6 * 127^2)  ->  T ~ 0.9968
    assert compute_threshold(s, "mse") == pytest.approx(0.9968, abs=2e-3)


def test_mse_clips_outliers(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1_000_000)
    x[:3] = [40.0, -45.0, 50.0]
    t = compute_threshold(stats_of(x), "mse")
    assert 3.0 < t < 25.0


def test_all_zero_tensor_gets_tiny_threshold() -> None:
    s = stats_of(np.zeros((4, 8)), np.zeros(3))
    for method in ("minmax", "percentile", "kl", "mse"):
        t = compute_threshold(s, method)
        assert t == TINY and np.isfinite(t)


def test_zeros_then_data_keeps_zero_counts_exact() -> None:
    s = stats_of(np.zeros(1000), np.full(10, 2.0))
    assert s.hi == 2.0 and s.hist[0] == 1000 and s.hist[-1] == 10 and s.hist.sum() == 1010


def test_empty_stats_and_unknown_method_raise() -> None:
    with pytest.raises(ValueError):
        compute_threshold(TensorStats(), "kl")
    with pytest.raises(ValueError, match="unknown"):
        compute_threshold(stats_of(np.ones(3)), "entropy")


def test_streaming_matches_single_pass(rng: np.random.Generator) -> None:
    g = rng.standard_normal(1_000_000) * np.repeat(np.linspace(0.1, 3.0, 10), 100_000)
    streamed = stats_of(*np.split(g, 10))
    whole = stats_of(g)
    assert streamed.hist.sum() == whole.hist.sum() == g.size == streamed.count
    assert (streamed.min, streamed.max) == (whole.min, whole.max)
    assert whole.absmax <= streamed.hi <= 2 * whole.absmax
    width = max(streamed.bin_width, whole.bin_width)
    for p in (50.0, 99.0, 99.99):
        a = compute_threshold(streamed, "percentile", p)
        b = compute_threshold(whole, "percentile", p)
        assert abs(a - b) <= 2 * width
        assert abs(a - np.percentile(np.abs(g), p)) <= 2 * width


def test_growth_merges_bins_exactly() -> None:
    s = TensorStats(8)
    s.update(np.array([0.1, 0.6, 0.9, 1.0]))  # range [0, 1], width 1/8
    s.update(np.array([2.5]))  # grows by 3 -> range [0, 3], width 3/8
    assert s.hi == 3.0
    assert s.hist.tolist() == [1, 1, 2, 0, 0, 0, 1, 0]  # old [1,0,0,0,1,0,0,2] in threes


def test_memory_is_fixed(rng: np.random.Generator) -> None:
    s = TensorStats(256)
    for k in range(200):
        s.update(rng.standard_normal(1000) * (1 + k))
    assert s.hist.shape == (256,) and s.hist.dtype == np.int64
    assert s.count == 200_000 and s.hist.sum() == 200_000
    assert {k for k, v in vars(s).items() if isinstance(v, np.ndarray)} == {"hist"}


def test_tensors_that_cannot_be_calibrated_are_skipped_with_a_reason() -> None:
    """Issue 11 item 2: NaN/inf, integer values or no values at all named, never a crash (NaN
    raised DataError; a tensor that was always empty crashed in compute_threshold)."""
    c = StatsCollector(bins=256)
    c.update("ok", np.array([1.0, -2.0]))
    c.update("conv1/out", np.array([1.0, 2.0]))
    c.update("conv1/out", np.array([1.0, np.nan, np.inf]))
    c.update("conv1/out", np.array([3.0]))  # later batches do not bring it back
    c.update("shape", np.array([1, 3, 16, 16], dtype=np.int64))
    c.update("empty", np.zeros((0, 4), dtype=np.float32))
    rows = c.thresholds("kl")
    assert list(rows) == ["ok"]
    assert c.skipped == {"conv1/out": "has 2 non-finite values (NaN/inf)", "shape": "holds int64 values, not float",
                         "empty": "held no values (empty in every sample)"}


def test_collector_order_json_and_round_trip(rng: np.random.Generator) -> None:
    c = StatsCollector(bins=512)
    for _ in range(3):
        c.update("input", rng.standard_normal((2, 3)))
        c.update("relu:0", np.maximum(rng.standard_normal(50), 0))
    assert list(c) == ["input", "relu:0"] and len(c) == 2 and "input" in c
    summary = json.loads(json.dumps(c.to_dict()))
    assert summary["input"]["count"] == 18 and "hist" not in summary["input"]
    back = StatsCollector.from_dict(json.loads(json.dumps(c.to_dict(histogram=True))))
    assert back.thresholds("kl") == c.thresholds("kl")
    t, lo, hi = c.thresholds("minmax")["relu:0"]
    assert lo == 0.0 and t == hi


def _tpu_mlir_kl_histogram(samples: list[np.ndarray], bins: int = 2048) -> tuple[np.ndarray, float]:
    """tpu-mlir 1.30.2's histogram, as `cali_math.py` `histogram`/`combine_histogram` build it from
    `kld_calibrator.py` `process_statistic` (one sample at a time), written out as the spec."""
    def histogram(a: np.ndarray, abs_max: float, n: int) -> tuple[np.ndarray, float]:
        t = np.abs(a.ravel())
        t = t[t != 0]
        width = abs_max / (n - 1)
        h, _ = np.histogram(np.floor(t / width + 0.5), bins=n, range=(0, n - 1))
        return h, width

    state = None
    low, high = np.inf, -np.inf
    for a in samples:
        low, high = min(low, a.min()), max(high, a.max())
        th = max(abs(low), abs(high))
        if state is None:
            state = (*histogram(a, th, bins), th)
            continue
        old, width, old_th = state
        if th <= old_th:
            state = (old + histogram(a, old_th, len(old))[0], width, old_th)
        else:
            step = old_th / len(old)
            half = int((th - old_th) // step + 1)
            new_th = half * step + old_th
            h, width = histogram(a, new_th, half + len(old))
            h[:len(old)] += old
            state = (h, width, new_th)
    return state[0], state[1]


def test_kl_reads_the_histogram_tpu_mlir_grows_from_its_first_sample(rng: np.random.Generator) -> None:
    """tpu-mlir sets its bin width from the first sample's |x| max and appends bins when a later
    sample goes further; kl's candidates are 128 bins apart, so a first sample at 1/25 of the
    range lets kl cut far below 128 bins of |x| max / 2047, the lowest cut of 2048 bins over the
    whole range.
    The histogram kl reads is tpu-mlir's, bin for bin."""
    from bmbuild.calib.methods import kl_histogram

    samples = [rng.normal(size=20_000).astype(np.float32) for _ in range(6)]
    samples[3][7] = 100.0  # one outlier, in a later sample
    s = stats_of(*samples)
    hist, width = kl_histogram(s)
    want, want_width = _tpu_mlir_kl_histogram(samples)
    assert width == pytest.approx(want_width, rel=1e-9)
    assert np.array_equal(hist[:want.size], want) and not hist[want.size:].any() and hist.size % 128 == 0
    t = compute_threshold(s, "kl")
    assert 2.5 < t < 100.0 * 128 / 2047  # the Gaussian kept, the outlier cut: 4.2 (fixed bins: 6.25)
    back = TensorStats.from_dict(json.loads(json.dumps(s.to_dict(histogram=True))))
    assert compute_threshold(back, "kl") == t
