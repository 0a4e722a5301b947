"""Expert registry: every adapter is one decorated class, found by a name from config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedens.registry import Registry, T

EXPERTS = Registry("expert adapter")


def register_expert(name: str) -> Callable[[T], T]:
    """Class decorator: make an expert adapter findable by ``name`` from config."""
    return EXPERTS.register(name)


def make_expert(adapter: str, /, **kwargs: Any) -> Any:
    """Build the expert adapter registered as ``adapter`` with keyword arguments ``kwargs``.

    ``adapter`` is positional-only, so ``name=`` in ``kwargs`` is the expert's own name.

    Examples
    --------
    >>> import numpy as np
    >>> e = make_expert("callable", fn=lambda X: np.full((len(X), 2), 0.5), num_classes=2, name="coin")
    >>> e.predict_proba(np.zeros((3, 1))).shape
    (3, 2)
    """
    return EXPERTS.build(adapter, **kwargs)
