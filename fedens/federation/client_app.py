"""The site's ClientApp: local DP-SGD on the learned combiner; only parameters leave.

A site reads only its own files: its private data (``data-path``), the shared
experts and its privacy ledger (``ledger-path``). What it replies is the
combiner's parameters and metrics (examples used, loss, epsilon spent).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs
from fedens.experts import expert_outputs, load_experts
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.privacy import BudgetExceeded, calibrate_dpsgd_noise, dpsgd_event
from fedens.privacy.dpsgd import make_private_training, sample_rate_for

_STATE_KEY = "fedens-dpsgd"  # this site's accountant history, in Context.state


def _restore(context: Context) -> tuple[float | None, list[tuple[float, float, int]]]:
    if _STATE_KEY not in context.state:
        return None, []
    rec = context.state[_STATE_KEY]
    history = list(zip(rec["sigmas"], rec["rates"], (int(n) for n in rec["steps"]), strict=True))
    return float(rec["noise-multiplier"]), history


def _remember(context: Context, sigma: float, history: list[tuple[float, float, int]]) -> None:
    context.state[_STATE_KEY] = ConfigRecord(
        {
            "noise-multiplier": sigma,
            "sigmas": [s for s, _, _ in history] or [0.0],
            "rates": [q for _, q, _ in history] or [0.0],
            "steps": [n for _, _, n in history] or [0],
        }
    )


def train_site(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    """One round of local DP-SGD at one site."""
    torch.set_num_threads(1)
    s = L.merged(settings, context.run_config)
    site, data_path, _ = L.site_paths(s, context.node_config)
    if not L.contributes(context.node_config):
        return Message(Error(code=L.OPTED_OUT, reason=L.opted_out_reason(site)), reply_to=msg)
    server_round = int(msg.content["config"]["server-round"])
    with np.load(data_path) as data:
        X, y = data["X"], data["y"]
    P = expert_outputs(load_experts(Path(s[L.EXPERTS_PATH])), X)

    batch_size, epochs = int(s[L.BATCH_SIZE]), int(s[L.LOCAL_EPOCHS])
    delta = float(s[L.DELTA])
    rate = sample_rate_for(len(y), batch_size)
    steps = epochs * round(1 / rate)
    sigma, history = _restore(context)
    if sigma is None:  # first round: spread the target epsilon over every round planned
        sigma = calibrate_dpsgd_noise(
            float(s[L.TARGET_EPSILON]), delta, rate, steps * int(s[L.NUM_ROUNDS])
        )

    ledger = L.open_site_ledger(s, context.node_config)
    try:  # the budget is checked, and the event recorded, before anything is released
        epsilon = ledger.charge(
            dpsgd_event(sigma, rate, steps),
            mechanism="dpsgd",
            round=server_round,
            params={"noise_multiplier": sigma, "sample_rate": rate, "steps": steps,
                    "max_grad_norm": float(s[L.MAX_GRAD_NORM])},
        )
    except BudgetExceeded as refusal:
        return Message(Error(code=L.BUDGET_REFUSED, reason=str(refusal)), reply_to=msg)
    finally:
        ledger.close()

    torch.manual_seed(int(s[L.SEED]) * 1000 + site * 100 + server_round)
    model = GatedEnsemble.from_state_dict(torch.load(s[L.INITIAL_COMBINER_PATH]))  # public map
    model.load_trainable(msg.content["arrays"].to_torch_state_dict())
    private = make_private_training(
        model,
        make_optimizer(model, float(s[L.LEARNING_RATE])),
        combiner_dataset(X, P, y),
        batch_size=batch_size,
        noise_multiplier=sigma,
        max_grad_norm=float(s[L.MAX_GRAD_NORM]),
        history=history,
    )
    done, loss = run_epochs(private.module, private.optimizer, private.loader, epochs)
    assert done == steps, f"site {site} took {done} DP-SGD steps, charged {steps}"
    _remember(context, sigma, private.accountant_history())

    metrics = MetricRecord(
        {
            "num-examples": len(y),
            site_dp.WEIGHT_KEY: 1.0,  # equal weights when site-level DP is on
            "site": site,
            "train-loss": loss,
            "epsilon": epsilon,
            "opacus-epsilon": private.opacus_epsilon(delta),
            "noise-multiplier": sigma,
        }
    )
    return Message(
        RecordDict({"arrays": ArrayRecord(model.trainable_state()), "metrics": metrics}), reply_to=msg
    )


def make_client_app(settings: Mapping[str, Any] | None = None) -> ClientApp:
    """The site's ClientApp; ``settings`` are defaults that ``run_config`` overrides."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    defaults = dict(settings or {})
    app = ClientApp(mods=[site_dp.site_dp_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_site(msg, context, defaults)

    return app
