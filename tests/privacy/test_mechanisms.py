"""DP mechanisms: events against independent dp-accounting, measured noise, calibration,
Confident-GNMax behaviour, an empirical privacy audit, and input errors."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedens.privacy import (
    MECHANISMS,
    ConfidentGNMax,
    GNMax,
    LNMax,
    NoisyLinearPool,
    PrivacyLedger,
    WeightedGNMax,
    epsilon_from_events,
    make_mechanism,
    register_mechanism,
)
from fedens.privacy.mechanism_base import project_to_simplex

DELTA = 1e-5
Gauss, Laplace = dp_accounting.GaussianDpEvent, dp_accounting.LaplaceDpEvent


def independent_epsilon(pairs, delta=DELTA):
    """Epsilon of (event, count) pairs composed in a fresh dp-accounting RdpAccountant."""
    accountant = RdpAccountant()
    for event, count in pairs:
        if count:
            accountant.compose(event, count)
    return accountant.get_epsilon(delta)


def rng(seed=0):
    return np.random.default_rng(seed)


def votes_for(n, C=4, teachers=50, seed=1):
    return rng(seed).multinomial(teachers, np.ones(C) / C, size=n)


# --- events equal dp-accounting computed independently -------------------------------


def test_gnmax_lnmax_weighted_pool_events_equal_independent_accounting():
    votes = votes_for(7)
    cases = [
        (GNMax(sigma=3.0), votes, [(Gauss(3.0 / math.sqrt(2)), 7)]),
        (LNMax(scale=4.0), votes, [(Laplace(2.0), 7)]),  # L1 sensitivity 2: eps 2/b = 1/2
        (WeightedGNMax(sigma=2.0, weights=[1.0, 0.5, 2.0], num_classes=3),
         rng().integers(0, 3, size=(7, 3)), [(Gauss(2.0 / (math.sqrt(2) * 2.0)), 7)]),
        (NoisyLinearPool(clip=0.5, noise_multiplier=1.3),
         rng().dirichlet(np.ones(4), size=(7, 5)), [(Gauss(1.3), 7)]),
    ]
    for mech, inputs, by_hand in cases:
        release = mech.release(inputs, rng())
        want = independent_epsilon(by_hand)
        assert epsilon_from_events(mech.events(release), DELTA) == pytest.approx(want, rel=1e-12)
        assert epsilon_from_events([mech.event(release)], DELTA) == pytest.approx(want, rel=1e-12)


def test_confident_gnmax_events_charge_checks_for_all_and_answers_for_answered():
    mech = ConfidentGNMax(threshold=30.0, sigma1=5.0, sigma2=4.0)
    votes = np.vstack([np.tile([40, 5, 5], (20, 1)), np.tile([17, 17, 16], (30, 1))])
    release = mech.release(votes, rng())
    answered = release.num_answered
    assert 15 <= answered <= 25 and release.labels[~release.answered].tolist() == [-1] * (50 - answered)
    want = independent_epsilon([(Gauss(5.0), 50), (Gauss(4.0 / math.sqrt(2)), answered)])
    assert epsilon_from_events(mech.events(release), DELTA) == pytest.approx(want, rel=1e-12)


def test_events_round_trip_through_a_ledger(tmp_path):
    ledger = PrivacyLedger(tmp_path / "site.sqlite", site="0", budget_epsilon=50.0, delta=DELTA)
    votes = votes_for(3)
    mechs = [GNMax(sigma=5.0), LNMax(scale=6.0),
             ConfidentGNMax(threshold=10.0, sigma1=8.0, sigma2=5.0)]
    for mech in mechs:
        release = mech.release(votes, rng())
        ledger.charge(mech.event(release), mechanism=mech.name, params=mech.params())
    n_answered = mechs[2].release(votes, rng()).num_answered
    want = independent_epsilon([(Gauss(5.0 / math.sqrt(2)), 3), (Laplace(3.0), 3),
                                (Gauss(8.0), 3), (Gauss(5.0 / math.sqrt(2)), n_answered)])
    assert ledger.epsilon() == pytest.approx(want, rel=1e-12)


def test_gnmax_data_independent_rdp_is_lambda_over_sigma_squared():
    sigma, n = 7.0, 12
    mech = GNMax(sigma=sigma)
    release = mech.release(votes_for(n), rng())
    orders = np.arange(2, 65)
    accountant = RdpAccountant(orders)
    accountant.compose(mech.event(release))
    np.testing.assert_allclose(accountant.rdp, n * orders / sigma**2, rtol=1e-12)
    # and the conversion to (eps, delta) at one order, by hand (Canonne et al. 2020, Prop. 12)
    a = 9
    by_hand = n * a / sigma**2 + math.log1p(-1 / a) - math.log(DELTA * a) / (a - 1)
    single = RdpAccountant([a])
    single.compose(mech.event(release))
    assert single.get_epsilon(DELTA) == pytest.approx(by_hand, rel=1e-12)


# --- measured noise --------------------------------------------------------------------

Z = stats.norm.isf(0.5e-7)  # two-sided 1e-7 level for every interval below


def assert_gaussian_std(noise, sigma):
    """Sample variance of N(0, sigma^2) draws: (N-1) s^2 / sigma^2 ~ chi2(N-1)."""
    noise = np.asarray(noise).ravel()
    N = noise.size
    ratio = noise.var(ddof=1) / sigma**2 * (N - 1)
    assert stats.chi2.ppf(0.5e-7, N - 1) <= ratio <= stats.chi2.isf(0.5e-7, N - 1)
    assert abs(noise.mean()) <= Z * sigma / math.sqrt(N)


def test_measured_noise_matches_the_stated_scale():
    votes = votes_for(20_000, C=10)
    release = GNMax(sigma=3.0).release(votes, rng(1))
    assert_gaussian_std(release.noisy_aggregate - votes, 3.0)

    labels = rng(2).integers(0, 10, size=(20_000, 3))
    weighted = WeightedGNMax(sigma=2.5, weights=[1.0, 0.3, 0.7], num_classes=10)
    release = weighted.release(labels, rng(3))
    clean = np.zeros((20_000, 10))
    for k, w in enumerate([1.0, 0.3, 0.7]):
        clean[np.arange(20_000), labels[:, k]] += w
    assert_gaussian_std(release.noisy_aggregate - clean, 2.5)

    P = rng(4).dirichlet(np.ones(10), size=(20_000, 3))  # norms <= 1 = clip: nothing clipped
    release = NoisyLinearPool(clip=1.0, noise_multiplier=0.8).release(P, rng(5))
    assert_gaussian_std(release.noisy_aggregate - P.sum(axis=1), 0.8 * 2 * 1.0)

    mech = ConfidentGNMax(threshold=-100.0, sigma1=6.0, sigma2=4.0)
    release = mech.release(votes, rng(6))
    assert_gaussian_std(release.noisy_check - votes.max(axis=1), 6.0)
    ok = release.answered
    assert ok.mean() > 0.99 and np.isnan(release.noisy_aggregate[~ok]).all()
    assert_gaussian_std(release.noisy_aggregate[ok] - votes[ok], 4.0)


def test_measured_laplace_noise_matches_the_stated_scale():
    b, votes = 1.5, votes_for(20_000, C=10)
    noise = (LNMax(scale=b).release(votes, rng(7)).noisy_aggregate - votes).ravel()
    N, var = noise.size, 2 * b**2
    # Laplace kurtosis is 6, so sd(s^2) ~= var * sqrt(5 / N) (CLT on the squares)
    assert abs(noise.var(ddof=1) / var - 1) <= Z * math.sqrt(5 / N)
    assert abs(noise.mean()) <= Z * math.sqrt(var / N)
    assert abs(np.abs(noise).mean() / b - 1) <= Z / math.sqrt(N)  # E|X| = b, Var|X| = b^2


# --- calibration and monotonicity ------------------------------------------------------

CALIBRATED = {
    "gnmax": (lambda t, d, n: GNMax.with_epsilon(t, d, n),
              lambda m: [(Gauss(m.sigma / math.sqrt(2)), None)]),
    "lnmax": (lambda t, d, n: LNMax.with_epsilon(t, d, n),
              lambda m: [(Laplace(m.scale / 2), None)]),
    "weighted_gnmax": (
        lambda t, d, n: WeightedGNMax.with_epsilon(t, d, n, weights=[0.2, 3.0], num_classes=2),
        lambda m: [(Gauss(m.sigma / (math.sqrt(2) * 3.0)), None)]),
    "noisy_linear_pool": (lambda t, d, n: NoisyLinearPool.with_epsilon(t, d, n, clip=0.3),
                          lambda m: [(Gauss(m.noise_multiplier), None)]),
}


@pytest.mark.parametrize("name", sorted(CALIBRATED))
@settings(max_examples=12, deadline=None, derandomize=True)
@given(target=st.floats(0.1, 20.0), n=st.integers(1, 3000),
       delta=st.sampled_from([1e-5, 1e-7]))
def test_calibration_never_overshoots_and_is_tight(name, target, n, delta):
    calibrate, by_hand = CALIBRATED[name]
    mech = calibrate(target, delta, n)
    eps = independent_epsilon([(event, n) for event, _ in by_hand(mech)], delta)
    assert eps <= target
    assert eps >= target * (1 - 1e-4)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(target=st.floats(0.1, 20.0), n=st.integers(1, 3000), sigma1=st.floats(5.0, 500.0))
def test_confident_gnmax_calibration_covers_all_queries_answered(target, n, sigma1):
    checks = independent_epsilon([(Gauss(sigma1), n)])
    if checks >= target:
        with pytest.raises(ValueError, match="target_epsilon"):
            ConfidentGNMax.with_epsilon(target, DELTA, n, threshold=100.0, sigma1=sigma1)
        return
    mech = ConfidentGNMax.with_epsilon(target, DELTA, n, threshold=100.0, sigma1=sigma1)
    assert mech.sigma1 == sigma1 and mech.threshold == 100.0
    eps = independent_epsilon([(Gauss(sigma1), n), (Gauss(mech.sigma2 / math.sqrt(2)), n)])
    assert target * (1 - 1e-4) <= eps <= target


MAKERS = {
    "gnmax": lambda s: GNMax(sigma=s),
    "lnmax": lambda s: LNMax(scale=s),
    "confident_gnmax": lambda s: ConfidentGNMax(threshold=1.0, sigma1=s, sigma2=s),
    "weighted_gnmax": lambda s: WeightedGNMax(sigma=s, weights=[1.0, 2.0], num_classes=3),
    "noisy_linear_pool": lambda s: NoisyLinearPool(clip=1.0, noise_multiplier=s),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_epsilon_is_monotone_in_queries_and_in_one_over_noise(name):
    def eps(noise, n):
        return epsilon_from_events(MAKERS[name](noise).worst_case_events(n), DELTA)

    by_queries = [eps(2.0, n) for n in (1, 10, 100, 1000)]
    assert np.all(np.diff(by_queries) > 0)
    by_noise = [eps(s, 50) for s in (0.5, 1.0, 2.0, 8.0)]
    assert np.all(np.diff(by_noise) < 0)


# --- Confident-GNMax behaviour ---------------------------------------------------------

UNANIMOUS = np.tile([250] + [0] * 9, (4000, 1))
FLAT = np.tile([25] * 10, (4000, 1))  # 250 teachers spread evenly over 10 classes


def binomial_ok(k, n, p):
    return abs(k - n * p) <= Z * math.sqrt(n * p * (1 - p))


def test_confident_gnmax_answer_rate_with_the_papers_parameters():
    # T=200, sigma1=150 (Papernot et al. 2018, MNIST): the check passes with probability
    # Phi((max - T) / sigma1): 0.63 for a unanimous vote, 0.12 for a flat one.
    mech = ConfidentGNMax(threshold=200.0, sigma1=150.0, sigma2=40.0)
    for votes in (UNANIMOUS, FLAT):
        release = mech.release(votes, rng(8))
        p = stats.norm.sf((200.0 - votes[0].max()) / 150.0)
        assert binomial_ok(release.num_answered, len(votes), p)


def test_confident_gnmax_answers_consensus_and_abstains_on_flat_votes():
    mech = ConfidentGNMax(threshold=200.0, sigma1=20.0, sigma2=40.0)
    release = mech.release(UNANIMOUS, rng(9))
    assert release.answered.mean() > 0.98  # Phi(50 / 20) = 0.994
    assert (release.labels[release.answered] == 0).mean() > 0.999  # margin 250 = 4.4 sd

    release = mech.release(FLAT, rng(10))  # Phi(-175 / 20) ~ 1e-18 per query
    assert release.num_answered == 0 and (release.labels == -1).all()
    assert np.isnan(release.noisy_aggregate).all()
    assert mech.events(release) == [dp_accounting.SelfComposedDpEvent(Gauss(20.0), 4000)]
    assert epsilon_from_events(mech.events(release), DELTA) == pytest.approx(
        independent_epsilon([(Gauss(20.0), 4000)]), rel=1e-12)


# --- empirical audit of one query ------------------------------------------------------

DRAWS, CONFIDENCE = 200_000, 1e-3


def clopper_pearson(k, n, alpha=CONFIDENCE):
    lo = stats.beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    return lo, hi


def audit(mech, analytic_pr0, seed):
    """Lower bound on epsilon at DELTA from outputs on D = [100, 103], D' = [99, 104]
    (replace one teacher's vote 0 -> 1), both events {0} and {1}, both directions."""
    D, D_prime = np.array([100, 103]), np.array([99, 104])
    counts = {}
    for name, votes, s in (("D", D, seed), ("D'", D_prime, seed + 1)):
        labels = mech.release(np.tile(votes, (DRAWS, 1)), rng(s)).labels
        k0 = int((labels == 0).sum())
        lo, hi = clopper_pearson(k0, DRAWS)
        assert lo <= analytic_pr0(votes[0] - votes[1]) <= hi  # the mechanism is what it claims
        counts[name] = {0: (lo, hi), 1: clopper_pearson(DRAWS - k0, DRAWS)}
    bounds = [math.log((counts[a][o][0] - DELTA) / counts[b][o][1])
              for a, b in (("D", "D'"), ("D'", "D")) for o in (0, 1)
              if counts[a][o][0] > DELTA]
    return max(bounds)


def test_audit_gnmax_single_query():
    sigma = 1.0
    mech = GNMax(sigma=sigma)
    claimed = epsilon_from_events(mech.worst_case_events(1), DELTA)
    lower = audit(mech, lambda d: stats.norm.cdf(d / (math.sqrt(2) * sigma)), seed=11)
    assert 3.0 < lower <= claimed  # ~3.9 <= 7.08: the audit has power and finds no violation


def test_audit_lnmax_single_query():
    b = 1.0
    mech = LNMax(scale=b)
    claimed = epsilon_from_events(mech.worst_case_events(1), DELTA)

    def pr0(d):  # P(d + L0 - L1 > 0) for d <= 0: P(L0 - L1 > t) = e^(-t/b) (1 + t/2b) / 2
        t = -d
        return 0.5 * math.exp(-t / b) * (1 + t / (2 * b))

    lower = audit(mech, pr0, seed=13)
    assert 1.2 < lower <= claimed  # ~1.57 <= 2.003 (pure epsilon 2/b = 2)


# --- releases, registry, projection ----------------------------------------------------


def test_pool_distribution_is_on_the_simplex_and_agrees_with_the_label():
    P = rng().dirichlet(np.ones(5), size=(500, 4))
    release = NoisyLinearPool(clip=0.5, noise_multiplier=2.0).release(P, rng(1))
    dist = release.distribution
    assert (dist >= 0).all() and np.allclose(dist.sum(axis=1), 1.0)
    assert (dist.argmax(axis=1) == release.labels).all()
    on_simplex = rng().dirichlet(np.ones(5), size=20)
    np.testing.assert_allclose(project_to_simplex(on_simplex), on_simplex, atol=1e-12)
    np.testing.assert_allclose(project_to_simplex(np.array([[3.0, 1.0, -2.0]])), [[1, 0, 0]])


def test_releases_are_read_only_and_bound_to_their_mechanism():
    release = GNMax(sigma=2.0).release(votes_for(3), rng())
    with pytest.raises(ValueError):
        release.labels[0] = 1
    with pytest.raises(ValueError, match="not made by this gnmax"):
        GNMax(sigma=9.0).events(release)
    with pytest.raises(ValueError, match="not made by this lnmax"):
        LNMax(scale=2.0).events(release)


def test_registry_finds_every_mechanism_by_name():
    assert set(MECHANISMS) >= {"gnmax", "lnmax", "confident_gnmax", "weighted_gnmax",
                               "noisy_linear_pool"}
    assert isinstance(make_mechanism("gnmax", sigma=2.0), GNMax)
    with pytest.raises(ValueError, match="'nope'"):
        make_mechanism("nope")
    with pytest.raises(ValueError, match="'gnmax' is already registered"):
        register_mechanism("gnmax")(GNMax)


# --- bad inputs name the value ---------------------------------------------------------

NAN_VOTES = np.array([[1.0, np.nan], [2.0, 3.0]])


@pytest.mark.parametrize("mech, inputs, match", [
    (GNMax(sigma=1.0), NAN_VOTES, r"votes must be finite, got nan at index \(0, 1\)"),
    (LNMax(scale=1.0), [[1.0, np.inf]], r"votes must be finite, got inf"),
    (GNMax(sigma=1.0), [[3, -1]], r"votes must be non-negative, got -1.0 at index \(0, 1\)"),
    (GNMax(sigma=1.0), [1, 2, 3], r"shape \(n, C\), got shape \(3,\)"),
    (ConfidentGNMax(threshold=1, sigma1=1, sigma2=1), np.zeros((0, 3)), r"got shape \(0, 3\)"),
    (NoisyLinearPool(clip=1, noise_multiplier=1), np.ones((2, 3)), r"\(n, K, C\), got shape"),
    (NoisyLinearPool(clip=1, noise_multiplier=1), -np.ones((1, 2, 2)), r"got -1.0 at index"),
    (WeightedGNMax(sigma=1, weights=[1, 1], num_classes=3), [[0, 7]], r"\[0, 3\), got 7 at"),
    (WeightedGNMax(sigma=1, weights=[1, 1], num_classes=3), [[0.0, 1.0]], "dtype float64"),
    (WeightedGNMax(sigma=1, weights=[1, 1], num_classes=3), [[0, 1, 2]], r"K=2\), got \(1, 3\)"),
])
def test_bad_inputs_are_named(mech, inputs, match):
    with pytest.raises(ValueError, match=match):
        mech.release(inputs, rng())


@pytest.mark.parametrize("make, match", [
    (lambda: GNMax(sigma=0), "sigma must be finite and > 0, got 0"),
    (lambda: GNMax(sigma=float("nan")), "sigma must be finite and > 0, got nan"),
    (lambda: LNMax(scale=-2.0), "scale must be finite and > 0, got -2.0"),
    (lambda: ConfidentGNMax(threshold=float("inf"), sigma1=1, sigma2=1), "threshold .* inf"),
    (lambda: ConfidentGNMax(threshold=1, sigma1=1, sigma2=0), "sigma2 .* got 0"),
    (lambda: WeightedGNMax(sigma=1, weights=[1, -0.5], num_classes=2), "got -0.5 at index"),
    (lambda: WeightedGNMax(sigma=1, weights=[0, 0], num_classes=2), r"got \[0.0, 0.0\]"),
    (lambda: WeightedGNMax(sigma=1, weights=[1], num_classes=0), "num_classes .* got 0"),
    (lambda: NoisyLinearPool(clip=float("inf"), noise_multiplier=1), "clip .* got inf"),
    (lambda: GNMax.with_epsilon(0.0, DELTA, 10), "target_epsilon .* got 0.0"),
    (lambda: LNMax.with_epsilon(1.0, 0.0, 10), r"delta must be in \(0, 1\), got 0.0"),
    (lambda: NoisyLinearPool.with_epsilon(1.0, DELTA, 0, clip=1.0), "num_queries .* got 0"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rng_must_be_a_generator_and_fractional_votes_warn():
    with pytest.raises(TypeError, match="RandomState"):
        GNMax(sigma=1.0).release([[1, 2]], np.random.RandomState(0))
    with pytest.warns(UserWarning, match="not integer counts"):
        GNMax(sigma=1.0).release([[1.5, 2.0]], rng())
