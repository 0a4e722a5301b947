"""The quickstart, shrunk, end to end through Flower's Simulation Engine."""

import csv
import json

import pytest

from fedens import run
from fedens.privacy import PrivacyLedger

SCHEMA = {
    "data": {"name", "num_sites", "num_classes", "partition"},
    "metrics": {"test_accuracy", "test_nll"},
    "baselines": {"best_single_expert_accuracy", "mean_single_expert_accuracy",
                  "uniform_mean_accuracy", "plurality_vote_accuracy",
                  "centralized_reference_accuracy", "chance_accuracy", "majority_class_accuracy",
                  "public_only_router_accuracy", "public_only_weights_accuracy",
                  "federated_nonprivate_router_accuracy"},
    "private_data": {"federated_dp_accuracy", "public_only_accuracy", "federated_nonprivate_accuracy",
                     "gain_over_public_only", "gain_over_public_only_ci95", "interval_method"},
    "cost": {"num_experts", "expert_calls_per_query"},
    "privacy": {"delta", "epsilon_max", "per_site", "queries_answered", "queries_refused",
                "accounting"},
    "timing": {"wall_s", "rounds"},
    "personalization": {"holdout", "per_site", "global_accuracy", "personalized_accuracy", "chosen_accuracy",
                        "sites_choosing_personalized", "chosen_worst_site_gain"},
    "federation": {"strategy", "failures_per_round", "resumed"},
}


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    """A shrunk quickstart run through Flower's Simulation Engine: (its directory, its results)."""
    from fedens.runs import compose as _compose

    run_dir = tmp_path_factory.mktemp("quickstart")
    cfg = _compose(["federation.num_sites=4", "federation.num_rounds=3", "combiner.central_epochs=10",
                    "privacy.epsilon=4", "tracker=tensorboard"])
    return run_dir, run(cfg, run_dir=run_dir)


@pytest.mark.slow
def test_quickstart_shrunk_end_to_end(shrunk_run):
    tmp_path, results = shrunk_run

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"schema", "experiment", "seed"} <= set(on_disk)
    for section, keys in SCHEMA.items():
        assert keys <= set(on_disk[section]), (section, keys - set(on_disk[section]))
    assert on_disk["experiment"] == "quickstart" and on_disk["data"]["num_sites"] == 4
    assert on_disk["data"]["shift"] == "scanners"  # the quickstart's sites scan on their own devices
    assert on_disk["data"]["site_devices"] == ["blurred", "faded", "offset", "grainy"]
    assert set(on_disk["personalization"]["per_site"]) == {"0", "1", "2", "3"}
    assert on_disk["federation"]["failures_per_round"] == {"1": 0, "2": 0, "3": 0}

    b, m, p = on_disk["baselines"], on_disk["metrics"], on_disk["privacy"]
    # the story: the learned router beats every single expert
    assert m["test_accuracy"] > b["best_single_expert_accuracy"]
    assert 0 < m["test_nll"] < 5
    assert b["mean_single_expert_accuracy"] <= b["best_single_expert_accuracy"]
    # a model trained on all the records, the sites' included, is the ceiling no combiner of the
    # public experts reaches
    assert b["centralized_reference_accuracy"] > max(m["test_accuracy"], b["uniform_mean_accuracy"])
    assert on_disk["cost"]["expert_calls_per_query"] == 10.0

    # privacy: every site spent at most its budget, and the report equals its ledger
    assert set(p["per_site"]) == {"0", "1", "2", "3"}
    for site, entry in p["per_site"].items():
        ledger = PrivacyLedger.read(tmp_path / "sites" / f"site_{site}" / "ledger.sqlite")
        assert len(ledger.events()) == 3
        assert entry["epsilon"] == pytest.approx(ledger.epsilon())
        assert 0.9 * 4 < entry["epsilon"] <= 4.0
        assert entry["opacus_epsilon"] == pytest.approx(entry["epsilon"], rel=0.02)
    assert p["epsilon_max"] == max(e["epsilon"] for e in p["per_site"].values())
    assert p["delta"] == 1e-5

    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    # public only is round 0 (the initial form, no private record), scored on the same queries
    assert b["public_only_router_accuracy"] == pytest.approx(float(rows[0]["router_accuracy"]), abs=1e-12)
    assert b["public_only_weights_accuracy"] == pytest.approx(float(rows[0]["weights_accuracy"]), abs=1e-12)
    assert b["chance_accuracy"] == 0.1 and 0.05 < b["majority_class_accuracy"] < 0.2
    v = on_disk["private_data"]
    assert v["federated_dp_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-12)  # the final model
    assert v["public_only_accuracy"] == b["public_only_router_accuracy"]
    assert v["federated_nonprivate_accuracy"] == b["federated_nonprivate_router_accuracy"]
    assert v["gain_over_public_only"] == pytest.approx(v["federated_dp_accuracy"] - v["public_only_accuracy"])
    # every row of metrics.csv carries the baselines, as results.json has them
    for row in rows:
        for key in ("public_only_accuracy", "federated_nonprivate_accuracy"):
            assert float(row[key]) == pytest.approx(v[key], abs=1e-12)
        for key in ("central_nonprivate_accuracy", "uniform_mean_accuracy", "best_single_expert_accuracy"):
            assert float(row[key]) == pytest.approx(b[key], abs=1e-12)
    low, high = v["gain_over_public_only_ci95"]
    assert low <= v["gain_over_public_only"] <= high and high - low < 0.2
    for name in ("federated_dp", "public_only", "federated_nonprivate"):
        low, high = v[f"{name}_ci95"]
        assert low <= v[f"{name}_accuracy"] <= high
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.slow
def test_tensorboard_gets_each_rounds_metrics_and_the_results(shrunk_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp_path, results = shrunk_run
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    router = {e.step: e.value for e in events.Scalars("router_accuracy")}
    assert sorted(router) == [0, 1, 2, 3]  # public only, then each federated round
    for row in rows:
        assert router[int(row["round"])] == pytest.approx(float(row["router_accuracy"]), abs=1e-6)
    (final,) = events.Scalars("metrics/test_accuracy")
    assert final.step == 4 and final.value == pytest.approx(results["metrics"]["test_accuracy"], abs=1e-6)
    (epsilon,) = events.Scalars("privacy/epsilon_max")
    assert epsilon.value == pytest.approx(results["privacy"]["epsilon_max"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["server_fixed", "client_adaptive"])
def test_site_level_dp_through_flowers_wrappers(compose, tmp_path, mode, in_process_engine):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    cfg = compose("federation.num_sites=3", "federation.num_rounds=2", "combiner.central_epochs=5",
                  f"privacy.site_level.mode={mode}", "privacy.site_level.noise_multiplier=0.8",
                  "privacy.site_level.clipped_count_stddev=1.0")
    site_level = run(cfg, run_dir=tmp_path)["privacy"]["site_level"]

    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(0.8), 2)
    assert site_level["mode"] == mode and site_level["rounds"] == 2
    assert site_level["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    if mode == "server_fixed":  # Flower's own accountant saw the same two releases
        assert site_level["flower_releases"] == 2
        assert site_level["flower_epsilon"] == pytest.approx(site_level["epsilon"], rel=1e-6)


@pytest.mark.slow
def test_a_second_configuration_into_a_finished_run_spends_nothing(shrunk_run):
    """Run the quickstart, then another configuration into the same directory: the second is
    refused with one line before anything is written, and every site's ledger still equals what
    the first run released, recomputed from its events with dp-accounting alone."""
    import os
    import subprocess
    import sys

    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    run_dir, results = shrunk_run
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}
    second = subprocess.run(
        [sys.executable, "-m", "fedens", "run", f"hydra.run.dir={run_dir}", "federation.num_sites=4",
         "federation.num_rounds=2", "privacy.epsilon=4"],
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"fedens: hydra.run.dir={run_dir} already holds a finished fedens "
                                     "run: choose another directory")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == list(files)
    for site, entry in results["privacy"]["per_site"].items():
        ledger = PrivacyLedger.read(run_dir / "sites" / f"site_{site}" / "ledger.sqlite")
        accountant = RdpAccountant()
        for record in ledger.records():
            e = record["event"]
            accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                e["event"]["sampling_probability"],
                dp_accounting.GaussianDpEvent(e["event"]["event"]["noise_multiplier"])), e["count"]))
        # the three rounds the sites reported, at the noise they reported
        assert [r["params"]["noise_multiplier"] for r in ledger.records()] == [entry["noise_multiplier"]] * 3
        assert accountant.get_epsilon(1e-5) == pytest.approx(entry["epsilon"], rel=1e-12)
        ledger.close()
