"""A site's round of training: local DP-SGD on the learned combiner; only parameters leave.

The record check, the ledger charge (keyed by everything that determines the update), the
training under Opacus, and the reply: the combiner's parameters and metrics (examples used,
epsilon spent). :mod:`fedens.federation.ensemble.client` calls it for a ``train`` message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs, training_seed
from fedens.data.rows import ExpertInputs, features, sorted_text
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.federation.attacks import attacked
from fedens.federation.site import SiteRequest, site_handler
from fedens.files import sha256_file
from fedens.privacy import PrivacyLedger, calibrate_dpsgd_noise, dpsgd_event
from fedens.privacy.dpsgd import make_private_training, sample_rate_for
from fedens.privacy.release_keys import release_key, sha256_arrays, sha256_state

_SIGMA_KEY = "fedens-dpsgd"  # this run's calibrated noise multiplier, in Context.state


def _noise_multiplier(context: Context, s: Mapping[str, Any], rate: float, steps: int) -> float:
    """DP-SGD noise spreading the target epsilon over every round planned (calibrated
    once per run; the same config always gives the same value, so a resumed run agrees)."""
    if _SIGMA_KEY not in context.state:
        sigma = calibrate_dpsgd_noise(float(s[L.TARGET_EPSILON]), float(s[L.DELTA]), rate,
                                      steps * int(s[L.NUM_ROUNDS]))
        context.state[_SIGMA_KEY] = ConfigRecord({"noise-multiplier": sigma})
    return float(context.state[_SIGMA_KEY]["noise-multiplier"])


def _dpsgd_history(ledger: PrivacyLedger, but: str) -> list[tuple[float, float, int]]:
    """Opacus's accountant history before release ``but``, rebuilt from the site's durable
    ledger: it outlives the run (a resumed or later run counts what the site spent)."""
    return [(r["params"]["noise_multiplier"], r["params"]["sample_rate"], int(r["params"]["steps"]))
            for r in ledger.records() if r["mechanism"] == "dpsgd" and r["release_key"] != but]


def _release_key(request: SiteRequest, server_round: int, received: ArrayRecord, inputs: ExpertInputs,
                 y: np.ndarray, mechanism: Mapping[str, Any], proximal_mu: float) -> str:
    """Names this round's update by everything that determines it: the DP-SGD parameters, the
    records trained on, the global parameters received, the shared files, the training settings,
    the seed and the software (:func:`fedens.privacy.release_key`)."""
    s = request.settings
    return release_key(
        "dpsgd", f"site-{request.site}/round-{server_round}",
        mechanism=dict(mechanism), seed=int(s[L.SEED]), proximal_mu=proximal_mu,
        lr=float(s[L.LEARNING_RATE]), batch_size=int(s[L.BATCH_SIZE]), epochs=int(s[L.LOCAL_EPOCHS]),
        records_sha256=sha256_arrays(features(inputs), y, *sorted_text(inputs)),
        received_sha256=sha256_state(received.to_torch_state_dict()),
        shared_sha256={key: sha256_file(request.shared_file(key))
                       for key in (L.EXPERTS_PATH, L.INITIAL_COMBINER_PATH)},
    )


@site_handler
def train_site(request: SiteRequest) -> Message:
    """One round of local DP-SGD at one site: checked records, then the charge, then training;
    the update is sent only once the ledger holds what it costs."""
    torch.set_num_threads(1)
    s, site, msg = request.settings, request.site, request.msg
    config = msg.content["config"]
    server_round = int(config["server-round"])
    _drill(s, site, server_round)
    (inputs, y), _ = request.records()  # checked against the task's schema before anything is spent
    P, X = request.expert_outputs(inputs), features(inputs)

    batch_size, epochs = int(s[L.BATCH_SIZE]), int(s[L.LOCAL_EPOCHS])
    delta = float(s[L.DELTA])
    rate = sample_rate_for(len(y), batch_size)
    steps = epochs * round(1 / rate)
    sigma = _noise_multiplier(request.context, s, rate, steps)
    received = msg.content["arrays"]
    mechanism = {"noise_multiplier": sigma, "sample_rate": rate, "steps": steps,
                 "max_grad_norm": float(s[L.MAX_GRAD_NORM])}
    proximal_mu = float(config.get("proximal-mu", 0.0))
    key = _release_key(request, server_round, received, inputs, y, mechanism, proximal_mu)
    with request.ledger() as ledger:  # the budget is checked, and the event recorded, before release
        history = _dpsgd_history(ledger, but=key)  # Opacus adds this round's steps itself
        sent_before = ledger.recorded_output(key)
        ledger.charge(dpsgd_event(sigma, rate, steps), mechanism="dpsgd", round=server_round,
                      params=mechanism, release_key=key)

    torch.manual_seed(training_seed(int(s[L.SEED]), site, server_round))
    model = request.initial_combiner()  # public map
    model.load_trainable(received.to_torch_state_dict())
    private = make_private_training(
        model,
        make_optimizer(model, float(s[L.LEARNING_RATE])),
        combiner_dataset(X, P, y),
        batch_size=batch_size,
        noise_multiplier=sigma,
        max_grad_norm=float(s[L.MAX_GRAD_NORM]),
        history=history,
    )
    done, _ = run_epochs(private.module, private.optimizer, private.loader, epochs,
                         after_step=_proximal_pull(model, proximal_mu, float(s[L.LEARNING_RATE])))
    assert done == steps, f"site {site} took {done} DP-SGD steps, charged {steps}"
    update = _drilled(s, site, server_round, received, model.trainable_state())
    with request.ledger() as ledger:
        output = sha256_state(update)
        if sent_before not in (None, output):  # same inputs, another output: a new release
            key = f"{key}/output-{output[:16]}"
            ledger.charge(dpsgd_event(sigma, rate, steps), mechanism="dpsgd", round=server_round,
                          params=mechanism, release_key=key)
        ledger.record_output(key, output)
        epsilon = ledger.epsilon()

    metrics = MetricRecord(
        {
            "num-examples": len(y),
            site_dp.WEIGHT_KEY: 1.0,  # equal weights when site-level DP is on
            "site": site,
            "epsilon": epsilon,
            "opacus-epsilon": private.opacus_epsilon(delta),
            "noise-multiplier": sigma,
        }
    )
    return request.reply(arrays=ArrayRecord(update), metrics=metrics)


def _drilled(s: Mapping[str, Any], site: int, server_round: int, received: ArrayRecord,
             update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``update``, or what a hostile site sends in its place when it runs ``attack-kind``."""
    kind, sites = str(s[L.ATTACK_KIND]), {int(x) for x in str(s[L.ATTACK_SITES]).split(",") if x}
    if kind == "none" or site not in sites:
        return update
    return attacked(kind, received.to_torch_state_dict(), update, float(s[L.ATTACK_SCALE]),
                    seed=training_seed(int(s[L.SEED]), site, server_round))


def _drill(s: Mapping[str, Any], site: int, server_round: int) -> None:
    """A planned failure (``inject-faults``): raise, or hang past the round timeout."""
    fault = L.injected_fault(s, site, server_round)
    if fault == "raise":
        raise RuntimeError(f"site {site}: injected failure in round {server_round}")
    if fault == "hang":
        time.sleep(float(s[L.ROUND_TIMEOUT]) + 2)  # past the coordinator's timeout for the round


def _proximal_pull(model: GatedEnsemble, mu: float, lr: float) -> Callable[[], None] | None:
    """FedProx's proximal term mu/2 |w - w_global|^2, applied as its own step after each
    DP-SGD step. Its gradient mu (w - w_global) depends on no record, so it needs no
    clipping or noise (Opacus would silently drop it from a per-sample loss)."""
    if mu <= 0:
        return None
    anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def pull() -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in anchor:
                    p.sub_(lr * mu * (p - anchor[n]))

    return pull
