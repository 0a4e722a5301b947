"""The figures runs and summaries draw: matplotlib off-screen, one size, PNG bytes for the
atomic writer."""

from __future__ import annotations

import io
from typing import Any


def new_figure() -> tuple[Any, Any]:
    """``(fig, ax)`` on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def png_bytes(fig: Any, ax: Any, xlabel: str, ylabel: str, legend: str = "best") -> bytes:
    """``fig`` labelled, with its legend and grid, as PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc=legend)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
