"""Expert registry: every adapter is one decorated class, found by a name from config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

EXPERTS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_expert(name: str) -> Callable[[T], T]:
    """Class decorator: make an expert adapter findable by ``name`` from config.

    Examples
    --------
    >>> @register_expert("always_first")  # doctest: +SKIP
    ... class AlwaysFirst: ...
    """

    def wrap(cls: T) -> T:
        if name in EXPERTS:
            raise ValueError(f"expert adapter name {name!r} is already registered")
        EXPERTS[name] = cls
        return cls

    return wrap


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
    if adapter not in EXPERTS:
        raise ValueError(f"unknown expert adapter {adapter!r}; choose from {sorted(EXPERTS)}")
    return EXPERTS[adapter](**kwargs)
