"""Epsilon values cross-checked against dp-accounting and Opacus, computed independently."""

import json

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant as OpacusRDP

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs
from fedens.privacy import PrivacyLedger, calibrate_dpsgd_noise, dpsgd_event, epsilon_from_events
from fedens.privacy.dpsgd import make_private_training, sample_rate_for


def independent_dpsgd_epsilon(sigma, q, steps, delta, orders=None):
    accountant = RdpAccountant(orders) if orders is not None else RdpAccountant()
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, gaussian), steps)
    return accountant.get_epsilon(delta)


def test_opacus_published_reference_is_reproduced():
    # Opacus' own test: sigma=1.5, q=0.04, 2250 steps, delta=1e-5 -> RDP epsilon 7.329
    eps = epsilon_from_events([dpsgd_event(1.5, 0.04, 2250)], 1e-5)
    assert eps == pytest.approx(7.329, abs=1e-3)


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0, 8.0])
def test_calibration_never_overshoots_and_is_tight(target):
    sigma = calibrate_dpsgd_noise(target, 1e-5, sample_rate=1 / 6, steps=120)
    eps = independent_dpsgd_epsilon(sigma, 1 / 6, 120, 1e-5)
    assert eps <= target
    assert eps > 0.99 * target


def test_sites_epsilon_after_rounds_equals_independent_accounting(tmp_path):
    """A site trains R rounds, a new PrivacyEngine each round, the accountant history
    carried across (as the ClientApp does through Context.state)."""
    rng = np.random.default_rng(0)
    n, d, K, C, R, epochs, batch = 60, 5, 3, 4, 4, 2, 8
    X = rng.normal(size=(n, d)).astype(np.float32)
    P = rng.dirichlet(np.ones(C), size=(n, K)).astype(np.float32)
    y = rng.integers(0, C, size=n)
    delta, sigma = 1e-5, 1.1
    q = sample_rate_for(n, batch)
    steps = epochs * round(1 / q)
    ledger = PrivacyLedger(tmp_path / "site.sqlite", site="0", budget_epsilon=100.0, delta=delta)
    history = []
    torch.manual_seed(0)
    state = GatedEnsemble(d, K).state_dict()
    for r in range(1, R + 1):
        model = GatedEnsemble(d, K)  # a fresh module each round, as at a site
        model.load_state_dict(state)
        ledger.charge(dpsgd_event(sigma, q, steps), mechanism="dpsgd", round=r)
        private = make_private_training(
            model, make_optimizer(model, 0.01), combiner_dataset(X, P, y),
            batch_size=batch, noise_multiplier=sigma, max_grad_norm=1.0, history=history,
        )
        done, _ = run_epochs(private.module, private.optimizer, private.loader, epochs)
        assert done == steps
        history = private.accountant_history()
        state = model.state_dict()

    assert sum(h[2] for h in history) == R * steps
    want = independent_dpsgd_epsilon(sigma, q, R * steps, delta)
    assert ledger.epsilon() == pytest.approx(want, rel=1e-9)
    # Opacus' own accountant over the carried history, against dp-accounting at Opacus'
    # orders: the two libraries convert RDP to (epsilon, delta) with slightly different
    # bounds (seen: 0.11% apart), so the tolerance is 0.5%; a lost round would be ~25%.
    want_opacus_orders = independent_dpsgd_epsilon(sigma, q, R * steps, delta, OpacusRDP.DEFAULT_ALPHAS)
    assert private.opacus_epsilon(delta) == pytest.approx(want_opacus_orders, rel=5e-3)


def test_epsilon_is_monotone_in_steps_and_noise():
    eps = [epsilon_from_events([dpsgd_event(1.0, 0.1, s)], 1e-5) for s in (10, 20, 40)]
    assert eps[0] < eps[1] < eps[2]
    eps = [epsilon_from_events([dpsgd_event(s, 0.1, 20)], 1e-5) for s in (0.8, 1.0, 2.0)]
    assert eps[0] > eps[1] > eps[2]


@pytest.mark.parametrize("kwargs", [{"noise_multiplier": 0, "sample_rate": 0.1, "steps": 1},
                                    {"noise_multiplier": 1, "sample_rate": 1.5, "steps": 1},
                                    {"noise_multiplier": 1, "sample_rate": 0.1, "steps": 0}])
def test_bad_event_parameters_are_named(kwargs):
    bad = next(k for k, v in kwargs.items() if v in (0, 1.5) and not (k == "noise_multiplier" and v == 1))
    with pytest.raises(ValueError, match=bad):
        dpsgd_event(**kwargs)


def test_pld_accounting_is_dp_accountings_and_tighter_than_rdp():
    from dp_accounting.pld import PLDAccountant

    event = dpsgd_event(1.5, 0.04, 2250)
    independent = PLDAccountant()
    independent.compose(dp_accounting.PoissonSampledDpEvent(0.04, dp_accounting.GaussianDpEvent(1.5)), 2250)
    pld = epsilon_from_events([event], 1e-5, method="pld")
    assert pld == pytest.approx(independent.get_epsilon(1e-5), rel=1e-9)
    assert pld < epsilon_from_events([event], 1e-5)  # 6.77 < 7.33
    with pytest.raises(ValueError, match="'moments'"):
        epsilon_from_events([event], 1e-5, method="moments")


def test_rdp_counts_repeated_events_once_and_matches_sequential_composition():

    a, b = dpsgd_event(1.1, 0.05, 30), dp_accounting.GaussianDpEvent(3.0)
    events = [a, b, a, a, b, dpsgd_event(1.1, 0.05, 30)]  # the last equals a, as a new object
    sequential = RdpAccountant()
    for event in events:
        sequential.compose(event)
    assert epsilon_from_events(events, 1e-5) == pytest.approx(sequential.get_epsilon(1e-5), rel=1e-12)


def test_rdp_epsilon_is_what_rdp_accountant_gives_bit_for_bit_cached_or_not():
    """The ledgers' fast path (each leaf's RDP computed once per process) adds the same increments
    in the same order as RdpAccountant composing each distinct event with its count."""
    from fedens.privacy import accounting

    confident = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(150.0), 40),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(40 / 2 ** 0.5), 17)])
    batches = [
        [dpsgd_event(1.3, 0.02, 50)] * 3 + [dp_accounting.GaussianDpEvent(2.0)],
        [confident, dpsgd_event(0.9, 0.1, 10), confident, dp_accounting.LaplaceDpEvent(0.5)],
        [dp_accounting.NoOpDpEvent(), dpsgd_event(2.5, 0.5, 3)],
    ]
    for events in batches:
        reference = RdpAccountant()
        distinct: dict[str, list] = {}
        for event in events:
            distinct.setdefault(repr(event), [event, 0])[1] += 1
        for event, count in distinct.values():
            reference.compose(event, count)
        accounting._LEAF_RDP.clear()
        cold = epsilon_from_events(events, 1e-5)
        warm = epsilon_from_events(events, 1e-5)
        assert cold == warm == reference.get_epsilon(1e-5)
    with pytest.raises(dp_accounting.UnsupportedEventError):
        epsilon_from_events([dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.LaplaceDpEvent(1.0))],
                            1e-5)


def test_noise_calibration_is_remembered_per_setting():
    from fedens.privacy import accounting

    accounting._calibrated_dpsgd_noise.cache_clear()
    first = calibrate_dpsgd_noise(3.0, 1e-5, 0.07, 120)
    assert calibrate_dpsgd_noise(3.0, 1e-5, 0.07, 120) == first
    assert accounting._calibrated_dpsgd_noise.cache_info().hits == 1
    assert calibrate_dpsgd_noise(3.0, 1e-5, 0.07, 121) != first  # another setting, computed anew
    assert epsilon_from_events([dpsgd_event(first, 0.07, 120)], 1e-5) <= 3.0


def test_noise_calibration_is_kept_on_disk_by_every_input(tmp_path, monkeypatch):
    from fedens.privacy import accounting

    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path))
    accounting._calibrated_dpsgd_noise.cache_clear()
    first = calibrate_dpsgd_noise(2.0, 1e-5, 0.05, 50)
    (saved,) = (tmp_path / "dpsgd_noise").glob("*.json")
    searched = accounting.dp_accounting.calibrate_dp_mechanism

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    accounting._calibrated_dpsgd_noise.cache_clear()  # a new process: only the file remains
    monkeypatch.setattr(accounting.dp_accounting, "calibrate_dp_mechanism", no_search)
    assert calibrate_dpsgd_noise(2.0, 1e-5, 0.05, 50) == first
    for changed in ((2.5, 1e-5, 0.05, 50), (2.0, 1e-6, 0.05, 50), (2.0, 1e-5, 0.06, 50),
                    (2.0, 1e-5, 0.05, 51)):  # each input is in the key
        with pytest.raises(AssertionError, match="searched again"):
            calibrate_dpsgd_noise(*changed)
    monkeypatch.setattr(accounting.dp_accounting, "calibrate_dp_mechanism", searched)
    saved.write_text("{not json")  # a damaged file is searched again and rewritten
    accounting._calibrated_dpsgd_noise.cache_clear()
    assert calibrate_dpsgd_noise(2.0, 1e-5, 0.05, 50) == first
    assert json.loads(saved.read_text())["noise_multiplier"] == first


@pytest.mark.parametrize("history", [
    [(1.1, 0.1, 30)],
    [(0.9, 0.04, 25), (0.9, 0.04, 25), (1.3, 0.2, 5)],  # rounds repeat a setting; another run's differs
])
def test_the_opacus_cross_check_is_what_opacus_accountant_gives_bit_for_bit(history):
    from fedens.privacy.dpsgd import PrivateTraining

    accountant = OpacusRDP()
    accountant.history = list(history)
    engine = type("Engine", (), {"accountant": accountant})()
    for _ in range(2):  # the second time from the kept one-step curves
        assert PrivateTraining(None, None, None, engine).opacus_epsilon(1e-5) == accountant.get_epsilon(1e-5)
