"""The records of a table with text columns, as experts take them: the encoded features, which
routers and trained experts read, beside the raw text, which language-model experts and the
user's own text pipelines read. A task without text columns passes its feature array alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

TEXT_PREFIX = "text."  # a text column's key in the run's .npz files: "text.<column>"


@dataclass(frozen=True, eq=False)
class TextRows:
    """Features ``X`` (n, d) float32 and text columns ``text`` (name -> (n,) strings), row-aligned;
    indexing selects the same rows of both."""

    X: np.ndarray
    text: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        for name, column in self.text.items():
            if len(column) != len(self.X):
                raise ValueError(f"text column {name!r} has {len(column)} rows, the features {len(self.X)}")

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, rows: Any) -> TextRows:
        return TextRows(self.X[rows], {name: column[rows] for name, column in self.text.items()})


ExpertInputs = Any  # an array (n, d), TextRows, or what an adapter takes (questions)


def features(inputs: ExpertInputs) -> np.ndarray:
    """The feature array of ``inputs`` (routers and trained experts take only that)."""
    return inputs.X if isinstance(inputs, TextRows) else inputs


def with_text(X: np.ndarray, text: Mapping[str, np.ndarray] | None) -> ExpertInputs:
    """``X`` alone, or ``X`` with its text columns."""
    return TextRows(X, dict(text)) if text else X


def text_arrays(inputs: ExpertInputs) -> dict[str, np.ndarray]:
    """The text columns of ``inputs`` as .npz entries (``text.<column>``: unicode arrays, which
    load without pickle); none for a feature array."""
    if not isinstance(inputs, TextRows):
        return {}
    return {TEXT_PREFIX + name: np.asarray(column, dtype=str) for name, column in inputs.text.items()}


def from_npz(data: Mapping[str, np.ndarray]) -> ExpertInputs:
    """The inputs an .npz of ``X`` and ``text.<column>`` entries holds (:func:`text_arrays`)."""
    text = {key[len(TEXT_PREFIX):]: data[key] for key in getattr(data, "files", data)
            if key.startswith(TEXT_PREFIX)}
    return with_text(data["X"], text)


def digest(hasher: Any, inputs: ExpertInputs) -> None:
    """Feed everything that determines an expert's output on ``inputs`` to ``hasher``."""
    X = features(inputs)
    hasher.update(str((X.dtype.str, X.shape)).encode())
    hasher.update(np.ascontiguousarray(X).tobytes())
    for name, column in sorted(text_arrays(inputs).items()):
        hasher.update(f"\0{name}\0{column.dtype.str}\0".encode())
        hasher.update(np.ascontiguousarray(column).tobytes())


def sorted_text(inputs: ExpertInputs) -> list[np.ndarray]:
    """The text columns of ``inputs`` in column-name order (none for a feature array)."""
    return [column for _, column in sorted(text_arrays(inputs).items())]
