"""Combiners: rules that turn expert outputs (n, K, C) into one distribution (n, C)."""

from fedens.combiners.base import COMBINERS, MeanCombiner, VoteCombiner, register_combiner
from fedens.combiners.cascade import (
    CascadeCombiner,
    choose_grid,
    confidence_histograms,
    thresholds_from_histograms,
)
from fedens.combiners.federated import FederatedForm
from fedens.combiners.gated import (
    GatedEnsemble,
    mixture_log_likelihood,
    pooled_score_cross_entropy,
    pretrain_router,
)
from fedens.combiners.log_linear import LogLinearModule, LogLinearPool
from fedens.combiners.stacking import StackingCombiner, StackingModule
from fedens.combiners.state import (
    combiner_from_state,
    combiner_state,
    federated_form,
    federated_forms,
    load_combiner,
)
from fedens.combiners.trainable import TrainableCombiner
from fedens.combiners.training import train_combiner, train_gated_ensemble

__all__ = [
    "COMBINERS",
    "MeanCombiner",
    "VoteCombiner",
    "register_combiner",
    "GatedEnsemble",
    "mixture_log_likelihood",
    "pooled_score_cross_entropy",
    "train_combiner",
    "train_gated_ensemble",
    "pretrain_router",
    "LogLinearPool",
    "LogLinearModule",
    "StackingCombiner",
    "StackingModule",
    "CascadeCombiner",
    "choose_grid",
    "confidence_histograms",
    "thresholds_from_histograms",
    "TrainableCombiner",
    "FederatedForm",
    "federated_form",
    "federated_forms",
    "combiner_state",
    "combiner_from_state",
    "load_combiner",
]
