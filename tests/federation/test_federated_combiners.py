"""Log-linear pool, stacking and cascade through the real ClientApp / ServerApp code, in process
(no Ray): DP-SGD rounds for the pools, one DP histogram release for the cascade."""

from __future__ import annotations

import json
import math
import shutil

import dp_accounting
import numpy as np
import pytest
import torch
from in_process_grid import InProcessGrid
from scipy.stats import norm

from fedens import validate
from fedens.combiners import CascadeCombiner, confidence_histograms, load_combiner
from fedens.experts import expert_outputs, load_experts
from fedens.federation import layout as L
from fedens.federation.ensemble import histograms as CR
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate
from fedens.pipelines.ensemble import federation_settings, prepare
from fedens.privacy import PrivacyLedger, epsilon_from_events
from fedens.runs import ConfigError

NUM_SITES = 3
SMALL = [f"federation.num_sites={NUM_SITES}", "federation.num_rounds=2", "experts.num_experts=4",
         "experts.families=[logreg,naive_bayes]", "privacy.epsilon=4"]


def compose(*overrides):
    from fedens.runs import compose as _compose

    return _compose([*SMALL, *overrides])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Files of a small quickstart per combiner, prepared once (copied per test)."""
    made = {}

    def get(name):
        if name not in made:
            cfg = compose(f"combiner={name}")
            validate(cfg)
            source = tmp_path_factory.mktemp(name)
            prepare(cfg, source)
            made[name] = (cfg, source)
        return made[name]

    return get


def federate(cfg, run_dir):
    settings = federation_settings(cfg, run_dir)
    coordinate(InProcessGrid(make_client_app(settings), NUM_SITES), settings, progress=None)
    return json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())


def ledger_records(run_dir, site):
    ledger = PrivacyLedger.read(L.site_dir(run_dir, site) / "ledger.sqlite")
    try:
        return ledger.records(), ledger.epsilon()
    finally:
        ledger.close()


@pytest.mark.parametrize("name", ["log_linear", "stacking"])
def test_a_pool_trains_by_dp_sgd_rounds_charging_every_site(prepared, tmp_path, name):
    cfg, source = prepared(name)
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    report = federate(cfg, run_dir)
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert all(r["sites_reporting"] == NUM_SITES for r in report["rounds"][1:])
    assert all(0 <= r["accuracy"] <= 1 and r["nll"] > 0 for r in report["rounds"])
    initial, final = load_combiner(run_dir / "initial_combiner.pt"), load_combiner(
        L.federation_dir(run_dir) / "global_combiner.pt")
    assert final.kind == initial.kind == name
    assert set(final.trainable_state()) == set(initial.trainable_state())
    assert any(not torch.equal(a, final.trainable_state()[k]) for k, a in initial.trainable_state().items())
    for site in range(NUM_SITES):
        records, epsilon = ledger_records(run_dir, site)
        assert [r["mechanism"] for r in records] == ["dpsgd", "dpsgd"]
        assert 0 < epsilon <= 4.0 + 1e-6


def test_the_cascade_is_calibrated_from_one_noisy_release_per_site(prepared, tmp_path):
    cfg, source = prepared("cascade")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    report = federate(cfg, run_dir)
    (row,) = report["rounds"]
    assert row["sites_reporting"] == NUM_SITES and 1 <= row["expert_calls_per_query"] <= 4
    cascade = load_combiner(L.federation_dir(run_dir) / "global_combiner.pt")
    assert isinstance(cascade, CascadeCombiner)
    assert report["cascade"]["thresholds"] == [None if np.isinf(t) else t for t in cascade.threshold]
    for site in range(NUM_SITES):
        records, epsilon = ledger_records(run_dir, site)
        assert [r["mechanism"] for r in records] == [CR.MECHANISM]
        assert records[0]["params"]["sensitivity_l2"] == pytest.approx(math.sqrt(2 * 4))
        assert 0.99 * 4.0 <= epsilon <= 4.0 + 1e-9  # calibrated to the target, never over it


def test_re_running_the_cascade_release_sends_the_same_output_and_charges_nothing_more(prepared, tmp_path):
    cfg, source = prepared("cascade")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    first = federate(cfg, run_dir)
    spent = [ledger_records(run_dir, site)[1] for site in range(NUM_SITES)]
    again = federate(cfg, run_dir)  # e.g. the coordinator restarted: same seed, same data
    assert again["cascade"] == first["cascade"]
    for site in range(NUM_SITES):
        records, epsilon = ledger_records(run_dir, site)
        assert len(records) == 1 and epsilon == spent[site]
    # a different seed is a different noise draw: a new release, which the spent budget refuses
    with pytest.raises(RuntimeError, match="0 sites replied"):
        federate(compose("combiner=cascade", "seed=1"), run_dir)
    assert all(len(ledger_records(run_dir, site)[0]) == 1 for site in range(NUM_SITES))


def test_noise_free_federated_thresholds_equal_the_central_calibration(prepared, tmp_path, monkeypatch):
    cfg, source = prepared("cascade")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    monkeypatch.setattr(CR, "noisy_histograms", lambda hist, z, rng: hist)
    federate(cfg, run_dir)
    federated = load_combiner(L.federation_dir(run_dir) / "global_combiner.pt")
    experts = load_experts(run_dir / "experts.skops")
    X, y = [], []
    for site in range(NUM_SITES):
        with np.load(L.site_dir(run_dir, site) / "data.npz") as d:
            X.append(d["X"]), y.append(d["y"])
    s = federation_settings(cfg, run_dir)
    central = load_combiner(run_dir / "initial_combiner.pt").calibrate_selective(
        expert_outputs(experts, np.concatenate(X)), np.concatenate(y), CR.grid_of(s),
        margin=s[L.CASCADE_MARGIN], min_count=s[L.CASCADE_MIN_COUNT])
    np.testing.assert_array_equal(federated.threshold, central.threshold)
    assert (central.threshold == 0).sum() == 1  # calibrated: exactly one expert always answers


def test_a_site_whose_budget_cannot_pay_refuses_before_releasing(prepared, tmp_path):
    cfg, source = prepared("cascade")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    settings = {**federation_settings(cfg, run_dir), L.BUDGET_EPSILON: 2.0}  # target epsilon is 4
    with pytest.raises(RuntimeError, match="0 sites replied, fewer than min-replies=1"):
        coordinate(InProcessGrid(make_client_app(settings), NUM_SITES), settings, progress=None)
    for site in range(NUM_SITES):
        ledger = PrivacyLedger.read(L.site_dir(run_dir, site) / "ledger.sqlite")
        assert (ledger.events(), ledger.refusals()) == ([], 1)
        ledger.close()


# --- the histogram release's privacy ---------------------------------------------------


def test_one_record_moves_the_histograms_by_at_most_sqrt_2k():
    rng = np.random.default_rng(0)
    K, C, n = 5, 4, 60
    P = rng.dirichlet(np.ones(C) * 0.3, size=(n, K))
    y = rng.integers(0, C, size=n)
    P[0, :, :] = np.eye(C)[y[0]]  # record 0: every expert right, so it attains the bound
    grid = [0.3, 0.5, 0.7, 0.9]
    full = confidence_histograms(P, y, grid)
    gaps = [np.linalg.norm(full - confidence_histograms(np.delete(P, i, 0), np.delete(y, i), grid))
            for i in range(n)]  # neighbours: one record removed
    assert max(gaps) == pytest.approx(CR.histogram_sensitivity(K)) == pytest.approx(math.sqrt(2 * K))
    assert min(gaps) >= math.sqrt(K) - 1e-12  # each record is counted once per expert


def test_the_noise_has_the_std_the_ledger_accounts_for():
    z, K = 1.7, 6
    hist = np.zeros((K, 8, 2))
    noise = CR.noisy_histograms(hist, z, np.random.default_rng(1)) - hist
    draws = np.concatenate([noise.ravel(), *(CR.noisy_histograms(hist, z, np.random.default_rng(s)).ravel()
                                            for s in range(2, 200))])
    assert np.std(draws) == pytest.approx(z * math.sqrt(2 * K), rel=0.02)


def analytic_gaussian_delta(epsilon, std, sensitivity):
    """Exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Thm. 8)."""
    a, b = sensitivity / (2 * std), epsilon * std / sensitivity
    return norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b)


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0])
def test_calibrated_noise_meets_the_accounted_epsilon_by_independent_analyses(target):
    delta, K = 1e-5, 10
    z = CR.calibrate_histogram_noise(target, delta)
    epsilon = epsilon_from_events([CR.histogram_event(z)], delta)  # what the ledger charges
    assert 0.99 * target <= epsilon <= target + 1e-9
    # independent: the exact privacy curve of noise std z * sqrt(2K) at sensitivity sqrt(2K)
    std, sens = z * CR.histogram_sensitivity(K), CR.histogram_sensitivity(K)
    assert analytic_gaussian_delta(epsilon, std, sens) <= delta
    assert analytic_gaussian_delta(epsilon, std / 2, sens) > delta  # half the noise would not do
    # independent: RDP of the Gaussian, alpha / (2 z^2), converted as Canonne-Kamath-Steinke 2020
    alphas = np.linspace(1.01, 400, 200_000)
    by_hand = np.min(alphas / (2 * z**2) + np.log1p(-1 / alphas) - (np.log(delta) + np.log(alphas))
                     / (alphas - 1))
    assert by_hand == pytest.approx(epsilon, rel=1e-3)
    assert dp_accounting.GaussianDpEvent(z) == CR.histogram_event(z)


def test_bad_combiner_config_values_name_key_and_expectation():
    with pytest.raises(ConfigError, match=r"invalid combiner.grid='medium': expected one of \['fine', "):
        validate(compose("combiner=cascade", "combiner.grid=medium"))
    with pytest.raises(ConfigError, match=r"invalid combiner.log_floor=0: expected a number in \(0, 1\)"):
        validate(compose("combiner=stacking", "combiner.log_floor=0"))
    with pytest.raises(ConfigError, match=r"combiner=boost is not an option of any pipeline; the ensemble "
                       r"pipeline \(experiment=quickstart\) takes combiner=cascade\|gated_ensemble"):
        validate(compose("combiner=log_linear", "combiner.name=boost"))
