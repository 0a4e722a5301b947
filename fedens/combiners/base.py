"""Combiner registry, shared input checks, and the fixed (untrained) combiners.

Every combiner takes expert outputs ``P`` of shape (n, K, C) -- n queries, K
experts, C classes -- and returns one distribution per query, shape (n, C).
Every combiner also has ``expert_calls_per_query`` and a ``save(path)`` /
``load(path)`` round trip (a small ``.npz`` file written to exactly ``path``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedens.files import npz_bytes, write_atomic
from fedens.registry import Registry, T

COMBINERS = Registry("combiner")


def register_combiner(name: str) -> Callable[[T], T]:
    """Class decorator: make a combiner findable by ``name`` from config."""
    return COMBINERS.register(name)


def check_expert_outputs(P: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Validate expert outputs: finite, non-negative, shape (n, K>=1, C>=1).

    ``P`` is either one array (n, K, C) or a list/tuple of K per-expert arrays
    (n, C), e.g. each expert's ``predict_proba``; experts whose class counts
    differ are rejected with an error naming both counts.
    """
    if isinstance(P, (list, tuple)):
        if not P:
            raise ValueError("expert outputs must hold at least one expert, got an empty list")
        per_expert = [np.asarray(p) for p in P]
        for k, p in enumerate(per_expert):
            if p.ndim != 2:
                raise ValueError(f"expert outputs: expert {k} must have shape (n, C), got {p.shape}")
            if p.shape != per_expert[0].shape:
                raise ValueError(
                    f"expert outputs: expert {k} has shape {p.shape} (C={p.shape[1]}) but expert 0 "
                    f"has {per_expert[0].shape} (C={per_expert[0].shape[1]}); experts must share "
                    "the query count and the class count"
                )
        P = np.stack(per_expert, axis=1)
    P = np.asarray(P)
    if P.ndim != 3 or P.shape[1] == 0 or P.shape[2] == 0:
        raise ValueError(f"expert outputs must have shape (n, K>=1, C>=1), got {P.shape}")
    if not np.issubdtype(P.dtype, np.number) or np.issubdtype(P.dtype, np.complexfloating):
        raise ValueError(f"expert outputs must be real numbers, got dtype {P.dtype}")
    finite = np.isfinite(P)
    if not finite.all():
        i, k, c = np.argwhere(~finite)[0]
        raise ValueError(
            f"expert outputs must be finite, got {P[i, k, c]} at [query {i}, expert {k}, class {c}]"
        )
    if (P < 0).any():
        i, k, c = np.argwhere(P < 0)[0]
        raise ValueError(
            f"expert outputs must be non-negative probabilities, got {P[i, k, c]} "
            f"at [query {i}, expert {k}, class {c}]"
        )
    return P


def check_num_experts(expected: int | None, P: np.ndarray, who: str) -> None:
    """Raise if a fitted combiner over ``expected`` experts is given a different K."""
    if expected is not None and P.shape[1] != expected:
        raise ValueError(f"{who} was built for {expected} experts, got outputs of {P.shape[1]} experts")


def check_labels(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Validate labels ``y`` (n,) as integers in [0, C) matching the n of ``P``."""
    y = np.asarray(y)
    if y.shape != (P.shape[0],):
        raise ValueError(f"labels must have shape ({P.shape[0]},) to match the expert outputs, got {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= P.shape[2]):
        bad = y[(y < 0) | (y >= P.shape[2])] if np.issubdtype(y.dtype, np.number) else y
        raise ValueError(
            f"labels must be integers in [0, {P.shape[2]}), got {bad[:3].tolist()} (dtype {y.dtype})"
        )
    return y.astype(np.int64)


def accuracy_and_nll(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, NLL with probabilities clipped at 1e-12) of distributions ``proba`` (n, C)."""
    nll = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean()
    return float((proba.argmax(1) == y).mean()), float(nll)


def check_positive_int(value: int, name: str) -> int:
    """``value`` as an int if it is an integer >= 1, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def save_arrays(path: str | Path, name: str, **arrays: Any) -> None:
    """Write ``arrays`` and the combiner's registry ``name`` to exactly ``path`` (npz format)."""
    write_atomic(path, npz_bytes(combiner=np.array(name), **arrays))


def load_arrays(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """Read arrays written by :func:`save_arrays`; raises if the file holds another combiner."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    found = str(arrays.pop("combiner", "<none>"))
    if found != name:
        raise ValueError(f"{path} holds a {found!r} combiner, not {name!r}")
    return arrays


@register_combiner("mean")
class MeanCombiner:
    """Linear pool with uniform weights: the mean of the experts' distributions.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[0.9, 0.1], [0.5, 0.5]]])
    >>> MeanCombiner().combine(P)
    array([[0.7, 0.3]])
    """

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """Combined distribution (n, C); ``X`` is ignored."""
        return check_expert_outputs(P).astype(np.float64).mean(axis=1)

    def expert_calls_per_query(self, num_experts: int) -> float:
        """Every expert is called for every query."""
        return float(check_positive_int(num_experts, "num_experts"))

    def save(self, path: str | Path) -> None:
        """Write this (parameter-free) combiner to ``path``."""
        save_arrays(path, "mean")

    @classmethod
    def load(cls, path: str | Path) -> MeanCombiner:
        """Read a combiner written by :meth:`save`."""
        load_arrays(path, "mean")
        return cls()


@register_combiner("vote")
class VoteCombiner:
    """Plurality vote: each expert votes for its argmax; returns vote shares.

    Ties inside one expert go to the lowest class index (``argmax``).

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]])
    >>> VoteCombiner().combine(P)
    array([[0.5, 0.5]])
    """

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """Vote shares (n, C); ``X`` is ignored."""
        P = check_expert_outputs(P)
        n, K, C = P.shape
        votes = np.zeros((n, C))
        np.add.at(votes, (np.repeat(np.arange(n), K), P.argmax(axis=2).ravel()), 1.0)
        return votes / K

    def expert_calls_per_query(self, num_experts: int) -> float:
        """Every expert is called for every query."""
        return float(check_positive_int(num_experts, "num_experts"))

    def save(self, path: str | Path) -> None:
        """Write this (parameter-free) combiner to ``path``."""
        save_arrays(path, "vote")

    @classmethod
    def load(cls, path: str | Path) -> VoteCombiner:
        """Read a combiner written by :meth:`save`."""
        load_arrays(path, "vote")
        return cls()
