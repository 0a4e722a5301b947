"""Data-dependent RDP analysis of GNMax and Confident-GNMax (Papernot et al. 2018).

References are to "Scalable Private Learning with PATE" (Papernot, Song, Mironov,
Raghunathan, Talwar, Erlingsson; ICLR 2018, arXiv:1802.08908): Theorem 6 (RDP
from a likely outcome), Proposition 7 (q~ for GNMax), Proposition 8 (data-
independent RDP), Proposition 10 (choice of the higher orders mu1, mu2).

Neighbouring relation: replace one teacher, i.e. move one vote between classes
on every query. GNMax (noise N(0, sigma^2) per class) has data-independent RDP
``lambda / sigma^2`` (L2 sensitivity sqrt(2)); the threshold check of
Confident-GNMax (max count + N(0, sigma1^2) >= T, sensitivity 1) has
``lambda / (2 sigma1^2)``.

A data-dependent RDP value bounds the privacy loss *at the dataset analysed*:
it is itself a function of the private votes and is not a DP guarantee until
released privately (see :mod:`fedens.privacy.smooth_sensitivity`). Reports
should show it next to the data-independent number, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from dp_accounting.rdp import compute_epsilon
from scipy.special import log_ndtr, logsumexp

__all__ = [
    "DEFAULT_ORDERS",
    "PateAnalysis",
    "analyze_pate",
    "confident_gnmax_rdp_data_dependent",
    "gnmax_log_prob_not_top",
    "gnmax_prob_not_top",
    "gnmax_rdp_data_dependent",
    "gnmax_rdp_data_independent",
    "rdp_to_epsilon",
    "threshold_rdp_data_dependent",
    "threshold_rdp_data_independent",
]

#: RDP orders used when none are given: 1.5..20 in steps of 0.25, 20..99, then
#: 30 geometric steps to 500 (the reference analysis of the paper uses 2..500;
#: data-dependent bounds are often optimal at large orders).
DEFAULT_ORDERS = np.concatenate(
    [np.arange(1.5, 20, 0.25), np.arange(20.0, 100.0), np.geomspace(100, 500, 30)]
)


_CHUNK = 512  # queries analysed at a time


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _orders(orders: Any) -> np.ndarray:
    o = DEFAULT_ORDERS if orders is None else np.atleast_1d(np.asarray(orders, dtype=float))
    if o.ndim != 1 or o.size == 0 or not np.all(np.isfinite(o)) or np.any(o <= 1):
        raise ValueError(f"orders must be a non-empty 1-D array of numbers > 1, got {orders!r}")
    return o


def _votes(votes: Any, ndim: int) -> np.ndarray:
    v = np.asarray(votes, dtype=float)
    if v.ndim != ndim or v.shape[-1] < 2 or not np.all(np.isfinite(v)):
        shape = "(C,)" if ndim == 1 else "(n, C)"
        raise ValueError(f"votes must be a finite {shape} array with C >= 2, got shape {v.shape}")
    return v


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < -np.log(2), np.log1p(-np.exp(x)), np.log(-np.expm1(x)))


def _log_prob_not_top(votes: np.ndarray, sigma: float) -> np.ndarray:
    """Row-wise log q~ for a (n, C) vote array (Prop. 7, union bound, capped)."""
    top = np.argmax(votes, axis=1)
    gaps = votes[np.arange(len(votes)), top][:, None] - votes
    # Pr[n_i + Z_i > n_i* + Z_i*] with Z_i - Z_i* ~ N(0, 2 sigma^2) is
    # 1/2 erfc(gap / (2 sigma)) = Phi(-gap / (sqrt(2) sigma)).
    terms = log_ndtr(-gaps / (np.sqrt(2.0) * sigma))
    terms[np.arange(len(votes)), top] = -np.inf
    # Cap: the top class is the most likely output (swap its noise with any other
    # class's), so Pr[output = top] >= 1/C and Pr[output != top] <= 1 - 1/C.
    return np.minimum(logsumexp(terms, axis=1), np.log1p(-1.0 / votes.shape[1]))


def gnmax_log_prob_not_top(votes: Any, sigma: float) -> float:
    """Natural log of q~, the Proposition 7 bound on Pr[GNMax output != top class].

    ``log(min(1 - 1/C, sum_{i != i*} 1/2 erfc((n_i* - n_i) / (2 sigma))))`` with
    i* the (first) argmax; computed in log space, so tiny q~ do not underflow.

    Examples
    --------
    >>> round(gnmax_log_prob_not_top([250, 0, 0], sigma=40.0), 2)
    -11.52
    """
    return float(_log_prob_not_top(_votes(votes, 1)[None, :], _positive("sigma", sigma))[0])


def gnmax_prob_not_top(votes: Any, sigma: float) -> float:
    """q~ = exp(:func:`gnmax_log_prob_not_top`): upper bound on Pr[output != argmax].

    Examples
    --------
    >>> gnmax_prob_not_top([5, 5], sigma=1.0)  # a tie: capped at 1 - 1/C
    0.5
    """
    return float(np.exp(gnmax_log_prob_not_top(votes, sigma)))


def gnmax_rdp_data_independent(sigma: float, orders: Any = None) -> np.ndarray:
    """Data-independent RDP of one GNMax answer, ``lambda / sigma^2`` (Prop. 8).

    Examples
    --------
    >>> gnmax_rdp_data_independent(10.0, [2, 4]).tolist()
    [0.02, 0.04]
    """
    return _orders(orders) / _positive("sigma", sigma) ** 2


def threshold_rdp_data_independent(sigma_threshold: float, orders: Any = None) -> np.ndarray:
    """Data-independent RDP of one threshold check, ``lambda / (2 sigma1^2)`` (sensitivity 1).

    Examples
    --------
    >>> threshold_rdp_data_independent(10.0, [2]).tolist()
    [0.01]
    """
    return _orders(orders) / (2 * _positive("sigma_threshold", sigma_threshold) ** 2)


def _rdp_from_logq(logq: np.ndarray, sigma: float, orders: np.ndarray) -> np.ndarray:
    """Theorem 6 with Prop. 10's orders, for a mechanism with RDP curve mu / sigma^2.

    ``logq`` (shape (n,)) bounds log Pr[output != likely outcome]; returns (n, len(orders)):
    per order the smaller of the data-dependent bound (where its conditions hold)
    and the data-independent ``lambda / sigma^2``.
    """
    logq = np.asarray(logq, dtype=float)[:, None]
    lam = orders[None, :]
    var = sigma**2
    data_independent = np.broadcast_to(lam / var, (logq.shape[0], lam.shape[1]))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Prop. 10: mu2 = sigma sqrt(log 1/q~), mu1 = mu2 + 1; eps_i = mu_i / sigma^2.
        mu2 = sigma * np.sqrt(-logq)
        mu1 = mu2 + 1
        eps1, eps2 = mu1 / var, mu2 / var
        # Theorem 6 needs lambda <= mu1 (the Hoelder step bounding the non-top
        # outcomes by the (mu1, eps1) guarantee), q~ e^eps2 < 1 (so A > 0), and
        # q~ <= e^{(mu2-1) eps2} / (mu1/(mu1-1) * mu2/(mu2-1))^mu2, which makes the
        # bound non-decreasing in q on [0, q~] so that q~ may stand in for q.
        valid = (
            (mu2 > 1)
            & (logq + eps2 < 0)
            & (logq <= (mu2 - 1) * eps2 - mu2 * (np.log1p(1 / (mu1 - 1)) + np.log1p(1 / (mu2 - 1))))
            & (lam <= mu1)
        )
        # A = (1-q) / (1 - (q e^eps2)^((mu2-1)/mu2)),  B = e^eps1 / q^(1/(mu1-1));
        # bound = log((1-q) A^(lambda-1) + q B^(lambda-1)) / (lambda-1).
        log1q = _log1mexp(logq)
        log_a = log1q - _log1mexp((logq + eps2) * (1 - 1 / mu2))
        log_b = eps1 - logq / (mu1 - 1)
        bound = np.logaddexp(log1q + (lam - 1) * log_a, logq + (lam - 1) * log_b) / (lam - 1)
    out = np.where(valid, np.minimum(bound, data_independent), data_independent)
    out = np.where(np.isneginf(logq), 0.0, out)  # output certain: 0-RDP
    return np.maximum(out, 0.0)  # guard rounding; a divergence is never negative


def gnmax_rdp_data_dependent(votes: Any, sigma: float, orders: Any = None) -> np.ndarray:
    """Per-order data-dependent RDP of one GNMax answer on ``votes`` (Thm. 6, Prop. 7, 10).

    Never exceeds the data-independent ``lambda / sigma^2``; equals it where
    Theorem 6's conditions fail (e.g. close votes, or orders above mu1).

    Examples
    --------
    >>> orders = np.array([10.0, 20.0])
    >>> bool(np.all(gnmax_rdp_data_dependent([250, 0, 0], 40.0, orders) < orders / 40**2))
    True
    """
    logq = _log_prob_not_top(_votes(votes, 1)[None, :], _positive("sigma", sigma))
    return _rdp_from_logq(logq, sigma, _orders(orders))[0]


def _threshold_logq(top: np.ndarray, threshold: float, sigma_threshold: float) -> np.ndarray:
    """log of the less likely threshold outcome's probability, exactly, per max count."""
    z = (top - threshold) / sigma_threshold  # Pr[answer] = Phi(z)
    return np.minimum(log_ndtr(z), log_ndtr(-z))


def _threshold_rdp(top: np.ndarray, threshold: float, sigma1: float, orders: np.ndarray) -> np.ndarray:
    """(len(top), len(orders)) data-dependent RDP of the check; RDP curve mu / (sqrt(2) sigma1)^2."""
    return _rdp_from_logq(_threshold_logq(top, threshold, sigma1), np.sqrt(2) * sigma1, orders)


def threshold_rdp_data_dependent(
    votes: Any, threshold: float, sigma_threshold: float, orders: Any = None
) -> np.ndarray:
    """Per-order data-dependent RDP of Confident-GNMax's noisy threshold check.

    Theorem 6 applied to the two-outcome check (answer / abstain): the likely
    outcome is the more probable one and q is the exact probability of the
    other, ``Pr[answer] = Phi((max_i n_i - T) / sigma1)``; its data-independent
    curve is that of a Gaussian with sensitivity 1, i.e. ``mu / (sqrt(2) sigma1)^2``.

    Examples
    --------
    >>> r = threshold_rdp_data_dependent([250, 0], 200.0, 150.0, [10.0])
    >>> bool(r[0] <= 10.0 / (2 * 150**2))
    True
    """
    v = _votes(votes, 1)[None, :]
    s1 = _positive("sigma_threshold", sigma_threshold)
    return _threshold_rdp(v.max(axis=1), float(threshold), s1, _orders(orders))[0]


def confident_gnmax_rdp_data_dependent(
    votes: Any, threshold: float, sigma_threshold: float, sigma: float,
    answered: bool, orders: Any = None,
) -> np.ndarray:
    """Per-order data-dependent RDP of one Confident-GNMax query.

    The threshold check is charged on every query; the GNMax answer step
    (noise ``sigma``) only when the query was answered, as in the paper.

    Examples
    --------
    >>> r = confident_gnmax_rdp_data_dependent([250, 0], 200., 150., 40., False, [10.])
    >>> bool(r[0] == threshold_rdp_data_dependent([250, 0], 200., 150., [10.])[0])
    True
    """
    cost = threshold_rdp_data_dependent(votes, threshold, sigma_threshold, orders)
    return cost + gnmax_rdp_data_dependent(votes, sigma, orders) if answered else cost


def rdp_to_epsilon(rdp: Any, orders: Any, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) at ``delta`` from an RDP curve, by dp-accounting.

    Uses ``dp_accounting.rdp.compute_epsilon`` (the conversion of Canonne, Kamath
    & Steinke 2020, Prop. 12; slightly tighter than the paper's
    ``rdp + log(1/delta) / (lambda - 1)``).

    Examples
    --------
    >>> orders = np.array([2.0, 8.0, 32.0])
    >>> eps, order = rdp_to_epsilon(orders / 50.0, orders, 1e-5)
    >>> order
    32.0
    """
    o = _orders(orders)
    r = np.asarray(rdp, dtype=float).reshape(-1)
    if r.shape != o.shape or np.any(np.isnan(r)) or np.any(r < 0):
        raise ValueError(f"rdp must be {o.size} non-negative numbers, one per order, got {rdp!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    eps, order = compute_epsilon(o, r, delta)
    return float(eps), float(order)


@dataclass(frozen=True)
class PateAnalysis:
    """Privacy cost of a batch of GNMax / Confident-GNMax queries, both ways.

    ``per_query_rdp`` is the data-dependent cost of each query, shape
    (n, len(orders)), or None when not kept; the ``*_data_dependent`` fields
    bound the loss *on these votes* (not DP by themselves), the
    ``*_data_independent`` fields are the worst-case guarantee.
    """

    orders: np.ndarray
    delta: float
    per_query_rdp: np.ndarray | None
    rdp_data_dependent: np.ndarray
    rdp_data_independent: np.ndarray
    epsilon_data_dependent: float
    order_data_dependent: float
    epsilon_data_independent: float
    order_data_independent: float
    num_queries: int
    num_answered: int

    def as_dict(self) -> dict[str, Any]:
        """Both epsilons, labelled, for results.json / reports."""
        return {
            "delta": self.delta,
            "queries": self.num_queries,
            "queries_answered": self.num_answered,
            "epsilon_data_independent": self.epsilon_data_independent,
            "order_data_independent": self.order_data_independent,
            "epsilon_data_dependent": self.epsilon_data_dependent,
            "order_data_dependent": self.order_data_dependent,
            "note": "data-dependent epsilon bounds the loss on these votes only; it is not a "
            "DP guarantee unless released with smooth sensitivity",
        }


def analyze_pate(
    votes: Any, *, sigma: float, delta: float, threshold: float | None = None,
    sigma_threshold: float | None = None, answered: Any = None, orders: Any = None,
    per_query: bool = True,
) -> PateAnalysis:
    """Data-dependent and data-independent cost of a batch of GNMax answers.

    Parameters
    ----------
    votes : (n, C) array of vote histograms, one row per query.
    sigma : GNMax noise std (sigma2 of Confident-GNMax).
    delta : target delta for the epsilons.
    threshold, sigma_threshold : give both for Confident-GNMax (T, sigma1).
    answered : (n,) bool, which queries passed the noisy threshold (an output of
        the mechanism); required with a threshold, must be omitted without one.
    orders : RDP orders (> 1); default :data:`DEFAULT_ORDERS`.
    per_query : keep each query's cost (``per_query_rdp``, n x orders floats: 147 MB for
        100,000 queries at the default orders); False keeps only their sum.

    Examples
    --------
    >>> votes = np.tile([240, 5, 5], (100, 1))
    >>> a = analyze_pate(votes, sigma=40.0, delta=1e-5)
    >>> a.epsilon_data_dependent < a.epsilon_data_independent
    True
    """
    v = _votes(votes, 2)
    o = _orders(orders)
    s2 = _positive("sigma", sigma)
    n = v.shape[0]
    if threshold is None and sigma_threshold is None:
        if answered is not None:
            raise ValueError("answered is only meaningful with a threshold (Confident-GNMax)")
        mask, s1 = np.ones(n, dtype=bool), None
        independent = n * o / s2**2
    elif threshold is not None and sigma_threshold is not None:
        s1 = _positive("sigma_threshold", sigma_threshold)
        mask = np.asarray(answered, dtype=bool) if answered is not None else None
        if mask is None or mask.shape != (n,):
            raise ValueError(f"answered must be a bool array of shape ({n},), got {answered!r}")
        independent = n * o / (2 * s1**2) + mask.sum() * o / s2**2
    else:
        raise ValueError("give both threshold and sigma_threshold, or neither")
    kept = np.empty((n, o.size)) if per_query else None
    dependent = np.zeros(o.size)
    for start in range(0, n, _CHUNK):  # temporaries that stay in cache, not one per (n, orders) array
        rows = slice(start, start + _CHUNK)
        cost = _rdp_from_logq(_log_prob_not_top(v[rows], s2), s2, o) * mask[rows, None]
        if s1 is not None:
            cost += _threshold_rdp(v[rows].max(axis=1), float(threshold), s1, o)
        dependent += cost.sum(axis=0)
        if kept is not None:
            kept[rows] = cost
    eps_dd, order_dd = rdp_to_epsilon(dependent, o, delta)
    eps_di, order_di = rdp_to_epsilon(independent, o, delta)
    return PateAnalysis(o, float(delta), kept, dependent, independent, eps_dd, order_dd,
                        eps_di, order_di, n, int(mask.sum()))
