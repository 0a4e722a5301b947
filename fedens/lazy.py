"""Packages that import a submodule only when one of its names is first used (PEP 562).

A site's ClientApp is a new process for every Flower message; a roll call that imported
the whole privacy and data stack (dp-accounting, SciPy, flwr-datasets) took seconds before
it could answer. This module is the bottom layer: it imports nothing from fedens.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``: ``exports`` maps each public name to the
    submodule that defines it; a name is imported on first use and kept in ``namespace``.

    Examples
    --------
    >>> space = {"__name__": "json"}
    >>> getattr_, _ = lazy_exports(space, {"JSONDecoder": "decoder"})
    >>> getattr_("JSONDecoder").__module__, "JSONDecoder" in space
    ('json.decoder', True)
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
