"""The coordinator's ServerApp: FedAvg over the sites' combiner parameters.

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
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedens.combiners import GatedEnsemble
from fedens.experts import expert_outputs, load_experts
from fedens.federation import layout as L
from fedens.federation import site_dp

ProgressFn = Callable[[dict[str, Any]], None]


def evaluate_combiner(
    model: GatedEnsemble, P: np.ndarray, X: np.ndarray, y: np.ndarray, top_k: int
) -> dict[str, float]:
    """Accuracy and NLL of the router (dense and top-k) and of the global weights."""

    def scores(proba: np.ndarray) -> tuple[float, float]:
        nll = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean()
        return float((proba.argmax(1) == y).mean()), float(nll)

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


class _SiteReports:
    """Keeps each site's train metrics per round (Flower only keeps the average)."""

    def __init__(self) -> None:
        self.by_round: dict[int, dict[str, dict[str, float]]] = {}
        self.current_round = 0

    def aggregate(self, replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        self.current_round += 1
        self.by_round[self.current_round] = {
            str(int(r["metrics"]["site"])): dict(r["metrics"]) for r in replies
        }
        return aggregate_metricrecords(replies, weighted_by_key)


def coordinate(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None) -> None:
    """Run the federated rounds and write the results to ``<run-dir>/federation``."""
    with np.load(L.coordinator_test_path(s[L.RUN_DIR])) as test:
        X_test, y_test = test["X"], test["y"]
    P_test = expert_outputs(load_experts(Path(s[L.EXPERTS_PATH])), X_test)
    model = GatedEnsemble.from_state_dict(torch.load(s[L.INITIAL_COMBINER_PATH]))  # public map
    sites = _SiteReports()
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    num_rounds = int(s[L.NUM_ROUNDS])

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_trainable(arrays.to_torch_state_dict())
        metrics = evaluate_combiner(model, P_test, X_test, y_test, int(s[L.TOP_K]))
        reports = sites.by_round.get(server_round, {})
        row = {
            "round": server_round,
            **metrics,
            "sites_reporting": len(reports),
            "epsilon_max": max((r["epsilon"] for r in reports.values()), default=0.0),
            "elapsed_s": time.monotonic() - started,
        }
        rows.append(row)
        if progress:
            progress({**row, "num_rounds": num_rounds})
        return MetricRecord(metrics)

    mode = str(s.get(L.SITE_DP_MODE, "none"))
    fraction, min_sites = float(s[L.FRACTION_TRAIN]), int(s[L.MIN_SITES])
    strategy = site_dp.wrap_strategy(
        FedAvg(
            fraction_train=fraction,
            fraction_evaluate=0.0,  # evaluation happens on the coordinator's own split
            min_train_nodes=min_sites,
            min_available_nodes=min_sites,
            weighted_by_key="num-examples" if mode == "none" else site_dp.WEIGHT_KEY,
            train_metrics_aggr_fn=sites.aggregate,
        ),
        mode,
        noise_multiplier=float(s.get(L.SITE_DP_NOISE, 1.0)),
        clipping_norm=float(s.get(L.SITE_DP_CLIP, 1.0)),
        num_sites=max(int(int(s[L.NUM_SITES]) * fraction), min_sites),
        delta=float(s[L.DELTA]),
        clipped_count_stddev=(float(s[L.SITE_DP_COUNT_STDDEV])
                              if float(s.get(L.SITE_DP_COUNT_STDDEV, 0)) > 0 else None),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.trainable_state()),
        num_rounds=num_rounds,
        timeout=float(s[L.ROUND_TIMEOUT]),
        train_config=ConfigRecord({site_dp.CONFIG_KEY: mode}),
        evaluate_fn=evaluate,
    )
    out = L.federation_dir(s[L.RUN_DIR])
    out.mkdir(parents=True, exist_ok=True)
    model.load_trainable(result.arrays.to_torch_state_dict())
    torch.save(model.state_dict(), out / "global_combiner.pt")
    report = {
        "rounds": rows,
        "sites": {str(r): v for r, v in sites.by_round.items()},
        "site_level": site_dp.site_level_report(
            strategy, mode, noise_multiplier=float(s.get(L.SITE_DP_NOISE, 1.0)),
            rounds=len([r for r in sites.by_round.values() if r]), delta=float(s[L.DELTA]),
        ),
    }
    (out / "rounds.json").write_text(json.dumps(report, indent=1))


def make_server_app(
    settings: Mapping[str, Any] | None = None, progress: ProgressFn | None = None
) -> ServerApp:
    """The coordinator's ServerApp; ``settings`` are defaults that ``run_config`` overrides."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    defaults = dict(settings or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        coordinate(grid, L.merged(defaults, context.run_config), progress)

    return app
