"""The coordinator's ServerApp: a Flower strategy over the sites' combiner parameters.

The coordinator holds the shared experts and its own evaluation split; it
never opens a site's files. Per-round metrics and the global combiner are
written to ``<run-dir>/federation/``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedens.combiners import GatedEnsemble, combiner_state, load_combiner
from fedens.experts import expert_outputs, load_experts
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.federation.cascade_release import calibrate_federated, score
from fedens.federation.checkpoint import load_checkpoint, save_checkpoint
from fedens.federation.rounds import RoundOutcome, SiteGrid, run_rounds
from fedens.federation.shipping import Shipment
from fedens.federation.strategies import make_strategy

ProgressFn = Callable[[dict[str, Any]], None]


def evaluate_combiner(
    model: GatedEnsemble, P: np.ndarray, X: np.ndarray, y: np.ndarray, top_k: int
) -> dict[str, float]:
    """Accuracy and NLL of the router (dense and top-k) and of the global weights."""

    def scores(proba: np.ndarray) -> tuple[float, float]:
        return score(proba, y)

    router_acc, router_nll = scores(model.combine(P, X, "router"))
    topk_acc, _ = scores(model.combine(P, X, "router", top_k=top_k))
    weights_acc, weights_nll = scores(model.combine(P, X, "weights"))
    return {
        "router_accuracy": router_acc,
        "router_nll": router_nll,
        "router_topk_accuracy": topk_acc,
        "weights_accuracy": weights_acc,
        "weights_nll": weights_nll,
    }


def evaluate_model(model: Any, P: np.ndarray, X: np.ndarray, y: np.ndarray, top_k: int) -> dict[str, float]:
    """A GatedEnsemble's scores per head (:func:`evaluate_combiner`); any other learned
    combiner's accuracy and NLL."""
    if isinstance(model, GatedEnsemble):
        return evaluate_combiner(model, P, X, y, top_k)
    accuracy, nll = score(model.combine(P, X), y)
    return {"accuracy": accuracy, "nll": nll}


def _make_strategy(s: Mapping[str, Any], mode: str) -> Strategy:
    """Flower's strategy named in the settings, wrapped for site-level DP if asked."""
    fraction, min_sites = float(s[L.FRACTION_TRAIN]), int(s[L.MIN_SITES])
    base = make_strategy(
        str(s.get(L.STRATEGY, "FedAvg")),
        json.loads(str(s.get(L.STRATEGY_PARAMS, "{}"))),
        fraction_train=fraction,
        fraction_evaluate=0.0,  # evaluation happens on the coordinator's own split
        min_train_nodes=min_sites,
        min_available_nodes=min_sites,
        weighted_by_key="num-examples" if mode == "none" else site_dp.WEIGHT_KEY,
    )
    return site_dp.wrap_strategy(
        base,
        mode,
        noise_multiplier=float(s.get(L.SITE_DP_NOISE, 1.0)),
        clipping_norm=float(s.get(L.SITE_DP_CLIP, 1.0)),
        num_sites=max(int(int(s[L.NUM_SITES]) * fraction), min_sites),
        delta=float(s[L.DELTA]),
        clipped_count_stddev=(float(s[L.SITE_DP_COUNT_STDDEV])
                              if float(s.get(L.SITE_DP_COUNT_STDDEV, 0)) > 0 else None),
    )


def coordinate(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None) -> None:
    """Run the federated rounds and write the results to ``<run-dir>/federation``.

    With ``resume`` set, continue from the run directory's last checkpoint.
    """
    run_dir = s[L.RUN_DIR]
    model = load_combiner(s[L.INITIAL_COMBINER_PATH])  # public map
    if model.kind == "cascade":  # calibrated from one DP histogram release, no training rounds
        report = calibrate_federated(grid, s, progress)
        report["site_level"] = site_dp.site_level_report(None, "none", noise_multiplier=0.0, rounds=0,
                                                         delta=float(s[L.DELTA]))
        report["strategy"] = "sum of noisy histograms"
        L.write_atomic(L.federation_dir(run_dir) / "rounds.json", json.dumps(report, indent=1))
        return
    with np.load(L.coordinator_test_path(run_dir)) as test:
        X_test, y_test = test["X"], test["y"]
    P_test = expert_outputs(load_experts(Path(s[L.EXPERTS_PATH])), X_test)
    num_rounds, top_k = int(s[L.NUM_ROUNDS]), int(s[L.TOP_K])
    every = int(s.get(L.CHECKPOINT_EVERY, 1))
    mode = str(s.get(L.SITE_DP_MODE, "none"))
    strategy = _make_strategy(s, mode)
    arrays = ArrayRecord(model.trainable_state())
    report: dict[str, Any] = {"rounds": [], "sites": {}, "failures": {}}
    if str(s.get(L.RESUME, False)).lower() in ("true", "1"):
        saved = load_checkpoint(run_dir, strategy)
        arrays, report, first_round = saved.array_record(), saved.report, saved.round + 1
    else:
        first_round = 1
    started = time.monotonic() - (report["rounds"][-1]["elapsed_s"] if report["rounds"] else 0.0)

    def evaluate(server_round: int, current: ArrayRecord, reports: dict[str, dict[str, float]],
                 failures: list[dict[str, Any]], aggregated: bool) -> None:
        model.load_trainable(current.to_torch_state_dict())
        row = {
            "round": server_round,
            **evaluate_model(model, P_test, X_test, y_test, top_k),
            "aggregated": aggregated,  # False: too few replies, the parameters were kept
            "sites_reporting": len(reports),
            "sites_failed": len(failures),
            "epsilon_max": max((r["epsilon"] for r in reports.values()), default=0.0),
            "elapsed_s": time.monotonic() - started,
        }
        report["rounds"].append(row)
        if progress:
            progress({**row, "num_rounds": num_rounds, "failures": failures})

    def on_round(outcome: RoundOutcome) -> None:
        reports = {str(int(r["metrics"]["site"])): dict(r["metrics"]) for r in outcome.replies}
        failures = [f.as_dict() for f in outcome.failures]
        report["sites"][str(outcome.round)] = reports
        report["failures"][str(outcome.round)] = failures
        evaluate(outcome.round, outcome.arrays, reports, failures, outcome.aggregated)
        if outcome.round % every == 0 or outcome.round == num_rounds:
            save_checkpoint(run_dir, outcome.round, outcome.arrays, strategy, report)

    if first_round == 1:
        evaluate(0, arrays, {}, [], False)
    shipment = Shipment.of(s)  # the sites get the shared files from here, not from our disk
    announce = shipment.announcement()
    site_grid = SiteGrid(grid, timeout=float(s[L.ROUND_TIMEOUT]), shipment=shipment)
    arrays = run_rounds(
        strategy, site_grid, arrays, first_round=first_round, num_rounds=num_rounds,
        min_replies=int(s.get(L.MIN_REPLIES, 1)), seed=int(s[L.SEED]),
        train_config=ConfigRecord({site_dp.CONFIG_KEY: mode, **announce}), on_round=on_round,
    )
    personalise = float(s.get(L.HOLDOUT, 0.0)) > 0 and model.kind == GatedEnsemble.kind
    if personalise:  # each site personalises the final (router) combiner, keeps it
        personalize = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord(announce)}),
                               dst_node_id=n, message_type=MessageType.EVALUATE)
                       for n in site_grid.get_node_ids()]
        site_grid.send_and_receive(personalize, timeout=site_grid.timeout)
        report["personalization_failures"] = [f.as_dict() for f in site_grid.take_failures()]
    out = L.federation_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.load_trainable(arrays.to_torch_state_dict())
    torch.save(combiner_state(model), out / "global_combiner.pt")
    report["site_level"] = site_dp.site_level_report(
        strategy, mode, noise_multiplier=float(s.get(L.SITE_DP_NOISE, 1.0)),
        rounds=len([r for r in report["sites"].values() if r]), delta=float(s[L.DELTA]),
    )
    report["strategy"] = str(s.get(L.STRATEGY, "FedAvg"))
    L.write_atomic(out / "rounds.json", json.dumps(report, indent=1))


def make_server_app(
    settings: Mapping[str, Any] | None = None, progress: ProgressFn | None = None
) -> ServerApp:
    """The coordinator's ServerApp; ``settings`` are defaults that ``run_config`` overrides."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    defaults = dict(settings or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = L.merged(defaults, context.run_config)
        with L.failure_recorded(settings[L.RUN_DIR]):
            coordinate(grid, settings, progress)

    return app
