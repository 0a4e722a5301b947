"""The coordinator's ServerApp for the ensemble protocols: the sites learn the combiner, the
coordinator aggregates with a Flower strategy and evaluates on its own split.

Which protocol runs is the combiner's own (``FederatedForm.protocol``): ``dpsgd_rounds``
(:func:`train_rounds`: DP-SGD at the sites, a Flower strategy over their parameters) or
``histogram_release`` (:func:`fedens.federation.ensemble.histograms.calibrate_federated`: one
noisy-histogram release per site). The coordinator holds the shared experts and its own
evaluation split; it never opens a site's files. Per-round metrics and the global combiner are
written to ``<run-dir>/federation/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedens.combiners import combiner_state, load_combiner
from fedens.data.rows import features
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.federation.checkpoint import load_checkpoint, save_checkpoint
from fedens.federation.ensemble.histograms import calibrate_federated
from fedens.federation.ensemble.rounds import RoundOutcome, run_rounds
from fedens.federation.grid import SiteGrid, coordinator_app, parse_site_nodes
from fedens.federation.outputs_cache import coordinator_test_outputs
from fedens.federation.shipping import Shipment
from fedens.federation.strategies import make_strategy
from fedens.files import torch_bytes, write_atomic

ProgressFn = Callable[[dict[str, Any]], None]


def make_strategy_of(s: Mapping[str, Any]) -> Strategy:
    """Flower's strategy named in the settings, wrapped for site-level DP if asked."""
    fraction, min_sites, mode = float(s[L.FRACTION_TRAIN]), int(s[L.MIN_SITES]), str(s[L.SITE_DP_MODE])
    base = make_strategy(
        str(s[L.STRATEGY]),
        json.loads(str(s[L.STRATEGY_PARAMS])),
        fraction_train=fraction,
        fraction_evaluate=0.0,  # evaluation happens on the coordinator's own split
        min_train_nodes=min_sites,
        min_available_nodes=min_sites,
        weighted_by_key="num-examples" if mode == "none" else site_dp.WEIGHT_KEY,
    )
    return site_dp.wrap_strategy(
        base,
        mode,
        noise_multiplier=float(s[L.SITE_DP_NOISE]),
        clipping_norm=float(s[L.SITE_DP_CLIP]),
        num_sites=max(int(int(s[L.NUM_SITES]) * fraction), min_sites),
        delta=float(s[L.DELTA]),
        clipped_count_stddev=(float(s[L.SITE_DP_COUNT_STDDEV])
                              if float(s[L.SITE_DP_COUNT_STDDEV]) > 0 else None),
    )


def coordinate(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None) -> None:
    """Run the combiner's protocol and write ``<run-dir>/federation/rounds.json``."""
    model = load_combiner(s[L.INITIAL_COMBINER_PATH])  # public map
    PROTOCOLS[model.protocol](grid, s, progress, model)


def release_histograms(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None, model: Any) -> None:
    """``histogram_release``: one noisy-histogram release per site, no training rounds."""
    report = calibrate_federated(grid, s, progress, model)
    report["site_level"] = site_dp.site_level_report(None, "none", noise_multiplier=0.0, rounds=0,
                                                     delta=float(s[L.DELTA]))
    report["strategy"] = "sum of noisy histograms"
    write_atomic(L.federation_dir(s[L.RUN_DIR]) / "rounds.json", json.dumps(report, indent=1))


def train_rounds(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None, model: Any) -> None:
    """``dpsgd_rounds``: the federated rounds, with checkpoints; with ``resume`` set, continued
    from the run directory's last checkpoint."""
    run_dir = s[L.RUN_DIR]
    test_inputs, y_test, P_test = coordinator_test_outputs(s)
    X_test = features(test_inputs)
    num_rounds, top_k, every = int(s[L.NUM_ROUNDS]), int(s[L.TOP_K]), int(s[L.CHECKPOINT_EVERY])
    strategy = make_strategy_of(s)
    arrays = ArrayRecord(model.trainable_state())
    report: dict[str, Any] = {"rounds": [], "sites": {}, "failures": {}}
    if str(s[L.RESUME]).lower() in ("true", "1"):
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
            **model.scores(P_test, X_test, y_test, top_k),
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
    site_grid = SiteGrid(grid, timeout=float(s[L.ROUND_TIMEOUT]), shipment=shipment,
                         site_nodes=parse_site_nodes(s[L.SITE_NODES]))
    mode = str(s[L.SITE_DP_MODE])
    arrays = run_rounds(
        strategy, site_grid, arrays, first_round=first_round, num_rounds=num_rounds,
        min_replies=int(s[L.MIN_REPLIES]), seed=int(s[L.SEED]),
        train_config=ConfigRecord({site_dp.CONFIG_KEY: mode, **announce}), on_round=on_round,
        max_update_norm=float(s[L.MAX_UPDATE_NORM]),
    )
    if float(s[L.HOLDOUT]) > 0 and model.personalizable:  # each site personalises the final combiner
        personalize = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord(announce)}),
                               dst_node_id=n, message_type=MessageType.EVALUATE)
                       for n in site_grid.get_node_ids()]
        site_grid.send_and_receive(personalize, timeout=site_grid.timeout)
        report["personalization_failures"] = [f.as_dict() for f in site_grid.take_failures()]
    out = L.federation_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.load_trainable(arrays.to_torch_state_dict())
    write_atomic(out / "global_combiner.pt", torch_bytes(combiner_state(model)))
    report["site_level"] = site_dp.site_level_report(
        strategy, mode, noise_multiplier=float(s[L.SITE_DP_NOISE]),
        rounds=len([r for r in report["sites"].values() if r]), delta=float(s[L.DELTA]),
    )
    report["strategy"] = str(s[L.STRATEGY])
    write_atomic(out / "rounds.json", json.dumps(report, indent=1))


#: a combiner's ``protocol`` -> how the coordinator runs it
PROTOCOLS: dict[str, Callable[[Grid, Mapping[str, Any], ProgressFn | None, Any], None]] = {
    "dpsgd_rounds": train_rounds,
    "histogram_release": release_histograms,
}


def make_server_app(settings: Mapping[str, Any] | None = None, progress: ProgressFn | None = None,
                    unprepared: Callable[[Grid, Any], None] | None = None) -> ServerApp:
    """The coordinator's ServerApp for training rounds and histogram releases
    (``unprepared``: see :func:`fedens.federation.grid.coordinator_app`)."""
    return coordinator_app(coordinate, settings, progress, unprepared)
