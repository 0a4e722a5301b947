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

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import train_gated_ensemble
from fedens.experts import expert_outputs
from fedens.federation import layout as L
from fedens.federation.site import SiteRequest, site_handler
from fedens.files import torch_bytes, write_atomic


def scores(model: GatedEnsemble, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {head: float((model.combine(P, X, head).argmax(1) == y).mean()) for head in ("router", "weights")}


@site_handler(contributes=False)
def personalize_site(request: SiteRequest) -> Message:
    """Fine-tune the final global combiner on the site's training part; keep it and the
    comparison on the held-back part in the site's own folder. Its reply carries no data."""
    torch.set_num_threads(1)
    s, site = request.settings, request.site
    (X, y), (X_held, y_held) = request.records()
    if len(y_held) == 0:
        return request.reply(metrics=MetricRecord({"site": site, "personalized": 0}))
    experts = request.experts()
    P, P_held = expert_outputs(experts, X), expert_outputs(experts, X_held)
    model = request.initial_combiner()
    model.load_trainable(request.msg.content["arrays"].to_torch_state_dict())
    global_scores = scores(model, P_held, X_held, y_held)
    train_gated_ensemble(model, X, P, y, int(s[L.PERSONAL_EPOCHS]), float(s[L.LEARNING_RATE]) / 5,
                         int(s[L.BATCH_SIZE]), seed=int(s[L.SEED]) * 1000 + site)
    personal_scores = scores(model, P_held, X_held, y_held)
    write_atomic(request.folder / "personalized_combiner.pt", torch_bytes(model.trainable_state()))
    report = {"site": site, "train_records": len(y), "held_back_records": len(y_held),
              "global": global_scores, "personalized": personal_scores}
    write_atomic(L.personalization_report_path(request.ledger_path), json.dumps(report, indent=1))
    return request.reply(metrics=MetricRecord({"site": site, "personalized": 1}))
