"""PATE across sites, shrunk (few teachers, few queries), end to end: through Flower's Simulation
Engine, and (``in_process_engine``) with the same apps called in this process."""

import json

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedens import run
from fedens.privacy import PrivacyLedger

SHRUNK = ["experiment=pate_mnist", "federation.num_sites=2", "experts.num_teachers=10",
          "experts.steps=30", "privacy.num_queries=40", "privacy.query_batch=20",
          "privacy.threshold=6", "privacy.sigma1=2", "privacy.sigma2=1.5", "combiner.steps=20",
          "combiner.centralized_reference=false"]


@pytest.mark.slow
def test_pate_pipeline_charges_every_site_exactly_what_was_released(compose, tmp_path):
    cache = f"experts.cache_dir={tmp_path / 'teachers'}"
    results = run(compose(*SHRUNK, "privacy.budget=100", cache), run_dir=tmp_path / "run")
    assert results["data"]["sites_that_trained_teachers"] == 2
    tmp_path = tmp_path / "run"

    with np.load(tmp_path / "federation" / "released_labels.npz") as released:
        labels, answered = released["labels"], released["answered"]
    assert len(labels) == 40 and (labels[~answered] == -1).all()
    assert ((labels[answered] >= 0) & (labels[answered] < 10)).all()
    k = int(answered.sum())
    assert 0 < k < 40 and results["privacy"]["queries_answered"] == k

    # each site's ledger = 40 checks (sigma1) + k answers (GNMax, sigma2/sqrt(2)), independently
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(2.0), 40)
    accountant.compose(dp_accounting.GaussianDpEvent(1.5 / np.sqrt(2)), k)
    for site in ("0", "1"):
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
        assert results["privacy"]["per_site"][site]["epsilon"] == pytest.approx(ledger.epsilon())
    worst = RdpAccountant()
    worst.compose(dp_accounting.GaussianDpEvent(2.0), 40)
    worst.compose(dp_accounting.GaussianDpEvent(1.5 / np.sqrt(2)), 40)
    assert results["privacy"]["epsilon_worst_case_max"] == pytest.approx(worst.get_epsilon(1e-5), rel=1e-9)
    dd = results["privacy"]["data_dependent"]
    # the analysis minimises over its own grid of RDP orders (up to 500), the ledgers over
    # dp-accounting's default grid: the same bound, optimised over different orders
    assert dd["epsilon_data_independent"] == pytest.approx(accountant.get_epsilon(1e-5), rel=0.01)
    assert 0 < dd["epsilon_data_dependent"] <= dd["epsilon_data_independent"]
    # the data-dependent cost is also published privately, at the configured order
    from fedens.privacy.smooth_sensitivity import gnss_rdp

    released = dd["smooth_sensitivity_release"]
    assert (released["order"], released["beta"], released["sigma_ss"]) == (15.0, 0.01333, 5.0)
    assert released["gnss_rdp"] == pytest.approx(gnss_rdp(15.0, 0.01333, 5.0), rel=1e-12)
    assert released["epsilon_estimate"] > 0 and "not a worst-case guarantee" in released["label"]

    assert 0 <= results["metrics"]["answered_label_accuracy"] <= 1
    assert 0.1 < results["metrics"]["test_accuracy"] <= 1
    assert 0 < results["metrics"]["test_nll"] < 10
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert {"schema", "data", "metrics", "baselines", "cost", "privacy", "timing"} <= set(on_disk)
    # the private vote histograms were not written anywhere
    assert not [p for p in tmp_path.rglob("*") if "vote" in p.name]

    # a rerun with new noise reuses the sites' cached teachers
    rerun = run(compose(*SHRUNK, "privacy.budget=100", "privacy.sigma2=3", cache),
                run_dir=tmp_path.parent / "again")
    assert rerun["data"]["num_teachers"] == 10
    assert rerun["data"]["sites_that_trained_teachers"] == 0


@pytest.mark.slow
def test_sites_refuse_queries_their_budget_cannot_pay_for(compose, tmp_path, in_process_engine):
    results = run(compose(*SHRUNK, "privacy.budget=20"), run_dir=tmp_path)
    assert results["privacy"]["queries_answered"] == 0
    assert results["privacy"]["queries_refused"] == 40
    assert results["privacy"]["epsilon_worst_case_max"] is None
    assert results["metrics"]["test_accuracy"] is None and results["metrics"]["test_nll"] is None
    for site in ("0", "1"):
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        assert ledger.events() == [] and ledger.queries_refused() == 40


@pytest.mark.parametrize("sizes, total", [([6000] * 10, 250), ([100, 900], 10), ([5, 50000, 9995], 250)])
def test_teachers_are_spread_in_proportion_to_site_sizes(sizes, total):
    from fedens.pipelines.pate import teachers_per_site

    counts = teachers_per_site(sizes, total)
    assert sum(counts) == total and min(counts) >= 1
    shares = np.array(counts) / total
    assert np.abs(shares - np.array(sizes) / sum(sizes)).max() <= len(sizes) / total


@pytest.mark.slow
def test_pate_with_label_skewed_sites_and_prior_corrected_teachers(compose, tmp_path, in_process_engine):
    results = run(compose(*SHRUNK, "privacy.budget=100", "partition=dirichlet", "partition.alpha=0.3",
                          "experts.prior_correction=1"), run_dir=tmp_path)
    per_site = results["data"]["teachers_per_site"]
    assert sum(per_site) == 10 and results["data"]["partition"] == "dirichlet(0.3)"
    sizes = [len(np.load(tmp_path / "sites" / f"site_{i}" / "data.npz")["y"]) for i in range(2)]
    assert sum(sizes) == 60000
    assert (per_site[0] > per_site[1]) == (sizes[0] > sizes[1]) or per_site[0] == per_site[1]
    assert results["privacy"]["queries_answered"] > 0
    # every teacher still casts one vote: the data-dependent analysis still applies
    assert results["privacy"]["data_dependent"]["epsilon_data_dependent"] > 0
