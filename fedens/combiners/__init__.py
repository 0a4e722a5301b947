"""Combiners: rules that turn expert outputs (n, K, C) into one distribution (n, C)."""

from fedens.combiners.base import COMBINERS, MeanCombiner, VoteCombiner, register_combiner
from fedens.combiners.cascade import CascadeCombiner
from fedens.combiners.gated import GatedEnsemble, mixture_log_likelihood
from fedens.combiners.log_linear import LogLinearPool
from fedens.combiners.stacking import StackingCombiner
from fedens.combiners.training import train_gated_ensemble

__all__ = [
    "COMBINERS",
    "MeanCombiner",
    "VoteCombiner",
    "register_combiner",
    "GatedEnsemble",
    "mixture_log_likelihood",
    "train_gated_ensemble",
    "LogLinearPool",
    "StackingCombiner",
    "CascadeCombiner",
]
