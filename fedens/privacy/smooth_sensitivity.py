"""Smooth-sensitivity release of the data-dependent RDP of GNMax / Confident-GNMax.

Follows the plan of Papernot et al. 2018 (arXiv:1802.08908, Sec. 4 and App. B-C):
the data-dependent RDP ``f(D)`` at one order lambda is released as
``f(D) + SS_beta(D) * N(0, sigma_ss^2)`` (the "GNSS" mechanism), where SS_beta
is a beta-smooth upper bound on the local sensitivity of f (Nissim, Raskhodnikova
& Smith 2007). Neighbours: one teacher changes its vote on every query.

Where this module departs from the paper, and why (each step is proved in the
comments, not taken on trust):

* GNMax cost. f uses ``beta_G(q~)``: Theorem 6 evaluated at q~ rounded up to a
  fixed grid, minimised over all grid points >= q~. Any q' >= q~ is a valid
  bound on Pr[output != top], so beta_G is a valid RDP bound, and it is
  non-decreasing in q~ *by construction* (the paper checks this numerically,
  its conditions C5-C6). It exceeds the exact-q~ value by the rounding (<~2%).
* Neighbour bounds on q~ (the paper's B_U, B_L) are proved below by
  concavity; local sensitivity at distance k is then bounded cell by cell on
  the grid, which needs only monotonicity of beta_G.
* GNSS cost. The RDP of the GNSS release is bounded from the closed-form Renyi
  divergence of two Gaussians (:func:`gnss_rdp`); the paper's Theorem 23 formula
  was not used because, as we read the mechanism, it falls below that exact
  divergence when 2*lambda*beta is close to 1 (order 15, lambda*beta = 0.45,
  sigma_ss = 5: 0.75 printed vs 2.28 exact worst case; ours 2.34). At moderate
  beta (lambda*beta = 0.2) the printed formula is the looser (0.65 vs ours 0.51).

The released value is a DP *estimate* of the data-dependent cost of the answers,
not a DP certificate for them at that epsilon; the data-independent epsilon of
:func:`fedens.privacy.pate_analysis.analyze_pate` remains the guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

from fedens.privacy.pate_analysis import (
    _log_prob_not_top,
    _positive,
    _rdp_from_logq,
    _threshold_rdp,
    _votes,
    rdp_to_epsilon,
)

__all__ = [
    "SmoothSensitivityRelease",
    "gnmax_local_sensitivity_bounds",
    "gnmax_rdp_monotone",
    "gnss_rdp",
    "release_data_dependent_rdp",
    "smooth_sensitivity_of_rdp",
    "threshold_local_sensitivity_bounds",
]

# Grid of log q values (q = exp(-L)): fine steps of L where costs change most.
_L_GRID = np.concatenate(
    [np.geomspace(1e-4, 1, 200, endpoint=False), np.arange(1, 200, 0.02), np.geomspace(200, 1e6, 400)]
)
_LOGQ_GRID = np.append(-_L_GRID[::-1], 0.0)  # ascending, ends at q = 1


def _log_bounds(logq: np.ndarray, sigma: float, num_classes: int, k: Any) -> tuple[Any, Any]:
    """log B_L^k(q), log B_U^k(q): bounds on q~ of any histogram k teachers away.

    Proof (one step). Let i* be the top class of D. For D' one teacher away each
    gap n'_i* - n'_i >= gap_i - 2, and q~(D') (taken w.r.t. the top class of D',
    which minimises the union bound) is at most sum_i h(y_i), y_i = 1/2 erfc(gap_i /
    (2 sigma)), h(y) = Phi(Phi^-1(y) + mu), mu = sqrt(2)/sigma. h is concave (h' =
    exp(-z mu - mu^2/2) decreases in z = Phi^-1(y)), so by Jensen sum_i h(y_i) <=
    (m-1) h(q~/(m-1)) =: U(q~), capped at 1 - 1/m (if q~(D) itself was capped,
    q~(D') <= 1 - 1/m <= U(1 - 1/m) since U(q) >= q). U is increasing with inverse
    L(q) = (m-1) Phi(Phi^-1(q/(m-1)) - sqrt(2)/sigma), and by symmetry q~(D') >=
    L(q~(D)). Iterating shifts Phi^-1 by k sqrt(2)/sigma.
    """
    log_m1 = np.log(num_classes - 1)
    z = ndtri_exp(np.minimum(logq - log_m1, 0.0))
    shift = np.asarray(k) * np.sqrt(2.0) / sigma
    lo = log_m1 + log_ndtr(z - shift)
    hi = np.minimum(log_m1 + log_ndtr(z + shift), np.log1p(-1.0 / num_classes))
    return lo, hi


@lru_cache(maxsize=64)
def _gnmax_tables(sigma: float, order: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(step values c_j, cell sensitivity bounds) of beta_G on _LOGQ_GRID."""
    raw = _rdp_from_logq(_LOGQ_GRID, sigma, np.array([order]))[:, 0]
    c = np.minimum.accumulate(raw[::-1])[::-1]  # c_j = min over grid points >= g_j
    lo, hi = _log_bounds(_LOGQ_GRID, sigma, num_classes, 1)
    # Cell j = (g_{j-1}, g_j] where beta_G = c_j. beta_G is monotone, so for q in
    # the cell a neighbour costs at most c[cell(U(g_j))], at least c[cell(L(g_{j-1}))].
    up = c[np.searchsorted(_LOGQ_GRID, hi)] - c
    down = np.zeros_like(c)
    down[1:] = c[1:] - c[np.searchsorted(_LOGQ_GRID, lo[:-1])]
    return c, np.maximum(up, down)


def gnmax_rdp_monotone(votes: Any, sigma: float, order: float) -> np.ndarray:
    """beta_G: grid-rounded data-dependent GNMax RDP at one order, per row of ``votes``.

    A valid upper bound on :func:`~fedens.privacy.pate_analysis.gnmax_rdp_data_dependent`
    at ``order`` (within ~2% of it) that is non-decreasing in q~ by construction.

    Examples
    --------
    >>> float(gnmax_rdp_monotone([[250, 0, 0]], 40.0, 10.0)[0]) < 10.0 / 40**2
    True
    """
    v = _votes(votes, 2)
    s = _positive("sigma", sigma)
    c, _ = _gnmax_tables(s, _order(order), v.shape[1])
    return c[np.searchsorted(_LOGQ_GRID, _log_prob_not_top(v, s))]


def _distance(name: str, value: int) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return int(value)


def _order(order: float) -> float:
    order = float(order)
    if not np.isfinite(order) or order <= 1:
        raise ValueError(f"order must be a finite number > 1, got {order}")
    return order


def gnmax_local_sensitivity_bounds(
    votes: Any, sigma: float, order: float, max_distance: int
) -> np.ndarray:
    """A[q, k] >= local sensitivity of beta_G at any histogram k teachers from row q.

    Shape (n, max_distance + 1). ``A[:, 0]`` bounds the local sensitivity itself;
    ``A[q, k] <= A'[q, k+1]`` for neighbouring votes, as smooth sensitivity needs.

    Examples
    --------
    >>> a = gnmax_local_sensitivity_bounds([[240, 10]], 40.0, 10.0, 3)
    >>> bool(np.all(np.diff(a, axis=1) >= 0))
    True
    """
    v = _votes(votes, 2)
    s = _positive("sigma", sigma)
    _, cell_bound = _gnmax_tables(s, _order(order), v.shape[1])
    max_distance = _distance("max_distance", max_distance)
    logq = _log_prob_not_top(v, s)
    lo, hi = _log_bounds(logq[:, None], s, v.shape[1], np.arange(max_distance + 1)[None, :])
    j_lo, j_hi = np.searchsorted(_LOGQ_GRID, lo), np.searchsorted(_LOGQ_GRID, hi)
    out = np.empty(lo.shape)
    for i, j0 in enumerate(j_lo[:, 0]):  # every interval contains cell j0 = cell(q~)
        left = np.maximum.accumulate(cell_bound[j0::-1])  # max over cells [j0 - t, j0]
        right = np.maximum.accumulate(cell_bound[j0:])  # max over cells [j0, j0 + t]
        out[i] = np.maximum(left[j0 - j_lo[i]], right[j_hi[i] - j0])
    return out


def threshold_local_sensitivity_bounds(
    votes: Any, threshold: float, sigma_threshold: float, order: float,
    num_teachers: int, max_distance: int,
) -> np.ndarray:
    """A[q, k] >= local sensitivity of the threshold check's data-dependent RDP, k away.

    The cost depends on the votes only through the max count v (an integer in
    [0, num_teachers]), which one teacher moves by at most 1; so the exact bound
    is max over v' in [v-k, v+k] of max |r(v' +- 1) - r(v')|.

    Examples
    --------
    >>> threshold_local_sensitivity_bounds([[250, 0]], 200., 150., 10., 250, 2).shape
    (1, 3)
    """
    v = _votes(votes, 2)
    num_teachers = _distance("num_teachers", num_teachers)
    max_distance = _distance("max_distance", max_distance)
    top = v.max(axis=1)
    if np.any(top != np.round(top)) or np.any(top < 0) or np.any(top > num_teachers):
        raise ValueError(f"max votes must be integers in [0, {num_teachers}], got {top!r}")
    s1 = _positive("sigma_threshold", sigma_threshold)
    counts = np.arange(num_teachers + 1, dtype=float)
    r = _threshold_rdp(counts, float(threshold), s1, np.array([_order(order)]))[:, 0]
    step = np.abs(np.diff(r))
    ls = np.maximum(np.append(step, 0.0), np.insert(step, 0, 0.0))  # up / down neighbours
    k = np.arange(max_distance + 1)
    out = np.empty((len(v), max_distance + 1))
    for i, c in enumerate(top.astype(int)):  # max over [c - k, c + k], clipped to [0, n]
        left = np.maximum.accumulate(ls[c::-1])
        right = np.maximum.accumulate(ls[c:])
        out[i] = np.maximum(left[np.minimum(k, c)], right[np.minimum(k, num_teachers - c)])
    return out


def smooth_sensitivity_of_rdp(
    votes: Any, *, sigma: float, order: float, beta: float, num_teachers: int,
    threshold: float | None = None, sigma_threshold: float | None = None, answered: Any = None,
) -> tuple[float, float]:
    """(f(D), SS_beta(D)): data-dependent RDP at ``order`` and its smooth sensitivity.

    f sums :func:`gnmax_rdp_monotone` over answered queries and, with a
    threshold, the check's cost over all queries. Both numbers are PRIVATE.
    SS = max(max_{k<=K} e^{-beta k} min(A_k, G), e^{-beta (K+1)} G) with
    K = num_teachers, A_k the summed per-query bounds and G the sum of the
    data-independent costs (no cost differs by more): beta-smooth, >= LS.

    Examples
    --------
    >>> f, ss = smooth_sensitivity_of_rdp([[250, 0, 0]], sigma=40., order=10., beta=.04,
    ...                                   num_teachers=250)
    >>> 0 < f < ss < 10 / 40**2
    True
    """
    v = _votes(votes, 2)
    s2, b, lam = _positive("sigma", sigma), float(beta), _order(order)
    num_teachers = _distance("num_teachers", num_teachers)
    if not np.isfinite(b) or b < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if threshold is None:
        if answered is not None or sigma_threshold is not None:
            raise ValueError("answered / sigma_threshold need a threshold (Confident-GNMax)")
        mask = np.ones(len(v), dtype=bool)
        f, a, g = 0.0, np.zeros(num_teachers + 1), 0.0
    else:
        mask = np.asarray(answered, dtype=bool)
        if sigma_threshold is None or mask.shape != (len(v),):
            raise ValueError("Confident-GNMax needs sigma_threshold and answered of shape (n,)")
        s1 = _positive("sigma_threshold", sigma_threshold)
        th = _threshold_rdp(v.max(axis=1), float(threshold), s1, np.array([lam]))[:, 0]
        f = float(th.sum())
        a = threshold_local_sensitivity_bounds(v, threshold, s1, lam, num_teachers,
                                               num_teachers).sum(axis=0)
        g = len(v) * lam / (2 * s1**2)
    if mask.any():
        f += float(gnmax_rdp_monotone(v[mask], s2, lam).sum())
        a = a + gnmax_local_sensitivity_bounds(v[mask], s2, lam, num_teachers).sum(axis=0)
        g += mask.sum() * lam / s2**2
    discount = np.exp(-b * np.arange(num_teachers + 1))
    ss = max(float(np.max(discount * np.minimum(a, g))), np.exp(-b * (num_teachers + 1)) * g)
    return f, ss


def gnss_rdp(order: float, beta: float, sigma_ss: float) -> float:
    """RDP at ``order`` of releasing f(D) + SS_beta(D) * N(0, sigma_ss^2).

    For neighbours, r = SS(D')/SS(D) is in [e^-beta, e^beta] and |f(D) - f(D')| <=
    min(SS(D), SS(D')). The Renyi divergence of N(m0, s0^2) from N(m1, s1^2) is
    lam (m0-m1)^2 / (2 s_lam^2) - log(s_lam^2 / (s0^(2(1-lam)) s1^(2 lam))) / (2(lam-1)),
    s_lam^2 = lam s1^2 + (1-lam) s0^2. With s0 = sigma_ss SS(D) and g(r) = lam r^2 + 1 - lam
    each term is maximised separately: the mean term by r = e^-beta
    (min(1,r)^2/g(r) peaks there), -log g / (2(lam-1)) by r = e^-beta, and
    lam log r / (lam-1) by r = e^beta. Requires g(e^-beta) > 0.

    Examples
    --------
    >>> round(gnss_rdp(10.0, 0.0, 2.0), 4)  # beta = 0: a Gaussian of sensitivity 1
    1.25
    """
    lam, b, s = _order(order), float(beta), _positive("sigma_ss", sigma_ss)
    g = 1 - lam * (-np.expm1(-2 * b))
    if b < 0 or g <= 0:
        raise ValueError(f"need beta >= 0 and order * (1 - exp(-2 beta)) < 1, got {order}, {beta}")
    return float(lam * np.exp(-2 * b) / (2 * s**2 * g) + (lam * b - 0.5 * np.log(g)) / (lam - 1))


@dataclass(frozen=True)
class SmoothSensitivityRelease:
    """What may be published: the noisy data-dependent RDP and what releasing it cost.

    ``epsilon_estimate`` converts ``max(noisy_rdp, 0) + gnss_rdp`` at ``order``:
    a DP estimate of the answers' data-dependent cost plus the release's own
    cost, not a worst-case guarantee for the answers.
    """

    order: float
    beta: float
    sigma_ss: float
    delta: float
    noisy_rdp: float
    gnss_rdp: float
    epsilon_estimate: float


def release_data_dependent_rdp(
    votes: Any, *, sigma: float, order: float, beta: float, sigma_ss: float, delta: float,
    num_teachers: int, rng: np.random.Generator, threshold: float | None = None,
    sigma_threshold: float | None = None, answered: Any = None,
) -> SmoothSensitivityRelease:
    """GNSS release of the data-dependent RDP at ``order`` (Papernot et al. 2018, Sec. 4).

    ``order``, ``beta`` and ``sigma_ss`` must be chosen without looking at the votes.

    Examples
    --------
    >>> r = release_data_dependent_rdp([[250, 0, 0]] * 100, sigma=40., order=10., beta=.04,
    ...     sigma_ss=5., delta=1e-5, num_teachers=250, rng=np.random.default_rng(0))
    >>> round(r.gnss_rdp, 3)
    0.924
    """
    cost = gnss_rdp(order, beta, sigma_ss)  # validates order, beta, sigma_ss first
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    f, ss = smooth_sensitivity_of_rdp(votes, sigma=sigma, order=order, beta=beta,
                                      num_teachers=num_teachers, threshold=threshold,
                                      sigma_threshold=sigma_threshold, answered=answered)
    noisy = f + ss * sigma_ss * float(rng.standard_normal())
    eps, _ = rdp_to_epsilon([max(noisy, 0.0) + cost], [order], delta)
    return SmoothSensitivityRelease(float(order), float(beta), float(sigma_ss), float(delta),
                                    noisy, cost, eps)
