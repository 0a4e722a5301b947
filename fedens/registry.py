"""Registries: the one place where config strings turn into classes.

Each extension point (experts, combiners, mechanisms) has one ``Registry``; a
new implementation is one decorated class (Opacus' ``register_grad_sampler``
habit). This module is the bottom layer: it imports nothing from fedens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """Name -> class for one kind of extension (a dict, filled by :meth:`register`).

    Examples
    --------
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square:
    ...     def __init__(self, side: float) -> None: self.side = side
    >>> SHAPES.build("square", side=2.0).side
    2.0
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class findable by ``name`` from config."""

        def wrap(cls: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} name {name!r} is already registered")
            self[name] = cls
            return cls

        return wrap

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """An instance of the class registered as ``name``, built with ``kwargs``."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {sorted(self)}")
        return self[name](**kwargs)
