"""sftbench.core.stats: CI math against hand-computed values."""

import math

import numpy as np
import pytest

from sftbench.core import stats


def test_wilson_hand_computed():
    # p = 0.5, n = 10: center 0.5, half = z*sqrt(0.025 + z^2/400) / (1 + z^2/10)
    z = stats.Z95
    half = z * math.sqrt(0.25 / 10 + z * z / 400) / (1 + z * z / 10)
    lo, hi = stats.wilson_ci(5, 10)
    assert lo == pytest.approx(0.5 - half, abs=1e-12) and hi == pytest.approx(0.5 + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    # k = 0 and k = n: exact ends, the other end z^2/(n+z^2)
    assert stats.wilson_ci(0, 3) == (0.0, pytest.approx(z * z / (3 + z * z)))
    assert stats.wilson_ci(3, 3) == (pytest.approx(3 / (3 + z * z)), 1.0)
    # 105 of 541 (the SmolLM2 ballpark), by hand: center 0.19624, half 0.03328
    lo, hi = stats.wilson_ci(105, 541)
    assert (round(lo, 4), round(hi, 4)) == (0.1630, 0.2295)
    assert stats.wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_ci(4, 3)


def test_cluster_bootstrap_constant_and_seeded():
    # Every prompt follows 1 of 2 instructions: every resample gives exactly 0.5.
    assert stats.cluster_bootstrap_ci([1] * 20, [2] * 20, n_boot=500, seed=1) == (0.5, 0.5)
    a = stats.cluster_bootstrap_ci([1, 0, 2, 1, 3], [1, 1, 2, 2, 3], n_boot=2000, seed=7)
    b = stats.cluster_bootstrap_ci([1, 0, 2, 1, 3], [1, 1, 2, 2, 3], n_boot=2000, seed=7)
    assert a == b


def test_cluster_bootstrap_matches_hand_computed_resamples():
    # n_boot = 3 with a known generator: recompute the ratios by hand from the same indices.
    num, den = np.array([1.0, 0.0, 2.0, 1.0]), np.array([1.0, 2.0, 2.0, 1.0])
    idx = np.random.default_rng(3).integers(0, 4, size=(3, 4))
    ratios = sorted(num[r].sum() / den[r].sum() for r in idx)
    lo, hi = stats.cluster_bootstrap_ci(num, den, n_boot=3, seed=3, alpha=0.0)
    assert (lo, hi) == (pytest.approx(ratios[0]), pytest.approx(ratios[-1]))


def test_cluster_bootstrap_agrees_with_delta_method():
    rng = np.random.default_rng(0)
    den = rng.integers(1, 4, size=541).astype(float)
    num = np.array([rng.binomial(int(d), 0.3) for d in den], dtype=float)
    r = num.sum() / den.sum()
    se = stats.ratio_se(num, den)
    lo, hi = stats.cluster_bootstrap_ci(num, den, n_boot=20000, seed=0)
    assert lo == pytest.approx(r - 1.96 * se, abs=0.004) and hi == pytest.approx(r + 1.96 * se, abs=0.004)


def test_ratio_se_hand_computed():
    # num = [1, 0, 2], den = [1, 1, 2]: R = 3/4, residuals 0.25, -0.75, 0.5 -> sum sq 0.875
    se = stats.ratio_se([1, 0, 2], [1, 1, 2])
    assert se == pytest.approx(math.sqrt(3 / 2 * 0.875) / 4)


def test_clustering_widens_the_interval():
    # Instructions of one prompt all pass or all fail: the clustered CI is wider than treating
    # the 3 x 100 instructions as independent.
    follow = [[True] * 3 if i % 2 else [False] * 3 for i in range(100)]
    inst = stats.instruction_level(follow, n_boot=4000, seed=0)
    naive = stats.wilson_ci(150, 300)
    assert inst["value"] == 0.5 and inst["n"] == 300 and inst["n_prompts"] == 100
    assert inst["ci95"][1] - inst["ci95"][0] > 1.4 * (naive[1] - naive[0])


def test_prompt_level_dict():
    d = stats.prompt_level([True, False, True, True])
    assert d["value"] == 0.75 and d["n"] == 4 and d["method"] == "wilson"
    assert d["ci95"] == list(stats.wilson_ci(3, 4))
    b = stats.prompt_level([True, False, True, True], method="bootstrap", n_boot=1000, seed=2)
    assert 0.0 <= b["ci95"][0] <= 0.75 <= b["ci95"][1] <= 1.0
