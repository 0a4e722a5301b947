"""Confidence intervals for the accuracies a run reports, by SciPy's bootstrap over test queries.

An accuracy is the mean of per-query correctness; a difference between two combiners scored on
the same queries is a paired statistic, resampled query by query (``scipy.stats.bootstrap`` with
``paired=True``). Percentile intervals: they stay defined when every query agrees.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

RESAMPLES = 2000
LEVEL = 0.95
#: how reports name these intervals
METHOD = (f"{LEVEL:.0%} percentile bootstrap over the test queries ({RESAMPLES} resamples, "
          "scipy.stats.bootstrap; differences paired query by query)")


def _check(correct: np.ndarray) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.ndim != 1 or len(correct) < 2 or correct.dtype != bool:
        raise ValueError(f"expected per-query correctness, a 1-D bool array of >= 2 queries, got "
                         f"dtype {correct.dtype} shape {correct.shape}")
    return correct.astype(float)


def accuracy_interval(correct: np.ndarray, seed: int = 0) -> list[float]:
    """[low, high] of the accuracy whose per-query correctness is ``correct``."""
    a = _check(correct)
    if a.min() == a.max():  # every query the same: the resampled accuracy cannot vary
        return [float(a[0]), float(a[0])]
    result = bootstrap((a,), np.mean, vectorized=True, n_resamples=RESAMPLES, confidence_level=LEVEL,
                       method="percentile", rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def difference_interval(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0) -> list[float]:
    """[low, high] of accuracy(a) - accuracy(b), both scored on the same queries."""
    a, b = _check(correct_a), _check(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired correctness must have one shape, got {a.shape} and {b.shape}")
    d = a - b
    if d.min() == d.max():
        return [float(d[0]), float(d[0])]
    result = bootstrap((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                       vectorized=True, n_resamples=RESAMPLES, confidence_level=LEVEL,
                       method="percentile", rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]
