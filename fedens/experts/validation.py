"""Checks shared by every adapter; each error is one line naming the expert and the value."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: How far a row of probabilities may sum from 1 (float32 softmax outputs are well inside it).
ROW_SUM_TOLERANCE = 1e-4


def check_positive(value: Any, key: str, name: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    try:
        number = float(value) if not isinstance(value, (bool, str)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"expert {name!r}: {key} must be a finite number > 0, got {value!r}")
    return number


def check_cost(cost: Any, name: str) -> float:
    """Return the cost per call as a float, or raise if it is not a finite number > 0."""
    return check_positive(cost, "cost", name)


def check_int(value: Any, key: str, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"expert {name!r}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_num_classes(num_classes: Any, name: str) -> int:
    """Return ``num_classes`` as an int, or raise if it is not an integer >= 1."""
    return check_int(num_classes, "num_classes", name)


def check_probabilities(
    P: Any, name: str, num_rows: int | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Validate one expert's output: shape (n, C), finite, non-negative, rows summing to 1.

    Returns the output as a float64 array with its values unchanged.

    Examples
    --------
    >>> check_probabilities([[0.25, 0.75]], "coin").dtype
    dtype('float64')
    """
    P = np.asarray(P, dtype=np.float64)
    want = f"({num_rows if num_rows is not None else 'n'}, {num_classes if num_classes is not None else 'C'})"
    if (
        P.ndim != 2
        or P.shape[1] == 0
        or (num_rows is not None and P.shape[0] != num_rows)
        or (num_classes is not None and P.shape[1] != num_classes)
    ):
        raise ValueError(f"expert {name!r} returned probabilities of shape {P.shape}, expected {want}")
    bad = ~np.isfinite(P)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"expert {name!r} returned a non-finite probability {P[i, j]} at row {i}, column {j}"
        )
    if (P < 0).any():
        i, j = np.argwhere(P < 0)[0]
        raise ValueError(
            f"expert {name!r} returned a negative probability {P[i, j]:.6g} at row {i}, column {j}"
        )
    sums = P.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"expert {name!r}: probabilities in row {i} sum to {sums[i]:.6g}, not 1 "
            f"(tolerance {ROW_SUM_TOLERANCE:g})"
        )
    return P


def task_class_columns(labels: Any, label_names: tuple[str, ...] | None, num_classes: int,
                       name: str) -> np.ndarray:
    """The task's class number of each label an expert answers with: labels are the task's label
    names when it has them (a table's), else class numbers 0..num_classes-1. ValueError names a
    label outside the task's set."""
    if label_names is None:
        numbers = [v.item() if isinstance(v, np.generic) else v for v in labels]
        if bad := [v for v in numbers if isinstance(v, bool) or not isinstance(v, (int, float))
                   or not float(v).is_integer() or not 0 <= v < num_classes]:
            raise ValueError(f"expert {name!r} answers label {bad[0]!r}: expected class numbers 0 to "
                             f"{num_classes - 1}")
        return np.asarray(numbers, dtype=np.int64)
    names = [str(v.item() if isinstance(v, np.generic) else v) for v in labels]
    if unknown := [v for v in names if v not in label_names]:
        raise ValueError(f"expert {name!r} answers label {unknown[0]!r}: expected labels of the task "
                         f"{list(label_names)}")
    return np.array([label_names.index(v) for v in names], dtype=np.int64)
