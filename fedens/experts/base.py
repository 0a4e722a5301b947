"""The Expert protocol, the scikit-learn adapter and stacking of expert outputs."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_num_classes, check_probabilities
from fedens.files import write_atomic


@runtime_checkable
class Expert(Protocol):
    """Maps ``n`` inputs to probabilities of shape (n, C); rows sum to one.

    Inputs are whatever the adapter takes: an array (n, d) for tabular models,
    a sequence of :class:`~fedens.experts.MultipleChoiceQuestion` for language
    models. Metadata: ``name``, ``cost`` (> 0, per call on one input) and
    ``site``, the owning site's id, or ``None`` for a shared expert.
    """

    name: str
    cost: float
    site: str | None

    def predict_proba(self, X: Any) -> np.ndarray: ...


@register_expert("sklearn")
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
    site: str | None = None

    def __post_init__(self) -> None:
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        out = np.zeros((len(X), self.num_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = raw
        return check_probabilities(out / out.sum(axis=1, keepdims=True), self.name, len(X), self.num_classes)


def expert_outputs(experts: Sequence[Expert], X: Any) -> np.ndarray:
    """Stack every expert's probabilities on inputs ``X`` into an array of shape (n, K, C).

    Every output is validated (shape, finite, non-negative, rows sum to 1) and
    all experts must share one class count; errors name the expert.
    """
    if not experts:
        raise ValueError("experts must be a non-empty list, got an empty one")
    outputs: list[np.ndarray] = []
    for k, expert in enumerate(experts):
        name = str(getattr(expert, "name", f"#{k}"))
        P = check_probabilities(expert.predict_proba(X), name, num_rows=len(X))
        if outputs and P.shape[1] != outputs[0].shape[1]:
            first = getattr(experts[0], "name", "#0")
            raise ValueError(
                f"expert {name!r} gives {P.shape[1]} classes but expert {first!r} gives "
                f"{outputs[0].shape[1]}; experts in one network must share the label set"
            )
        outputs.append(P)
    return np.stack(outputs, axis=1).astype(np.float32)


def save_experts(experts: Sequence[Expert], path: Path) -> None:
    """Pickle a network of experts (written by this framework, read by its sites)."""
    write_atomic(path, pickle.dumps(list(experts)))


def load_experts(path: Path) -> list[Expert]:
    """Load experts saved by :func:`save_experts` (a trusted, self-written file)."""
    return pickle.loads(Path(path).read_bytes())
