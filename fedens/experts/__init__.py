"""Experts: anything that maps inputs to a distribution over C classes."""

from fedens.experts.base import Expert, SklearnExpert, expert_outputs, load_experts, save_experts
from fedens.experts.network import EXPERT_FAMILIES, train_expert_network

__all__ = [
    "Expert",
    "SklearnExpert",
    "expert_outputs",
    "load_experts",
    "save_experts",
    "EXPERT_FAMILIES",
    "train_expert_network",
]
