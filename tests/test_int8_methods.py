"""Threshold methods against known answers (what tests/test_calib_stats.py does not cover yet).

Known answers used here:
- percentile of |x| for a Gaussian and for a ReLU'd Gaussian (normal quantiles);
- mse: the threshold minimising E[(q(x) - x)^2] found by brute force on the samples themselves,
  and ~3.92 sigma for a Gaussian (Banner et al., ACIQ, 8 bits);
- kl: tpu-mlir's own kl_diversity_hist results on recorded distributions; a ReLU'd Gaussian keeps
  more than 3 sigma, a Laplacian is clipped;
- every method is scale-equivariant (power-of-two scale: exact) and never exceeds max |x|.
"""

from __future__ import annotations

import numpy as np
import pytest

from bmbuild.calib import StatsCollector, TensorStats, compute_threshold
from bmbuild.calib.methods import METHODS

N = 400_000


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    s = TensorStats(bins)
    s.update(x)
    return s


@pytest.fixture(scope="module")
def gauss() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(N)


def quant_mse(x: np.ndarray, t: float) -> float:
    """Mean squared error of symmetric int8 quantization with threshold t (scale t/127)."""
    s = t / 127.0
    return float(np.mean((np.clip(np.round(x / s), -127, 127) * s - x) ** 2))


def test_percentile_of_gaussian_is_the_normal_quantile(gauss: np.ndarray) -> None:
    s = stats_of(gauss)
    # P(|x| < 3) = 0.9973, P(|x| < 1.96) = 0.95
    assert compute_threshold(s, "percentile", 99.73) == pytest.approx(3.0, abs=0.03)
    assert compute_threshold(s, "percentile", 95.0) == pytest.approx(1.96, abs=0.02)
    assert compute_threshold(s, "percentile", 100.0) == pytest.approx(s.absmax, rel=1e-9)


def test_percentile_counts_the_zeros_of_a_relu(gauss: np.ndarray) -> None:
    # half of relu(x) is 0: P(relu(x) < t) = 0.9973  <=>  Phi(t) = 0.9973  <=>  t = 2.78
    s = stats_of(np.maximum(gauss, 0.0))
    assert compute_threshold(s, "percentile", 99.73) == pytest.approx(2.782, abs=0.03)


def test_kl_on_relu_gaussian_stays_above_three_sigma(gauss: np.ndarray) -> None:
    # without flattening the zero-bin spike the search collapses to ~1.9 sigma
    s = stats_of(np.maximum(gauss, 0.0))
    t = compute_threshold(s, "kl")
    assert 3.0 < t <= s.absmax


def test_kl_clips_the_tail_of_a_laplacian() -> None:
    x = np.random.default_rng(3).laplace(size=N)
    s = stats_of(x)
    t = compute_threshold(s, "kl")
    assert 6.0 < t < 0.95 * s.absmax


def test_kl_is_deterministic(gauss: np.ndarray) -> None:
    assert compute_threshold(stats_of(gauss), "kl") == compute_threshold(stats_of(gauss.copy()), "kl")


@pytest.mark.parametrize("name, expected", [("hswish", 8.265948295593262), ("lap3", 89.77664184570312),
                                            ("relu", 4.36947774887085)])
def test_kl_is_tpu_mlirs(name: str, expected: float) -> None:
    """kl is tpu-mlir's: `expected` is what its calibration_math.so (kl_diversity_hist, tpu-mlir
    1.30.2) returns on tpu-mlir's own histogram of these values (zeros dropped, width |x| max /
    2047, rounded bins), capped at |x| max, the values given as one sample (tpu-mlir's bin width is
    its first sample's |x| max: `test_kl_reads_the_histogram_tpu_mlir_grows_from_its_first_sample`).
    A HardSwish output is clipped, a cubed Laplacian far into its tail, a ReLU'd Gaussian not."""
    v = np.random.default_rng(1).normal(size=100000).astype(np.float32) * 2
    x = {"hswish": v * np.clip(v + 3, 0, 6) / 6,
         "lap3": np.random.default_rng(2).laplace(size=100000).astype(np.float32) ** 3,
         "relu": np.maximum(np.random.default_rng(3).normal(size=100000).astype(np.float32), 0)}[name]
    s = TensorStats()
    s.update(x)
    assert compute_threshold(s, "kl") == pytest.approx(min(expected, s.absmax), rel=1e-5)


@pytest.mark.parametrize("dist", ["gauss", "laplace", "relu"])
def test_mse_matches_brute_force_on_the_samples(dist: str) -> None:
    rng = np.random.default_rng(11)
    x = {"gauss": lambda: rng.standard_normal(N), "laplace": lambda: rng.laplace(size=N),
         "relu": lambda: np.maximum(rng.standard_normal(N), 0.0)}[dist]()
    s = stats_of(x)
    t = compute_threshold(s, "mse")
    grid = np.linspace(0.3 * s.absmax, s.absmax, 141)
    best = min(quant_mse(x, g) for g in grid)
    assert quant_mse(x, t) <= 1.01 * best
    assert t < s.absmax  # clipping the tail pays for every distribution here


def test_mse_gaussian_is_the_aciq_optimum(gauss: np.ndarray) -> None:
    # the error curve is flat around its minimum, so the sample moves the argmin a little
    assert compute_threshold(stats_of(gauss), "mse") == pytest.approx(3.92, abs=0.15)


@pytest.mark.parametrize("method", METHODS)
def test_scale_equivariance_and_bounds(method: str, gauss: np.ndarray) -> None:
    x = np.maximum(gauss, 0.0) + 0.1 * gauss  # skewed, with negatives
    base = compute_threshold(stats_of(x), method)
    scaled = compute_threshold(stats_of(4.0 * x), method)
    assert scaled == pytest.approx(4.0 * base, rel=1e-12)
    s = stats_of(x)
    assert 0.0 < base <= s.absmax
    assert base <= compute_threshold(s, "minmax")


def test_minmax_uses_the_larger_side() -> None:
    s = stats_of(np.array([-0.5, 0.1, 2.0, -7.25], np.float32))
    assert compute_threshold(s, "minmax") == 7.25


def test_collector_thresholds_row_per_tensor_in_order(gauss: np.ndarray) -> None:
    c = StatsCollector(bins=256)
    c.update("b", gauss[:1000])
    c.update("a", np.maximum(gauss[1000:2000], 0))
    rows = c.thresholds("minmax")
    assert list(rows) == ["b", "a"]
    for name, (t, lo, hi) in rows.items():
        assert t == max(abs(lo), abs(hi))


def test_kl_on_few_clustered_logits_does_not_collapse() -> None:
    # 16 samples x 10 logits of a classifier: ten tight clusters, none near zero, seen batch by
    # batch. Every candidate just above the smallest cluster compares a one-bin spike with
    # itself (KL ~ 0): without a guard the threshold fell to ~0.044 and clipped 90% of values.
    centers = np.array([0.157, 0.172, -0.19, 0.139, 0.18, -0.184, -0.062, -0.211, -0.049, 0.078])
    rng = np.random.default_rng(0)
    s = TensorStats(2048)
    for _ in range(16):
        s.update(centers + rng.normal(0.0, 0.003, 10))
    t = compute_threshold(s, "kl")
    assert 0.15 < t <= s.absmax
