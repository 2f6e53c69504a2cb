"""Aggregation over repeats and the paired comparison of each group with the reference (Stat-AL).

Repeats share their seed across groups (same initial set, snapshot and pool), so group − reference
differences are paired. With K repeats the two-sided Wilcoxon signed-rank test cannot go below
p = 2/2^K (0.25 for K = 3), so a bootstrap interval of the mean difference and the win/loss count are
reported next to it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from broaden.metrics import mean_std

BOOTSTRAP_RESAMPLES = 10_000


def _finite(values: Sequence) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr


def summarize(values: Sequence) -> dict:
    """{"mean", "std" (ddof = 1; None for one value), "values"} ignoring undefined (None/NaN) entries."""
    arr = _finite(values)
    mean, std = mean_std(arr)
    return {"mean": None if math.isnan(mean) else mean, "std": std,
            "values": [None if not math.isfinite(v) else float(v) for v in arr]}


def paired_test(values: Sequence, reference: Sequence, *, seed: int = 0) -> dict:
    """Compare paired per-repeat values of a group with the reference group's (see module docstring)."""
    a, b = _finite(values), _finite(reference)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"n": int(d.size), "mean_diff": None, "std_diff": None, "wins": int((d > 0).sum()),
           "losses": int((d < 0).sum()), "ties": int((d == 0).sum()), "wilcoxon_p": None, "bootstrap_ci": None}
    if not d.size:
        return out
    out["mean_diff"] = float(d.mean())
    out["std_diff"] = float(d.std(ddof=1)) if d.size > 1 else None
    if d.size >= 2 and np.any(d != 0):
        from scipy.stats import wilcoxon

        out["wilcoxon_p"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(BOOTSTRAP_RESAMPLES, d.size))].mean(axis=1)
    out["bootstrap_ci"] = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
    return out
