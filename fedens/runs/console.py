"""The console every part of a run prints to (rich, no highlighting, lines not wrapped)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)


def fmt(value: Any, spec: str = ".3f") -> str:
    """``value`` formatted, or ``-`` when there is none."""
    return "-" if value is None else format(value, spec)
