"""Data-dependent PATE analysis and its smooth-sensitivity release.

Expected values are computed here independently of the implementation: q~ with
scipy.special.erfc, exact Renyi divergences of the mechanisms' output
distributions (closed form or quadrature), dp-accounting for the Gaussian,
and brute force over neighbouring histograms / teacher-vote matrices.
"""

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy import integrate, special, stats

from fedens.privacy.pate_analysis import (
    DEFAULT_ORDERS,
    analyze_pate,
    confident_gnmax_rdp_data_dependent,
    gnmax_log_prob_not_top,
    gnmax_prob_not_top,
    gnmax_rdp_data_dependent,
    gnmax_rdp_data_independent,
    rdp_to_epsilon,
    threshold_rdp_data_dependent,
)
from fedens.privacy.smooth_sensitivity import (
    _log_bounds,
    gnmax_local_sensitivity_bounds,
    gnmax_rdp_monotone,
    gnss_rdp,
    release_data_dependent_rdp,
    smooth_sensitivity_of_rdp,
    threshold_local_sensitivity_bounds,
)

ORDERS = np.array([1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0])


def renyi(logp, logq, order):
    """Exact Renyi divergence D_order(P || Q) of two discrete distributions, in log space."""
    return special.logsumexp(order * np.asarray(logp) + (1 - order) * np.asarray(logq)) / (order - 1)


def neighbours(h):
    """Histograms one teacher away: one vote moved from class a to class b."""
    for a, b in itertools.permutations(range(len(h)), 2):
        if h[a] > 0:
            g = list(h)
            g[a] -= 1
            g[b] += 1
            yield tuple(g)


def ball(h, k):
    seen, front = {tuple(h)}, {tuple(h)}
    for _ in range(k):
        front = {g for f in front for g in neighbours(f)} - seen
        seen |= front
    return seen


def histograms(n, c):
    return [h for h in itertools.product(range(n + 1), repeat=c) if sum(h) == n]


# --------------------------------------------------------------------------- q~


@pytest.mark.parametrize(
    "votes, sigma",
    [([10, 7, 2], 2.0), ([30, 29, 0, 1], 5.0), ([5, 5], 1.0), ([100, 60, 60], 40.0), ([3, 0], 0.5)],
)
def test_prob_not_top_is_the_erfc_union_bound(votes, sigma):
    v = np.array(votes, float)
    top = v.max()
    i_star = int(np.argmax(v))
    union = sum(0.5 * special.erfc((top - v[i]) / (2 * sigma)) for i in range(len(v)) if i != i_star)
    expected = min(union, 1 - 1 / len(v))
    assert gnmax_prob_not_top(votes, sigma) == pytest.approx(expected, rel=1e-12)
    assert gnmax_log_prob_not_top(votes, sigma) == pytest.approx(math.log(expected), rel=1e-12)


def test_log_prob_not_top_does_not_underflow():
    # erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2)) for large x; here x = 500.
    x = 1000 / 2.0
    expected = math.log(0.5) - x * x - math.log(x * math.sqrt(math.pi)) + math.log1p(-0.5 / x**2)
    assert gnmax_prob_not_top([1000, 0], 1.0) == 0.0
    assert gnmax_log_prob_not_top([1000, 0], 1.0) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("votes, sigma", [([10, 7, 2, 0], 3.0), ([20, 19, 18], 4.0), ([50, 45, 5], 10.0)])
def test_prob_not_top_upper_bounds_monte_carlo(votes, sigma):
    rng = np.random.default_rng(0)
    v = np.array(votes, float)
    n = 200_000
    out = np.argmax(v + rng.normal(0, sigma, size=(n, len(v))), axis=1)
    empirical = np.mean(out != np.argmax(v))
    q = gnmax_prob_not_top(votes, sigma)
    assert empirical <= q + 4 * math.sqrt(q * (1 - q) / n)


# ---------------------------------------------------------- data-dependent RDP


def test_unanimous_vote_costs_far_less_than_data_independent():
    sigma, votes = 40.0, [250] + [0] * 9
    # Order that minimises the data-independent epsilon of 640 GNMax answers at delta=1e-5.
    orders = DEFAULT_ORDERS
    basic = 640 * orders / sigma**2 + math.log(1e5) / (orders - 1)
    best = orders[np.argmin(basic)]
    dd = gnmax_rdp_data_dependent(votes, sigma, [best])[0]
    assert dd < 1e-2 * best / sigma**2
    # Hand check of q~: 9 classes, gap 250: 9/2 erfc(250/80).
    assert gnmax_prob_not_top(votes, sigma) == pytest.approx(4.5 * special.erfc(3.125), rel=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 5.0, 40.0, 200.0])
def test_tied_vote_costs_exactly_data_independent(sigma):
    for votes in ([100, 100, 50], [7, 7], [30, 30, 30, 10]):
        dd = gnmax_rdp_data_dependent(votes, sigma, DEFAULT_ORDERS)
        np.testing.assert_array_equal(dd, DEFAULT_ORDERS / sigma**2)


def test_cost_decreases_with_margin_and_never_exceeds_data_independent():
    sigma, di = 40.0, gnmax_rdp_data_independent(40.0, DEFAULT_ORDERS)
    costs = [gnmax_rdp_data_dependent([250 - x, x] + [0] * 8, sigma, DEFAULT_ORDERS)
             for x in range(125, -1, -1)]  # margin 0, 2, ..., 250
    costs = np.array(costs)
    assert np.all(costs <= di)
    assert np.all(np.diff(costs, axis=0) <= 0)
    eps = [rdp_to_epsilon(c * 100, DEFAULT_ORDERS, 1e-5)[0] for c in costs]
    assert np.all(np.diff(eps) <= 0) and eps[-1] < 0.2 * eps[0]


@pytest.mark.parametrize("sigma, n", [(2.0, 30), (4.0, 60)])
def test_bound_dominates_exact_renyi_two_classes(sigma, n):
    # With 2 classes GNMax outputs class 0 iff gap + N(0, 2 sigma^2) > 0.
    def logp(gap):
        z = gap / (math.sqrt(2) * sigma)
        return [special.log_ndtr(z), special.log_ndtr(-z)]

    active = 0
    for gap in range(0, n + 1, 2):
        v = [(n + gap) / 2, (n - gap) / 2]
        bound = gnmax_rdp_data_dependent(v, sigma, ORDERS)
        exact = [max(renyi(logp(gap), logp(gap + s), o) for s in (-2, 2) if abs(gap + s) <= n)
                 for o in ORDERS]
        assert np.all(np.array(exact) <= bound + 1e-12)
        active += np.any(bound < ORDERS / sigma**2)
    assert active > 3  # the data-dependent branch was exercised


def gnmax_log_distribution(v, sigma):
    """log Pr[argmax(v + N(0, sigma^2 I)) = i] by quadrature over the winner's noise."""
    z = np.linspace(-40, 40, 16001)
    out = []
    for i in range(len(v)):
        log_f = stats.norm.logpdf(z) + sum(
            special.log_ndtr((v[i] - v[j]) / sigma + z) for j in range(len(v)) if j != i)
        out.append(special.logsumexp(log_f) + math.log(z[1] - z[0]))
    return np.array(out)


@pytest.mark.parametrize("votes, sigma", [((12, 2, 0), 2.0), ((14, 0, 0), 3.0), ((9, 4, 1), 1.5)])
def test_bound_dominates_exact_renyi_three_classes(votes, sigma):
    logp = gnmax_log_distribution(np.array(votes, float), sigma)
    assert special.logsumexp(logp) == pytest.approx(0, abs=1e-9)
    bound = gnmax_rdp_data_dependent(votes, sigma, ORDERS)
    assert np.any(bound < ORDERS / sigma**2)
    for g in neighbours(votes):
        logp2 = gnmax_log_distribution(np.array(g, float), sigma)
        exact = np.array([renyi(logp, logp2, o) for o in ORDERS])
        assert np.all(exact <= bound + 1e-9)


def test_threshold_bound_dominates_exact_renyi():
    T, s1, n = 20.0, 3.0, 40

    def logp(v):  # (answer, abstain)
        z = (v - T) / s1
        return [special.log_ndtr(z), special.log_ndtr(-z)]

    for v in range(n + 1):
        bound = threshold_rdp_data_dependent([v, n - v], T, s1, ORDERS)
        assert np.all(bound <= ORDERS / (2 * s1**2))
        top = max(v, n - v)  # a neighbour's max count is top - 1, top or top + 1
        exact = [max(renyi(logp(top), logp(t), o) for t in (top - 1, top + 1)) for o in ORDERS]
        assert np.all(np.array(exact) <= bound + 1e-12)
    assert np.any(threshold_rdp_data_dependent([n, 0], T, s1, ORDERS) < ORDERS / (2 * s1**2))


def test_confident_gnmax_charges_answer_only_when_answered():
    v = [240, 5, 5]
    check = threshold_rdp_data_dependent(v, 200.0, 150.0, ORDERS)
    answer = gnmax_rdp_data_dependent(v, 40.0, ORDERS)
    np.testing.assert_array_equal(
        confident_gnmax_rdp_data_dependent(v, 200., 150., 40., False, ORDERS), check)
    np.testing.assert_allclose(confident_gnmax_rdp_data_dependent(v, 200., 150., 40., True, ORDERS),
                               check + answer)


# ------------------------------------------------------------ RDP -> epsilon


@pytest.mark.parametrize("z, steps", [(1.0, 1), (2.0, 50), (40.0 / math.sqrt(2), 640)])
def test_rdp_to_epsilon_matches_dp_accounting_gaussian(z, steps):
    accountant = RdpAccountant(list(DEFAULT_ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(z), steps)
    eps_ref, order_ref = accountant.get_epsilon_and_optimal_order(1e-5)
    rdp = steps * DEFAULT_ORDERS / (2 * z**2)
    eps, order = rdp_to_epsilon(rdp, DEFAULT_ORDERS, 1e-5)
    assert eps == pytest.approx(eps_ref, rel=1e-12) and order == order_ref
    # Hand: min over orders of rdp + log(1 - 1/a) - log(delta a) / (a - 1).
    a = DEFAULT_ORDERS
    assert eps == pytest.approx(np.min(rdp + np.log1p(-1 / a) - np.log(1e-5 * a) / (a - 1)), rel=1e-12)


def test_rdp_to_epsilon_rejects_bad_input():
    with pytest.raises(ValueError, match="orders"):
        rdp_to_epsilon([0.1], [1.0], 1e-5)
    with pytest.raises(ValueError, match="rdp"):
        rdp_to_epsilon([0.1, 0.2], [2.0], 1e-5)
    with pytest.raises(ValueError, match="delta"):
        rdp_to_epsilon([0.1], [2.0], 0.0)


# ------------------------------------------------------------- batch report


def test_analyze_pate_reports_both_numbers():
    rng = np.random.default_rng(0)
    n = 1100  # more than one of the chunks analyze_pate works in, the last one partial
    votes = np.array([rng.multinomial(250, rng.dirichlet(np.full(10, 0.05))) for _ in range(n)])
    answered = votes.max(axis=1) + rng.normal(0, 150, n) >= 200
    a = analyze_pate(votes, sigma=40.0, delta=1e-5, threshold=200.0, sigma_threshold=150.0,
                     answered=answered, orders=ORDERS)
    di = n * ORDERS / (2 * 150.0**2) + answered.sum() * ORDERS / 40.0**2
    np.testing.assert_allclose(a.rdp_data_independent, di)
    per_query = [confident_gnmax_rdp_data_dependent(v, 200., 150., 40., bool(s), ORDERS)
                 for v, s in zip(votes, answered, strict=True)]
    np.testing.assert_allclose(a.per_query_rdp, per_query)
    np.testing.assert_allclose(a.rdp_data_dependent, np.sum(per_query, axis=0))
    assert a.epsilon_data_dependent < a.epsilon_data_independent
    d = a.as_dict()
    assert d["queries_answered"] == answered.sum() and d["queries"] == n
    assert d["epsilon_data_independent"] == rdp_to_epsilon(di, ORDERS, 1e-5)[0]
    g = analyze_pate(votes, sigma=40.0, delta=1e-5, orders=ORDERS)
    np.testing.assert_allclose(g.rdp_data_independent, n * ORDERS / 40.0**2)
    np.testing.assert_allclose(g.per_query_rdp, [gnmax_rdp_data_dependent(v, 40.0, ORDERS) for v in votes])
    assert g.num_answered == n
    summed = analyze_pate(votes, sigma=40.0, delta=1e-5, threshold=200.0, sigma_threshold=150.0,
                          answered=answered, orders=ORDERS, per_query=False)  # the sum alone
    assert summed.per_query_rdp is None
    np.testing.assert_array_equal(summed.rdp_data_dependent, a.rdp_data_dependent)
    assert summed.epsilon_data_dependent == a.epsilon_data_dependent


@pytest.mark.parametrize("kwargs", [
    dict(answered=np.ones(3, bool)),
    dict(threshold=5.0),
    dict(threshold=5.0, sigma_threshold=1.0),
    dict(threshold=5.0, sigma_threshold=1.0, answered=np.ones(2, bool)),
    dict(orders=[1.0, 2.0]),
])
def test_analyze_pate_rejects_inconsistent_arguments(kwargs):
    with pytest.raises(ValueError):
        analyze_pate(np.array([[5, 0], [4, 1], [3, 2]]), sigma=1.0, delta=1e-5, **kwargs)


# -------------------------------------------------------- smooth sensitivity


CASES = [(1.0, 3.0), (2.0, 5.0), (4.0, 10.0)]  # (sigma, order)


def test_monotone_rdp_is_valid_monotone_and_close():
    for sigma, order in [(40.0, 10.0), (40.0, 30.0), (5.0, 8.0)]:
        votes = np.array([[250 - x, x] + [0] * 8 for x in range(125, -1, -1)], float)
        step = gnmax_rdp_monotone(votes, sigma, order)
        exact = np.array([gnmax_rdp_data_dependent(v, sigma, [order])[0] for v in votes])
        assert np.all(step >= exact) and np.all(np.diff(step) <= 0)
        assert np.all(step <= exact * 1.03 + 1e-6)


@pytest.mark.parametrize("classes, n", [(3, 12), (4, 9), (2, 16)])
def test_neighbour_bounds_on_q_brute_force(classes, n):
    for sigma in (0.7, 2.0, 6.0):
        for h in histograms(n, classes):
            logq = gnmax_log_prob_not_top(h, sigma)
            lo, hi = _log_bounds(np.array([logq]), sigma, classes, 1)
            for g in neighbours(h):
                assert lo[0] - 1e-9 <= gnmax_log_prob_not_top(g, sigma) <= hi[0] + 1e-9


@pytest.mark.parametrize("classes, n", [(3, 12), (4, 8), (2, 16)])
def test_local_sensitivity_at_distance_k_vs_brute_force(classes, n):
    hs = histograms(n, classes)
    ratios = []
    for sigma, order in CASES:
        cost = dict(zip(hs, gnmax_rdp_monotone(np.array(hs, float), sigma, order), strict=True))
        bounds = gnmax_local_sensitivity_bounds(np.array(hs, float), sigma, order, 2)
        assert np.all(np.diff(bounds, axis=1) >= 0)
        for h, a in zip(hs, bounds, strict=True):
            ls = {f: max(abs(cost[g] - cost[f]) for g in neighbours(f)) for f in ball(h, 2)}
            assert ls[h] <= a[0] + 1e-12
            for k in (1, 2):
                assert max(ls[f] for f in ball(h, k)) <= a[k] + 1e-12
            if ls[h] > 1e-6:
                ratios.append(a[0] / ls[h])
    assert np.median(ratios) < 3  # an upper bound, but not a vacuous one


def test_threshold_local_sensitivity_vs_brute_force():
    T, s1, n, order = 6.0, 1.5, 10, 4.0
    hs = histograms(n, 3)
    cost = {h: threshold_rdp_data_dependent(h, T, s1, [order])[0] for h in hs}
    bounds = threshold_local_sensitivity_bounds(np.array(hs, float), T, s1, order, n, 3)
    for h, a in zip(hs, bounds, strict=True):
        ls = {f: max(abs(cost[g] - cost[f]) for g in neighbours(f)) for f in ball(h, 3)}
        for k in range(4):
            assert max(ls[f] for f in ball(h, k)) <= a[k] + 1e-12
        if math.ceil(n / 3) < max(h) < n:  # both max - 1 and max + 1 reachable: exact
            assert ls[h] == pytest.approx(a[0], abs=1e-12)


@pytest.mark.parametrize("confident", [False, True])
def test_smooth_sensitivity_bounds_change_and_is_smooth_over_teachers(confident):
    """Teachers x queries label matrix; a neighbour replaces one teacher's whole row."""
    rng = np.random.default_rng(1)
    teachers, queries, classes, beta = 6, 2, 3, 0.1
    kw = dict(sigma=1.0, order=4.0, beta=beta, num_teachers=teachers)
    if confident:
        kw.update(threshold=4.0, sigma_threshold=1.0, answered=np.array([True, False]))

    def hist(labels):
        return np.stack([np.bincount(labels[:, q], minlength=classes) for q in range(queries)])

    for _ in range(6):
        labels = rng.integers(0, classes, (teachers, queries))
        labels[:4] = rng.integers(0, classes, queries)  # a majority agrees
        f, ss = smooth_sensitivity_of_rdp(hist(labels), **kw)
        local = 0.0
        for t, row in itertools.product(range(teachers), itertools.product(range(classes), repeat=queries)):
            other = labels.copy()
            other[t] = row
            f2, ss2 = smooth_sensitivity_of_rdp(hist(other), **kw)
            local = max(local, abs(f - f2))
            assert abs(f - f2) <= min(ss, ss2) + 1e-12
            assert ss <= math.exp(beta) * ss2 + 1e-12
        assert ss >= local


def gaussian_renyi_closed_form(order, m0, s0, m1, s1):
    var = order * s1**2 + (1 - order) * s0**2
    return (order * (m0 - m1) ** 2 / (2 * var)
            - math.log(var / (s0 ** (2 * (1 - order)) * s1 ** (2 * order))) / (2 * (order - 1)))


@pytest.mark.parametrize("order, m0, s0, m1, s1",
                         [(3.0, 0.0, 1.0, 0.7, 1.1), (10.0, 0.0, 2.0, 0.95, 1.9), (1.5, 1, 1, 0, 0.8)])
def test_gaussian_renyi_closed_form_matches_quadrature(order, m0, s0, m1, s1):
    def integrand(x):
        return math.exp(order * stats.norm.logpdf(x, m0, s0) + (1 - order) * stats.norm.logpdf(x, m1, s1))

    numeric = math.log(integrate.quad(integrand, -np.inf, np.inf, limit=200)[0]) / (order - 1)
    assert gaussian_renyi_closed_form(order, m0, s0, m1, s1) == pytest.approx(numeric, rel=1e-7)


@pytest.mark.parametrize("order, frac, sigma_ss", [(2.0, 0.3, 1.0), (10.0, 0.1, 5.0), (10.0, 0.45, 2.0),
                                                   (30.0, 0.4, 10.0), (5.0, 0.0, 3.0)])
def test_gnss_rdp_dominates_worst_case_divergence(order, frac, sigma_ss):
    beta = frac / order
    worst = 0.0
    for r in np.exp(np.linspace(-beta, beta, 401)):  # SS(D') / SS(D)
        for shift in np.linspace(0, min(1.0, r), 21):  # |f(D) - f(D')| / SS(D)
            worst = max(worst, gaussian_renyi_closed_form(order, 0.0, sigma_ss, shift, sigma_ss * r))
    bound = gnss_rdp(order, beta, sigma_ss)
    assert worst <= bound + 1e-12
    assert bound - worst <= 2 * order * beta / (order - 1) + 1e-9  # loose only in the log r term


def test_release_is_f_plus_scaled_noise():
    votes = np.array([[240, 5, 5]] * 50 + [[130, 120, 0]] * 5, float)
    kw = dict(sigma=40.0, order=12.0, beta=0.02, num_teachers=250)
    f, ss = smooth_sensitivity_of_rdp(votes, **kw)
    r = release_data_dependent_rdp(votes, sigma_ss=8.0, delta=1e-5, rng=np.random.default_rng(3), **kw)
    z = np.random.default_rng(3).standard_normal()
    assert r.noisy_rdp == pytest.approx(f + ss * 8.0 * z, rel=1e-12)
    assert r.gnss_rdp == gnss_rdp(12.0, 0.02, 8.0)
    expected = max(r.noisy_rdp, 0) + r.gnss_rdp + math.log1p(-1 / 12) - math.log(1e-5 * 12) / 11
    assert r.epsilon_estimate == pytest.approx(expected, rel=1e-12)
    exact = analyze_pate(votes, sigma=40.0, delta=1e-5, orders=[12.0]).rdp_data_dependent[0]
    assert exact <= f <= 1.03 * exact
    with pytest.raises(ValueError, match="beta"):
        gnss_rdp(12.0, 0.05, 8.0)  # 12 (1 - e^-0.1) > 1


def paper_theorem_23(beta, sigma_ss, order):
    """The GNSS RDP as printed in Papernot et al. 2018, Theorem 23 (written out here to compare)."""
    return (order * math.exp(2 * beta) / sigma_ss**2
            + (-0.5 * math.log(1 - 2 * order * beta) + beta * order) / (order - 1))


@pytest.mark.parametrize("order, frac, sigma_ss, paper_is_below", [(15.0, 0.45, 5.0, True),
                                                                   (10.0, 0.49, 1.0, True),
                                                                   (15.0, 0.2, 5.0, False)])
def test_gnss_bound_against_the_papers_formula(order, frac, sigma_ss, paper_is_below):
    """Where 2 * order * beta nears 1 the printed formula falls below the exact worst-case
    divergence of the two Gaussians (so fedens does not use it); at the moderate
    beta fedens configures, the printed formula is the looser of the two."""
    beta = frac / order
    worst = max(gaussian_renyi_closed_form(order, 0.0, sigma_ss, min(1.0, r), sigma_ss * r)
                for r in np.exp(np.linspace(-beta, beta, 801)))
    ours, paper = gnss_rdp(order, beta, sigma_ss), paper_theorem_23(beta, sigma_ss, order)
    assert worst <= ours <= worst * 1.001 + 2 * frac / (order - 1)  # as tight as the test above
    assert bool(paper < worst) is paper_is_below
    if not paper_is_below:
        assert ours < paper
