"""What a site's records must look like for the task: checked before the site spends anything.

A site reads its own data file. Before it charges its ledger it checks the records against the
task's schema (feature width, finite numeric features, integer labels in the task's label set);
a mismatch is one line naming the file's column and what was expected, which the site sends to
the coordinator as its failure for the round (nothing charged, nothing released).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataSchemaError(ValueError):
    """A site's records do not fit the task; the message names the column and what was expected."""


@dataclass(frozen=True)
class TaskSchema:
    """The shape of the task's records: ``num_features`` feature columns, labels ``0..num_classes-1``.

    Examples
    --------
    >>> schema = TaskSchema(num_features=2, num_classes=3)
    >>> schema.check(np.zeros((4, 2)), np.array([0, 1, 2, 1]), where="site 0: data.npz")
    >>> try:
    ...     schema.check(np.zeros((2, 2)), np.array([0, 3]), where="site 0")
    ... except DataSchemaError as error:
    ...     print(error)
    site 0 column 'y' has label 3 (row 1): expected integer labels in [0, 2]
    """

    num_features: int
    num_classes: int

    def check(self, X: np.ndarray, y: np.ndarray, *, where: str) -> None:
        """Raise :class:`DataSchemaError` (one line, starting with ``where``) unless the records fit."""
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise DataSchemaError(f"{where} column 'X' has shape {X.shape}: expected (records, "
                                  f"{self.num_features}) features")
        if y.ndim != 1 or len(y) != len(X):
            raise DataSchemaError(f"{where} column 'y' has shape {y.shape}: expected ({len(X)},), one "
                                  "label per record")
        if len(y) == 0:
            raise DataSchemaError(f"{where} has no records: expected at least 1")
        if not (np.issubdtype(X.dtype, np.number) and not np.issubdtype(X.dtype, np.complexfloating)):
            raise DataSchemaError(f"{where} column 'X' has dtype {X.dtype}: expected real numbers")
        if not np.isfinite(X).all():
            row = int(np.argwhere(~np.isfinite(X))[0][0])
            raise DataSchemaError(f"{where} column 'X' has a non-finite value (row {row}): expected "
                                  "finite numbers")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise DataSchemaError(f"{where} column 'y' has dtype {y.dtype}: expected integer labels in "
                                  f"[0, {self.num_classes - 1}]")
        bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataSchemaError(f"{where} column 'y' has label {y[row].item()!r} (row {row}): "
                                  f"expected integer labels in [0, {self.num_classes - 1}]")
