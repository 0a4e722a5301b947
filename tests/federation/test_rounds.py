"""The coordinator's round loop with Flower's strategies, run in process (no Ray):
every strategy by config, failures recorded, checkpoints, resume equals uninterrupted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from in_process_grid import CoordinatorCrash, InProcessGrid
from small_federation import NUM_SITES, federate, final_state

from fedens.federation import layout as L
from fedens.federation.checkpoint import checkpoint_path, load_checkpoint
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate, make_strategy_of
from fedens.federation.grid import short_reason
from fedens.federation.strategies import STRATEGIES, accepted_strategy_params, check_strategy, make_strategy
from fedens.pipelines.ensemble import federation_settings
from fedens.privacy import PrivacyLedger


def ledger_epsilons(run_dir):
    out = {}
    for site in range(NUM_SITES):
        path = L.site_dir(run_dir, site) / "ledger.sqlite"
        if not path.is_file():  # never sampled
            out[site] = (0, 0.0)
            continue
        ledger = PrivacyLedger.read(path)
        out[site] = (len(ledger.events()), ledger.epsilon())
        ledger.close()
    return out


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_flower_strategy_runs_from_config(prepared_cfg, run_dir, name):
    cfg, _ = prepared_cfg
    params = {"FedProx": {"proximal_mu": 0.5}, "FedAdam": {"eta": 0.05}}.get(name, {})
    report = federate(cfg, run_dir, **{L.STRATEGY: name, L.STRATEGY_PARAMS: json.dumps(params),
                                       L.NUM_ROUNDS: 2})
    assert report["strategy"] == name
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert all(r["sites_reporting"] == NUM_SITES for r in report["rounds"][1:])
    initial = torch.load(run_dir / "initial_combiner.pt")
    assert not torch.equal(final_state(run_dir)["router.weight"], initial["router.weight"])


def test_fedprox_pull_keeps_the_update_closer_to_the_global_model(prepared_cfg, run_dir, tmp_path):
    import shutil

    cfg, _ = prepared_cfg
    shutil.copytree(run_dir, tmp_path / "prox")
    initial = torch.load(run_dir / "initial_combiner.pt")["router.weight"]
    federate(cfg, run_dir, **{L.STRATEGY: "FedProx", L.STRATEGY_PARAMS: '{"proximal_mu": 0.0}',
                              L.NUM_ROUNDS: 1})
    federate(cfg, tmp_path / "prox", **{L.STRATEGY: "FedProx", L.STRATEGY_PARAMS: '{"proximal_mu": 5.0}',
                                        L.NUM_ROUNDS: 1})
    free = (final_state(run_dir)["router.weight"] - initial).norm()
    pulled = (final_state(tmp_path / "prox")["router.weight"] - initial).norm()
    assert 0 < pulled < 0.9 * free


def test_strategy_config_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown strategy 'FedFoo'; choose one of: FedAvg"):
        accepted_strategy_params("FedFoo")
    with pytest.raises(ValueError, match="FedAdam has no parameter 'mu'; it takes: eta, eta_l"):
        check_strategy("FedAdam", {"mu": 1})
    assert make_strategy("FedTrimmedAvg", {"beta": 0.1}).beta == 0.1


def test_a_raising_site_is_recorded_and_the_round_aggregates_the_others(prepared_cfg, run_dir):
    cfg, _ = prepared_cfg
    report = federate(cfg, run_dir, **{L.INJECT_FAULTS: "1:2:raise"})
    assert {r: len(f) for r, f in report["failures"].items()} == {"1": 0, "2": 1, "3": 0}
    (failure,) = report["failures"]["2"]
    assert failure["site"] == 1 and failure["kind"] == "error"
    assert failure["reason"] == "site 1: injected failure in round 2"
    assert [r["sites_reporting"] for r in report["rounds"]] == [0, 3, 2, 3]
    assert set(report["sites"]["2"]) == {"0", "2"}


def test_too_few_replies_keep_the_previous_parameters(prepared_cfg, run_dir):
    cfg, _ = prepared_cfg
    report = federate(cfg, run_dir, **{L.INJECT_FAULTS: "0:2:raise,1:2:raise", L.MIN_REPLIES: 2})
    accuracies = [r["router_accuracy"] for r in report["rounds"]]
    assert accuracies[2] == accuracies[1]  # round 2 had one reply of the two required
    assert len(report["failures"]["2"]) == 2


@pytest.mark.parametrize("crash_at_round", [2, 3])
def test_resume_after_a_crash_equals_an_uninterrupted_run(prepared_cfg, run_dir, tmp_path, crash_at_round):
    """FedAdam (server-side state) with half the sites sampled per round. The
    coordinator dies after the sites released round ``crash_at_round``; a new
    coordinator and fresh site contexts resume from the checkpoint."""
    import shutil

    cfg, _ = prepared_cfg
    options = {L.STRATEGY: "FedAdam", L.STRATEGY_PARAMS: '{"eta": 0.05}', L.FRACTION_TRAIN: 0.67,
               L.MIN_SITES: 2}
    shutil.copytree(run_dir, tmp_path / "crashed")
    crashed = tmp_path / "crashed"
    uninterrupted = federate(cfg, run_dir, **options)

    settings = {**federation_settings(cfg, crashed), L.HOLDOUT: 0.0, **options}
    with pytest.raises(CoordinatorCrash):
        coordinate(InProcessGrid(make_client_app(settings), NUM_SITES, crash_at_round), settings, None)
    assert load_checkpoint(crashed, make_strategy_of(settings)).round == crash_at_round - 1
    resumed = federate(cfg, crashed, resume=True, **options)

    for key, tensor in final_state(run_dir).items():
        assert torch.equal(tensor, final_state(crashed)[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(resumed["rounds"]) == strip(uninterrupted["rounds"])
    assert resumed["sites"] == uninterrupted["sites"]
    # each site paid once per round it took part in, crash or not
    assert ledger_epsilons(crashed) == ledger_epsilons(run_dir)
    sampled = sum(len(sites) for sites in uninterrupted["sites"].values())
    assert sampled == 3 * 2 and sum(n for n, _ in ledger_epsilons(run_dir).values()) == sampled


def test_a_resumed_run_keeps_the_files_it_started_from(prepared_cfg, run_dir):
    """A site's data is its own: a resume does not rewrite it (the drill's canaries stay, and a
    re-run round has the release key it had). A shared file that would change refuses the resume."""
    from fedens.config_schema import ConfigError
    from fedens.pipelines.ensemble import prepare

    cfg, source = prepared_cfg
    site_data = L.site_dir(run_dir, 0) / "data.npz"
    with np.load(site_data) as data:
        X, y = data["X"].copy(), data["y"]
    X[0] = 7.0  # the site's own change since the run started
    np.savez(site_data, X=X, y=y)
    kept = site_data.read_bytes()
    prepare(cfg, run_dir, resume=True)
    assert site_data.read_bytes() == kept
    shared = [p.relative_to(source) for p in source.rglob("*") if p.is_file() and "sites" not in p.parts]
    assert len(shared) >= 4 and all((run_dir / p).read_bytes() == (source / p).read_bytes() for p in shared)

    (run_dir / "initial_combiner.pt").write_bytes(b"another combiner")
    with pytest.raises(ConfigError, match=r"cannot resume .*: initial_combiner.pt would not be the file the "
                                          r"run started with \(sha256 [0-9a-f]{12}, now [0-9a-f]{12}\)"):
        prepare(cfg, run_dir, resume=True)
    assert (run_dir / "initial_combiner.pt").read_bytes() == b"another combiner"


def test_the_checkpoint_holds_the_strategy_state(prepared_cfg, run_dir):
    cfg, _ = prepared_cfg
    settings = {**federation_settings(cfg, run_dir), L.STRATEGY: "FedAdam", L.NUM_ROUNDS: 1}
    coordinate(InProcessGrid(make_client_app(settings), NUM_SITES), settings, None)
    fresh = make_strategy_of(settings)
    assert not hasattr(fresh, "m_t") or fresh.m_t is None
    checkpoint = load_checkpoint(run_dir, fresh)
    assert checkpoint.round == 1 and checkpoint_path(run_dir).is_file()
    assert all(np.abs(m).sum() > 0 for m in fresh.m_t.values())


def test_each_site_personalises_and_keeps_its_comparison(prepared_cfg, run_dir):
    import numpy as np

    from fedens.pipelines.ensemble import site_personalization
    from fedens.privacy.dpsgd import sample_rate_for

    cfg, _ = prepared_cfg
    report = federate(cfg, run_dir, **{L.HOLDOUT: 0.25, L.NUM_ROUNDS: 1})
    assert report["personalization_failures"] == []
    summary = site_personalization(cfg, run_dir)
    assert summary["sites"] == NUM_SITES
    for site, mine in summary["per_site"].items():
        with np.load(L.site_dir(run_dir, int(site)) / "data.npz") as data:
            n = len(data["y"])
        assert mine["held_back_records"] == round(0.25 * n)
        assert mine["train_records"] + mine["held_back_records"] == n
        assert 0 <= mine["global"]["router"] <= 1 and 0 <= mine["personalized"]["router"] <= 1
        # the site's choice, by cross-validation on its training records, is one of the two
        assert mine["choice"] in ("global", "personalized")
        assert mine["chosen"] == mine[mine["choice"]]
        assert mine["choice"] == "global" or mine["validation_gain"] > 0
        assert (L.site_dir(run_dir, int(site)) / "personalized_combiner.pt").is_file()
    held = sum(r["held_back_records"] for r in summary["per_site"].values())
    pooled = sum(r["personalized"]["router"] * r["held_back_records"] for r in summary["per_site"].values())
    assert summary["personalized_accuracy"] == pytest.approx(pooled / held)
    assert summary["sites_choosing_personalized"] == sum(r["choice"] == "personalized"
                                                        for r in summary["per_site"].values())
    # the DP-SGD rounds trained on the rest only: each site's sample rate is batch / train records
    ledger = PrivacyLedger.read(L.site_dir(run_dir, 0) / "ledger.sqlite")
    rate = ledger.records()[0]["params"]["sample_rate"]
    assert rate == sample_rate_for(summary["per_site"]["0"]["train_records"], cfg.combiner.batch_size)


def test_short_reason_finds_the_message_in_a_ray_traceback():
    text = "ray::ClientAppActor.run()\n  File x\nClientAppException: \nException X occurred. Message: boom'>"
    assert short_reason(text) == "boom"
    assert short_reason("plain") == "plain" and short_reason("") == "(no reason given)"


def test_ledgers_that_outlive_runs_hold_every_release_of_every_run(prepared_cfg, run_dir):
    """In deployment a site's ledger is on its own disk and outlives runs. Two runs with other
    settings against the same ledgers: every site's ledger holds both runs' releases, and epsilon
    recomputed from its events with dp-accounting alone equals that of the releases the sites
    reported making (their noise multipliers and sample rates)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from fedens.privacy.dpsgd import sample_rate_for

    cfg, _ = prepared_cfg
    first = federate(cfg, run_dir, **{L.NUM_ROUNDS: 2, L.BUDGET_EPSILON: 20.0})
    second = federate(cfg, run_dir, **{L.NUM_ROUNDS: 1, L.BUDGET_EPSILON: 20.0})
    for site in range(NUM_SITES):
        reported = [r[str(site)] for run in (first, second) for r in run["sites"].values()]
        assert len(reported) == 3
        with np.load(L.site_dir(run_dir, site) / "data.npz") as data:
            q = sample_rate_for(len(data["y"]), cfg.combiner.batch_size)
        released = RdpAccountant()
        for r in reported:
            released.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                q, dp_accounting.GaussianDpEvent(r["noise-multiplier"])), round(1 / q)))
        ledger = PrivacyLedger.read(L.site_dir(run_dir, site) / "ledger.sqlite")
        recorded = RdpAccountant()
        for record in ledger.records():  # from the stored named tuples alone
            e = record["event"]
            recorded.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                e["event"]["sampling_probability"],
                dp_accounting.GaussianDpEvent(e["event"]["event"]["noise_multiplier"])), e["count"]))
        assert recorded.get_epsilon(1e-5) == pytest.approx(released.get_epsilon(1e-5), rel=1e-12)
        assert second["sites"]["1"][str(site)]["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-12)
        ledger.close()


def test_a_federation_in_which_no_round_aggregates_reports_no_result(prepared_cfg, run_dir):
    from fedens.pipelines.ensemble import require_aggregated_rounds
    from fedens.runs import FederationFailed

    cfg, _ = prepared_cfg
    faults = ",".join(f"{site}:{r}:raise" for site in range(NUM_SITES) for r in (1, 2, 3))
    report = federate(cfg, run_dir, **{L.INJECT_FAULTS: faults})
    assert [r["aggregated"] for r in report["rounds"]] == [False, False, False, False]
    with pytest.raises(FederationFailed, match=r"no round aggregated any site's update \(3 rounds, 9 site "
                       r"failures: error\); first: site 0 in round 1: site 0: injected failure in round 1"):
        require_aggregated_rounds(report)
    one_round = federate(cfg, run_dir, **{L.INJECT_FAULTS: faults.replace("1:3:raise", "")})
    require_aggregated_rounds(one_round)  # one site's update in one round is a federated result


def test_a_site_whose_records_do_not_fit_fails_the_round_and_spends_nothing(prepared_cfg, run_dir):
    cfg, _ = prepared_cfg
    path = L.site_dir(run_dir, 1) / "data.npz"
    with np.load(path) as data:
        X, y = data["X"], data["y"].copy()
    y[0] = 10
    np.savez(path, X=X, y=y)
    report = federate(cfg, run_dir, **{L.NUM_ROUNDS: 1})
    (failure,) = report["failures"]["1"]
    assert failure["site"] == 1 and failure["kind"] == "invalid-data"
    assert failure["reason"] == ("site 1: data.npz column 'y' has label 10 (row 0): expected integer "
                                 "labels in [0, 9]")
    assert not (L.site_dir(run_dir, 1) / "ledger.sqlite").exists()
    assert set(report["sites"]["1"]) == {"0", "2"}
