"""Adapter for a plain function from inputs to probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_num_classes, check_probabilities


@register_expert("callable")
@dataclass(eq=False)
class CallableExpert:
    """A function ``fn(X) -> probabilities (n, num_classes)`` as an expert; outputs are validated.

    A lambda works but does not pickle: use a module-level function to save the expert.

    Examples
    --------
    >>> import numpy as np
    >>> e = CallableExpert(lambda X: np.full((len(X), 2), 0.5), num_classes=2, name="coin")
    >>> e.predict_proba(np.zeros((3, 1))).tolist()
    [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
    """

    fn: Callable[[Any], Any]
    num_classes: int
    name: str
    cost: float = 1.0
    site: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"expert {self.name!r}: fn must be callable, got {type(self.fn)}")
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)

    def predict_proba(self, X: Any) -> np.ndarray:
        return check_probabilities(self.fn(X), self.name, len(X), self.num_classes)
