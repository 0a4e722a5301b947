"""The Expert protocol and the scikit-learn adapter."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Expert(Protocol):
    """Maps inputs ``X`` (n, d) to probabilities (n, C); rows sum to one."""

    name: str
    cost: float

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class SklearnExpert:
    """A fitted scikit-learn classifier as an expert over ``num_classes`` classes.

    Columns are aligned to the task's label set: classes the estimator never saw
    get probability zero.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.naive_bayes import GaussianNB
    >>> X = np.eye(3, dtype=np.float32); y = np.array([0, 2, 2])
    >>> SklearnExpert(GaussianNB().fit(X, y), num_classes=4, name="nb").predict_proba(X).shape
    (3, 4)
    """

    estimator: Any
    num_classes: int
    name: str
    family: str = "sklearn"
    cost: float = 1.0

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        out = np.zeros((len(X), self.num_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = raw
        return out / out.sum(axis=1, keepdims=True)


def expert_outputs(experts: Sequence[Expert], X: np.ndarray) -> np.ndarray:
    """Stack every expert's probabilities into an array of shape (n, K, C)."""
    if not experts:
        raise ValueError("experts must be a non-empty list, got an empty one")
    return np.stack([e.predict_proba(X) for e in experts], axis=1).astype(np.float32)


def save_experts(experts: Sequence[Expert], path: Path) -> None:
    """Pickle a network of experts (written by this framework, read by its sites)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(list(experts)))
    tmp.replace(path)


def load_experts(path: Path) -> list[Expert]:
    """Load experts saved by :func:`save_experts` (a trusted, self-written file)."""
    return pickle.loads(Path(path).read_bytes())
