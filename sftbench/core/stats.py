"""Confidence intervals for IFEval accuracies (unpaired, one checkpoint).

- Prompt-level accuracy is a binomial proportion over prompts: `wilson_ci(k, n)` (the Wilson score
  interval; unlike the normal interval it stays inside [0, 1] and behaves at k = 0 or k = n), or a
  percentile bootstrap over prompts.
- Instruction-level accuracy is a ratio sum(followed_i) / sum(instructions_i) over prompts, and the
  instructions of one prompt are correlated (one bad answer fails several): resample *prompts*, not
  instructions (`cluster_bootstrap_ci`).  lm-eval reports no standard error for it at all.
  `ratio_se` is the matching analytic (delta-method / cluster-robust) standard error, for reference.

Everything is seeded: the same inputs give the same interval.  Paired comparisons between checkpoints
live in sftbench/analysis/paired_stats.py.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5% standard normal quantile


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n.  n = 0 gives (0.0, 1.0).

    Example: wilson_ci(5, 10) = (0.2366, 0.7634) to 4 places.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact ends at k = 0 and k = n (floating point leaves e.g. 5.6e-17 there).
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] prompt indices drawn with replacement (numpy PCG64, seeded)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def cluster_bootstrap_ci(
    num: Sequence[float],
    den: Sequence[float] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap CI of sum(num) / sum(den), resampling clusters (prompts) with replacement.

    num: [n] per-prompt numerators (e.g. instructions followed); den: [n] per-prompt denominators
    (instructions in the prompt; None = all ones, i.e. a plain mean = prompt-level accuracy).
    A resample whose denominator is 0 (only possible with zero-instruction prompts) is dropped.
    """
    num_a = np.asarray(num, dtype=float)
    den_a = np.ones_like(num_a) if den is None else np.asarray(den, dtype=float)
    if num_a.shape != den_a.shape or num_a.ndim != 1:
        raise ValueError(f"num and den must be 1-D of one length ({num_a.shape} vs {den_a.shape})")
    n = num_a.shape[0]
    if n == 0:
        return (0.0, 1.0)
    idx = _bootstrap_indices(n, n_boot, seed)
    s_num = num_a[idx].sum(axis=1)
    s_den = den_a[idx].sum(axis=1)
    ok = s_den > 0
    stats = s_num[ok] / s_den[ok]
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def ratio_se(num: Sequence[float], den: Sequence[float]) -> float:
    """Cluster-robust (delta-method) standard error of R = sum(num) / sum(den) over n clusters.

    se^2 = n / (n - 1) * sum_i (num_i - R * den_i)^2 / (sum_i den_i)^2.  With den = 1 this is the usual
    sqrt(p (1 - p) / (n - 1)).
    """
    num_a = np.asarray(num, dtype=float)
    den_a = np.asarray(den, dtype=float)
    n = num_a.shape[0]
    if n < 2 or den_a.sum() == 0:
        return float("nan")
    r = num_a.sum() / den_a.sum()
    resid = num_a - r * den_a
    return float(math.sqrt(n / (n - 1) * float((resid**2).sum())) / den_a.sum())


def prompt_level(followed_all: Sequence[bool], method: str = "wilson", n_boot: int = 10000, seed: int = 0) -> dict:
    """{"value", "ci95", "n", "method"} for prompt-level accuracy.  followed_all: [n_prompts] bools."""
    x = [bool(v) for v in followed_all]
    n, k = len(x), sum(x)
    if method == "wilson":
        ci = wilson_ci(k, n)
    elif method == "bootstrap":
        ci = cluster_bootstrap_ci([float(v) for v in x], None, n_boot=n_boot, seed=seed)
    else:
        raise ValueError(f"unknown CI method {method!r} (wilson or bootstrap)")
    return {"value": (k / n) if n else None, "ci95": [ci[0], ci[1]], "n": n, "method": method}


def instruction_level(follow_lists: Sequence[Sequence[bool]], n_boot: int = 10000, seed: int = 0) -> dict:
    """{"value", "ci95", "n", "n_prompts", "method"} for instruction-level accuracy.

    follow_lists: one list of bools per prompt (its instructions); resampled by prompt.
    """
    num = [float(sum(bool(v) for v in fl)) for fl in follow_lists]
    den = [float(len(fl)) for fl in follow_lists]
    total = sum(den)
    ci = cluster_bootstrap_ci(num, den, n_boot=n_boot, seed=seed) if total else (0.0, 1.0)
    return {"value": (sum(num) / total) if total else None, "ci95": [ci[0], ci[1]], "n": int(total),
            "n_prompts": len(follow_lists), "method": f"cluster_bootstrap(prompts, n_boot={n_boot}, seed={seed})"}
