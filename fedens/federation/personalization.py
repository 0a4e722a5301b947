"""Per-site personalised combiners: the global combiner fine-tuned on a site's own
records, compared with the global one on the site's held-back records.

After the last round the coordinator sends the final global parameters in an
``evaluate`` message. Each site fine-tunes a copy on its training part, scores
both on its held-back part, and keeps the personalised parameters and the
comparison in its own folder. Neither leaves the site (its reply carries only
its site number), so this costs no privacy budget; the personalised model is
the site's own, used for its own queries. In simulation the run report reads
each site's comparison from the run directory, as each site would read its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import train_gated_ensemble
from fedens.experts import expert_outputs
from fedens.federation import layout as L
from fedens.federation.site_data import initial_combiner, shared_experts, site_records


def scores(model: GatedEnsemble, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {head: float((model.combine(P, X, head).argmax(1) == y).mean()) for head in ("router", "weights")}


def personalize_site(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    torch.set_num_threads(1)
    s = L.merged(settings, context.run_config)
    site, data_path, ledger_path = L.site_paths(s, context.node_config)
    (X, y), (X_held, y_held) = site_records(s, data_path, site)
    if len(y_held) == 0:
        return Message(RecordDict({"metrics": MetricRecord({"site": site, "personalized": 0})}), reply_to=msg)
    experts = shared_experts(s, context.node_config)
    P, P_held = expert_outputs(experts, X), expert_outputs(experts, X_held)
    model = initial_combiner(s, context.node_config)
    model.load_trainable(msg.content["arrays"].to_torch_state_dict())
    global_scores = scores(model, P_held, X_held, y_held)
    train_gated_ensemble(model, X, P, y, int(s[L.PERSONAL_EPOCHS]), float(s[L.LEARNING_RATE]) / 5,
                         int(s[L.BATCH_SIZE]), seed=int(s[L.SEED]) * 1000 + site)
    personal_scores = scores(model, P_held, X_held, y_held)
    torch.save(model.trainable_state(), ledger_path.parent / "personalized_combiner.pt")
    report = {"site": site, "train_records": len(y), "held_back_records": len(y_held),
              "global": global_scores, "personalized": personal_scores}
    L.write_atomic(L.personalization_report_path(ledger_path), json.dumps(report, indent=1))
    return Message(RecordDict({"metrics": MetricRecord({"site": site, "personalized": 1})}), reply_to=msg)
