"""Federated cascade calibration: one DP release of confidence histograms per site.

Message flow (one ``query.cascade`` round, Flower Message API):

* site: its experts' outputs on its private records -> per expert (index order)
  and confidence bin, [records, records right] (:func:`confidence_histograms`,
  bins = the run's threshold grid) -> charges its ledger, then adds Gaussian
  noise itself and replies with the noisy histograms only;
* coordinator: sums the noisy histograms and picks per-expert thresholds with the
  cascade's own histogram calibration (:func:`thresholds_from_histograms`, the rule
  the central reference uses on exact counts). Everything after the noise is
  post-processing and costs nothing more.

Privacy (record level, add/remove one record of one site, as DP-SGD's
accounting): one record falls into exactly one bin per expert and adds 1 to that
bin's count and 0 or 1 to its correct count, so the (K, B, 2) histogram array
moves by at most ``sqrt(K * (1 + 1)) = sqrt(2K)`` in L2 (replace-one would be
``2 sqrt(K)``). Noise of std ``z * sqrt(2K)`` on every entry is the Gaussian
mechanism with noise multiplier ``z``: ``GaussianDpEvent(z)`` in the ledger; ``z``
is the least that keeps that one event within the run's target epsilon (dp-accounting's
calibration, RDP, as the ledger accounts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import dp_accounting
import numpy as np
import torch
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedens.combiners import CascadeCombiner, combiner_state, confidence_histograms
from fedens.data.rows import features
from fedens.federation import layout as L
from fedens.federation.grid import SiteGrid, parse_site_nodes, wait_for_sites
from fedens.federation.outputs_cache import coordinator_test_outputs
from fedens.federation.shipping import Shipment
from fedens.federation.site import SiteRequest, site_handler
from fedens.files import torch_bytes, write_atomic
from fedens.privacy.release_keys import release_key

MECHANISM = "cascade_histograms"


def histogram_sensitivity(num_experts: int) -> float:
    """L2 sensitivity of the (K, B, 2) histograms under add/remove one record: sqrt(2K)."""
    return math.sqrt(2.0 * num_experts)


def histogram_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """What one site's release spends: the Gaussian mechanism at std / sensitivity = ``noise_multiplier``."""
    return dp_accounting.GaussianDpEvent(noise_multiplier)


def calibrate_histogram_noise(target_epsilon: float, delta: float) -> float:
    """Least noise multiplier whose one release stays within ``target_epsilon`` at ``delta``
    (dp-accounting's calibration, never over the target)."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    return float(dp_accounting.calibrate_dp_mechanism(
        RdpAccountant, histogram_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-6))


def noisy_histograms(hist: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """``hist`` + N(0, (noise_multiplier * sqrt(2K))^2) on every entry."""
    std = noise_multiplier * histogram_sensitivity(hist.shape[0])
    return hist + rng.normal(0.0, std, hist.shape)


def grid_of(s: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(json.loads(str(s[L.CASCADE_GRID])), dtype=np.float64)


# --- site ------------------------------------------------------------------------------


def _release_key(request: SiteRequest, exact: np.ndarray, grid: np.ndarray, z: float) -> str:
    """Names the release by all that determines it: the noise is drawn from (seed, site), so the
    same exact histograms, grid and noise multiplier give the very same noisy output. The key
    stays in the site's own ledger."""
    return release_key(MECHANISM, f"site-{request.site}", noise_multiplier=z, grid=grid,
                       histograms=exact, seed=int(request.settings[L.SEED]))


@site_handler
def answer_histograms(request: SiteRequest) -> Message:
    """The site's noisy confidence histograms, charged to its ledger before they are made."""
    torch.set_num_threads(1)
    s, site = request.settings, request.site
    (inputs, y), _ = request.records()  # checked against the task's schema before anything is spent
    P = request.expert_outputs(inputs)
    K, grid, delta = P.shape[1], grid_of(s), float(s[L.DELTA])
    z = calibrate_histogram_noise(float(s[L.TARGET_EPSILON]), delta)
    exact = confidence_histograms(P, y, grid)  # nothing leaves the site before the charge
    with request.ledger() as ledger:
        epsilon = ledger.charge(histogram_event(z), mechanism=MECHANISM, round=1, params={
            "noise_multiplier": z, "sensitivity_l2": histogram_sensitivity(K), "experts": K,
            "bins": len(grid) + 1}, release_key=_release_key(request, exact, grid, z))
    rng = np.random.default_rng([int(s[L.SEED]), site, 4099])
    noisy = noisy_histograms(exact, z, rng)
    return request.reply(
        histograms=ArrayRecord({"histograms": Array(np.ascontiguousarray(noisy))}),
        metrics=MetricRecord({"site": site, "epsilon": epsilon, "noise-multiplier": z,
                              "noise-std": z * histogram_sensitivity(K)}))


# --- coordinator -----------------------------------------------------------------------


def calibrate_federated(grid: Grid, s: Mapping[str, Any], progress: Callable[[dict[str, Any]], None] | None,
                        cascade: CascadeCombiner) -> dict[str, Any]:
    """Ask every site for its noisy histograms, calibrate ``cascade`` (the initial one), evaluate it
    on the coordinator's test split; writes the global cascade and returns the federation report."""
    run_dir, timeout = s[L.RUN_DIR], float(s[L.ROUND_TIMEOUT])
    wait_for_sites(grid, int(s[L.MIN_SITES]), timeout)
    shipment = Shipment.of(s)  # the sites get the shared experts from here (shipping.py)
    site_grid = SiteGrid(grid, timeout=timeout, shipment=shipment,
                         site_nodes=parse_site_nodes(s[L.SITE_NODES]))
    config = ConfigRecord({"server-round": 1, **shipment.announcement()})
    ask = [Message(RecordDict({"config": config}), dst_node_id=n,
                   message_type=L.CASCADE_HISTOGRAMS) for n in site_grid.get_node_ids()]
    replies = [r for r in site_grid.send_and_receive(ask, timeout=timeout) if not r.has_error()]
    failures = [f.as_dict() for f in site_grid.take_failures()]
    if len(replies) < int(s[L.MIN_REPLIES]):
        said = "; ".join(f"site {f['site']}: {f['reason']}" for f in failures[:3])
        raise RuntimeError(f"cascade calibration: {len(replies)} sites replied, fewer than "
                           f"min-replies={s[L.MIN_REPLIES]}" + (f" ({said})" if said else ""))
    total = sum(r.content["histograms"]["histograms"].numpy() for r in replies)
    cascade.calibrate_from_histograms(total, grid_of(s), margin=float(s[L.CASCADE_MARGIN]),
                                      min_count=float(s[L.CASCADE_MIN_COUNT]))
    test_inputs, y_test, P_test = coordinator_test_outputs(s)
    X_test = features(test_inputs)
    reports = {str(int(r.content["metrics"]["site"])): dict(r.content["metrics"]) for r in replies}
    row = {"round": 1, **cascade.scores(P_test, X_test, y_test),
           "sites_reporting": len(replies), "sites_failed": len(failures),
           "epsilon_max": max((r["epsilon"] for r in reports.values()), default=0.0)}
    if progress:
        progress({**row, "num_rounds": 1, "failures": failures})
    out = L.federation_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "global_combiner.pt", torch_bytes(combiner_state(cascade)))
    return {"rounds": [row], "sites": {"1": reports}, "failures": {"1": failures},
            "cascade": {"thresholds": [None if np.isinf(t) else float(t) for t in cascade.threshold],
                        "target_accuracy": cascade.target, "grid": grid_of(s).tolist()}}
