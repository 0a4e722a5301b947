"""Offline datasets, split into public / private / test parts.

Nothing here downloads: every loader reads data that an installed package ships.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
from sklearn.model_selection import train_test_split

from fedens.data.rows import ExpertInputs, with_text


@dataclass(frozen=True)
class Split:
    """Features ``X`` (n, d) float32 and integer labels ``y`` (n,); for a table with text columns
    also the raw text (column -> (n,) strings), which language-model experts read."""

    X: np.ndarray
    y: np.ndarray
    text: Mapping[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self) -> ExpertInputs:
        """What the experts take: ``X``, or ``X`` with the text columns (:class:`TextRows`)."""
        return with_text(self.X, self.text)


@dataclass(frozen=True)
class TaskData:
    """The three parts of a task.

    ``public`` trains the shared experts, ``private`` is divided among the
    sites, ``test`` is held by the coordinator for evaluation only.
    """

    name: str
    num_classes: int
    public: Split
    private: Split
    test: Split


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


DATASETS = {"digits": _load_digits}


@dataclass(frozen=True)
class SplitSizes:
    """How many records :func:`load_task` puts in each part, and the task's classes."""

    records: int
    classes: int
    public: int
    private: int
    test: int


@cache
def _records_and_classes(name: str) -> tuple[int, int]:
    _, y = DATASETS[name]()
    return len(y), int(y.max()) + 1


def split_sizes(name: str, public_fraction: float, test_fraction: float) -> SplitSizes:
    """The sizes of :func:`load_task`'s parts, without splitting: the test part rounds up, the
    public part (its share of the rest) rounds down, as scikit-learn rounds.

    Examples
    --------
    >>> split_sizes("digits", public_fraction=0.3, test_fraction=0.25)
    SplitSizes(records=1797, classes=10, public=538, private=809, test=450)
    """
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose one of {sorted(DATASETS)}")
    records, classes = _records_and_classes(name)
    test = math.ceil(test_fraction * records)
    public = math.floor(public_fraction / (1.0 - test_fraction) * (records - test))
    return SplitSizes(records, classes, public, records - test - public, test)


def load_task(
    name: str, public_fraction: float, test_fraction: float, seed: int
) -> TaskData:
    """Load dataset ``name`` and split it (stratified) into public/private/test, of the sizes
    :func:`split_sizes` gives.

    Examples
    --------
    >>> task = load_task("digits", public_fraction=0.3, test_fraction=0.25, seed=0)
    >>> len(task.public) + len(task.private) + len(task.test)
    1797
    """
    sizes = split_sizes(name, public_fraction, test_fraction)
    X, y = DATASETS[name]()
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=sizes.test, stratify=y, random_state=seed
    )
    X_pub, X_priv, y_pub, y_priv = train_test_split(
        X_rest, y_rest, train_size=sizes.public, stratify=y_rest, random_state=seed
    )
    return TaskData(
        name=name,
        num_classes=sizes.classes,
        public=Split(X_pub, y_pub),
        private=Split(X_priv, y_priv),
        test=Split(X_test, y_test),
    )
