"""Per-site personalised combiners: the global combiner fine-tuned on a site's own
records, compared with the global one on the site's held-back records.

After the last round the coordinator sends the final global parameters in an
``evaluate`` message. Each site fine-tunes a copy on its training part and decides,
by cross-validation on that training part alone, whether the fine-tuned combiner
or the global one serves it better (a site with few records often does better to
keep the global one). It scores all three (global, fine-tuned, its choice) on its
held-back part, and keeps the fine-tuned parameters, its choice and the
comparison in its own folder. Neither leaves the site (its reply carries only
its site number), so this costs no privacy budget; the personalised model is
the site's own, used for its own queries. In simulation the run report reads
each site's comparison from the run directory, as each site would read its own.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import train_gated_ensemble
from fedens.data.rows import features
from fedens.federation import layout as L
from fedens.federation.site import SiteRequest, site_handler
from fedens.files import torch_bytes, write_atomic

FOLDS = 5  # the cross-validation that makes each site's choice


def scores(model: GatedEnsemble, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {head: float((model.combine(P, X, head).argmax(1) == y).mean()) for head in ("router", "weights")}


def fine_tune(model: GatedEnsemble, X: np.ndarray, P: np.ndarray, y: np.ndarray,
              settings: dict, seed: int) -> GatedEnsemble:
    """``model`` trained further on the site's records, locally and without noise."""
    return train_gated_ensemble(model, X, P, y, int(settings[L.PERSONAL_EPOCHS]),
                                float(settings[L.LEARNING_RATE]) / 5, int(settings[L.BATCH_SIZE]), seed)


def validation_gain(global_model: GatedEnsemble, X: np.ndarray, P: np.ndarray, y: np.ndarray,
                    settings: dict, seed: int) -> float | None:
    """The router's accuracy gain of fine-tuning over the global combiner, by ``FOLDS``-fold
    cross-validation on the site's training records (None: fewer records than folds)."""
    if len(y) < FOLDS:
        return None
    order = np.random.default_rng([seed, 104729]).permutation(len(y))
    gained = 0
    for fold, part in enumerate(np.array_split(order, FOLDS)):
        fit = np.setdiff1d(order, part)
        tuned = fine_tune(copy.deepcopy(global_model), X[fit], P[fit], y[fit], settings, seed + fold)
        gained += int((tuned.combine(P[part], X[part]).argmax(1) == y[part]).sum()
                      - (global_model.combine(P[part], X[part]).argmax(1) == y[part]).sum())
    return gained / len(y)


@site_handler(contributes=False)
def personalize_site(request: SiteRequest) -> Message:
    """Fine-tune the final global combiner on the site's training part; keep it and the
    comparison on the held-back part in the site's own folder. Its reply carries no data."""
    torch.set_num_threads(1)
    s, site = request.settings, request.site
    (inputs, y), (held, y_held) = request.records()
    if len(y_held) == 0:
        return request.reply(metrics=MetricRecord({"site": site, "personalized": 0}))
    P, P_held = request.expert_outputs(inputs), request.expert_outputs(held)
    X, X_held = features(inputs), features(held)
    global_model = request.initial_combiner()
    global_model.load_trainable(request.msg.content["arrays"].to_torch_state_dict())
    seed = int(s[L.SEED]) * 1000 + site
    gain = validation_gain(global_model, X, P, y, s, seed)
    tuned = fine_tune(copy.deepcopy(global_model), X, P, y, s, seed)
    choice = "personalized" if gain is not None and gain > 0 else "global"
    write_atomic(request.folder / "personalized_combiner.pt", torch_bytes(tuned.trainable_state()))
    global_scores = scores(global_model, P_held, X_held, y_held)
    personal_scores = scores(tuned, P_held, X_held, y_held)
    report = {"site": site, "train_records": len(y), "held_back_records": len(y_held),
              "global": global_scores, "personalized": personal_scores,
              "validation_gain": gain, "choice": choice,
              "chosen": personal_scores if choice == "personalized" else global_scores}
    write_atomic(L.personalization_report_path(request.ledger_path), json.dumps(report, indent=1))
    return request.reply(metrics=MetricRecord({"site": site, "personalized": 1}))
