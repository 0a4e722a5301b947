"""Combiners: rules that turn expert outputs (n, K, C) into one distribution (n, C)."""

from fedens.combiners.base import COMBINERS, MeanCombiner, VoteCombiner, register_combiner
from fedens.combiners.cascade import CascadeCombiner, choose_grid
from fedens.combiners.gated import GatedEnsemble, mixture_log_likelihood, pooled_score_cross_entropy
from fedens.combiners.log_linear import LogLinearPool
from fedens.combiners.stacking import StackingCombiner
from fedens.combiners.training import pretrain_router, train_gated_ensemble

__all__ = [
    "COMBINERS",
    "MeanCombiner",
    "VoteCombiner",
    "register_combiner",
    "GatedEnsemble",
    "mixture_log_likelihood",
    "pooled_score_cross_entropy",
    "train_gated_ensemble",
    "pretrain_router",
    "LogLinearPool",
    "StackingCombiner",
    "CascadeCombiner",
    "choose_grid",
]
