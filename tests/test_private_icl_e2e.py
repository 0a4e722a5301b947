"""``experiment=private_icl`` end to end through the PATE protocol: prompted language-model
teachers built and run at the sites (a tiny local model here), GNMax over their summed votes, each
batch reserved and settled in every site's ledger, per-query answers and a public student."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_lm import tiny_lm

from fedens import run
from fedens.privacy import PrivacyLedger

SMALL = ["experiment=private_icl", "data.train_size=60", "data.pool_size=10", "data.test_size=8",
         "federation.num_sites=2", "experts.teachers_per_site=3", "experts.shots=2", "privacy.query_batch=6",
         "experts.calibration_size=5"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_lm(tmp_path_factory.mktemp("lm"))


def test_prompted_teachers_at_the_sites_answer_queries_privately(compose, tmp_path, model, in_process_engine):
    results = run(compose(*SMALL, f"experts.model_path={model}"), run_dir=tmp_path)
    assert results["data"]["teachers_per_site"] == [3, 3] and results["data"]["test_queries"] == 8
    assert results["privacy"]["queries_answered"] == 18  # GNMax answers every query
    assert results["metrics"]["test_answered"] == 8 and results["metrics"]["student_labels"] == 10
    for site in (0, 1):  # 18 queries in batches of 6: three releases, each reserved then settled once
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        records = ledger.records()
        assert [r["mechanism"] for r in records] == ["gnmax"] * 3
        assert sum(r["params"]["queries"] for r in records) == 18
        assert results["privacy"]["per_site"][str(site)]["epsilon"] == pytest.approx(ledger.epsilon())
    b = results["baselines"]
    assert 0 <= b["mean_teacher_accuracy"] <= b["best_teacher_accuracy"] <= 1
    assert b["majority_class_accuracy"] > 0 and b["chance_accuracy"] == 0.5
    assert results["metrics"]["student"] == "prompt"
    for key in ("test_accuracy", "balanced_accuracy", "student_accuracy", "prompt_student_accuracy",
                "classifier_student_accuracy"):
        assert 0 <= results["metrics"][key] <= 1
    # a re-run on the same records reads every teacher's scores from the site's own cache
    assert (tmp_path / "sites" / "site_0" / "cache" / "lm-scores.sqlite").is_file()


def test_a_target_epsilon_sets_the_noise_and_the_ledgers_spend_it(compose, tmp_path, model,
                                                                  in_process_engine):
    import dp_accounting

    from fedens.runs.frame import validate

    results = run(compose(*SMALL, f"experts.model_path={model}", "privacy.epsilon=3"), run_dir=tmp_path)
    sigma = float(results["privacy"]["mechanism"].split("'sigma': ")[1].split("}")[0])
    # independently: 18 GNMax answers, each a Gaussian of noise sigma / sqrt(2) (L2 sensitivity sqrt(2))
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma / np.sqrt(2)), 18)
    assert accountant.get_epsilon(1e-5) == pytest.approx(3, abs=1e-3)
    for site in ("0", "1"):
        assert 2.99 < results["privacy"]["per_site"][site]["epsilon"] <= 3.0
    with pytest.raises(ValueError, match=r"invalid privacy.epsilon=.*expected null \(use sigma2\) or a "
                                         r"number in \(0, privacy.budget=100\], with "
                                         r"privacy.mechanism=gnmax"):
        validate(compose(*SMALL, "privacy.epsilon=3", "privacy.mechanism=confident_gnmax"))


def test_a_site_refuses_queries_once_its_budget_is_spent(compose, tmp_path, model, in_process_engine):
    results = run(compose(*SMALL, f"experts.model_path={model}", "privacy.budget=0.5"), run_dir=tmp_path)
    assert results["privacy"]["queries_answered"] == 0 and results["privacy"]["queries_refused"] == 18
    for site in (0, 1):
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        assert ledger.records() == [] and ledger.queries_refused() == 18
    assert np.isfinite(results["baselines"]["zero_shot_accuracy"])


def test_sites_split_by_product_hold_disjoint_products_and_a_bad_column_is_refused(compose, tmp_path):
    from fedens.pipelines.private_icl import prepare
    from fedens.runs.frame import validate

    cfg = compose(*SMALL, "partition=grouped_id", "partition.column=product")
    validate(cfg)
    data = prepare(cfg, tmp_path)
    products = [set(data["private"]["product"].to_numpy()[s]) for s in data["sites"]]
    assert sum(map(len, products)) == 50 and not products[0] & products[1]  # 60 - 10 public, each once
    with pytest.raises(ValueError, match=r"invalid experts.model_path='nope-lm': expected a GGUF file, a "
                                         r"transformers folder or an offline model's name: no such file or "
                                         r"folder: nope-lm"):
        validate(compose(*SMALL, "experts.model_path=nope-lm"))
    validate(compose(*SMALL, "experts.model_path=gemma-3-270m"))  # an offline model by name
    with pytest.raises(ValueError, match=r"invalid partition.column='score': expected one of the reviews' "
                                         r"columns \['product'\]"):
        validate(compose(*SMALL, "partition=grouped_id", "partition.column=score"))


@pytest.mark.slow
def test_private_icl_through_flowers_simulation_engine(compose, tmp_path, model):
    """The same apps on Flower's Simulation Engine (Ray): the sites' ClientApps in their own
    processes build their teachers from their own files and answer every query once."""
    results = run(compose(*SMALL, f"experts.model_path={model}", "experts.teachers_per_site=2"),
                  run_dir=tmp_path)
    assert results["privacy"]["queries_answered"] == 18 and results["cost"]["num_experts"] == 4
    for site in (0, 1):
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        assert [r["mechanism"] for r in ledger.records()] == ["gnmax"] * 3
        assert (tmp_path / "sites" / f"site_{site}" / "cache" / "lm-scores.sqlite").is_file()
