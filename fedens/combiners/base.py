"""Combiner registry and the fixed (untrained) combiners."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedens.registry import Registry, T

COMBINERS = Registry("combiner")


def register_combiner(name: str) -> Callable[[T], T]:
    """Class decorator: make a combiner findable by ``name`` from config."""
    return COMBINERS.register(name)


def check_expert_outputs(P: np.ndarray) -> np.ndarray:
    """Validate expert outputs of shape (n, K, C): finite, non-negative, K >= 1."""
    P = np.asarray(P)
    if P.ndim != 3 or P.shape[1] == 0:
        raise ValueError(f"expert outputs must have shape (n, K>=1, C), got {P.shape}")
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise ValueError("expert outputs must be finite, non-negative probabilities")
    return P


@register_combiner("mean")
class MeanCombiner:
    """Linear pool with uniform weights: the mean of the experts' distributions."""

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        return check_expert_outputs(P).mean(axis=1)

    def expert_calls_per_query(self, num_experts: int) -> float:
        return float(num_experts)


@register_combiner("vote")
class VoteCombiner:
    """Plurality vote: each expert votes for its argmax; returns vote shares."""

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        P = check_expert_outputs(P)
        n, K, C = P.shape
        votes = np.zeros((n, C))
        np.add.at(votes, (np.repeat(np.arange(n), K), P.argmax(axis=2).ravel()), 1.0)
        return votes / K

    def expert_calls_per_query(self, num_experts: int) -> float:
        return float(num_experts)
