"""Mechanism infrastructure: registry, ``Release``, the ``Mechanism`` base, checks, calibration.

The mechanisms themselves, and the privacy model they share, are in
:mod:`fedens.privacy.mechanisms`.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

from fedens.registry import Registry

MECHANISMS = Registry("mechanism")
M = TypeVar("M", bound="type[Mechanism]")
SQRT2 = math.sqrt(2.0)


def register_mechanism(name: str) -> Callable[[M], M]:
    """Class decorator: make a mechanism findable by ``name`` from config."""

    def wrap(cls: M) -> M:
        cls.name = name
        return MECHANISMS.register(name)(cls)

    return wrap


def make_mechanism(name: str, **params: Any) -> Mechanism:
    """The registered mechanism ``name`` built with keyword ``params``."""
    return MECHANISMS.build(name, **params)


@dataclass(frozen=True, eq=False)
class Release:
    """What one call of :meth:`Mechanism.release` publishes (arrays are read-only).

    Attributes
    ----------
    mechanism, params : the releasing mechanism's name and parameters.
    labels : (n,) int, the released label, -1 where the query was not answered.
    answered : (n,) bool.
    noisy_aggregate : (n, C) noisy votes / noisy sum (NaN rows where not answered);
        covered by the same events as the labels, which are its post-processing.
    distribution : (n, C) the noisy sum projected to the simplex (pool only).
    noisy_check : (n,) noisy max vote of Confident-GNMax's threshold check.
    """

    mechanism: str
    params: Mapping[str, Any]
    labels: np.ndarray
    answered: np.ndarray
    noisy_aggregate: np.ndarray | None = None
    distribution: np.ndarray | None = None
    noisy_check: np.ndarray | None = None

    def __post_init__(self) -> None:
        for value in (self.labels, self.answered, self.noisy_aggregate,
                      self.distribution, self.noisy_check):
            if value is not None:
                value.flags.writeable = False

    @property
    def num_answered(self) -> int:
        return int(self.answered.sum())


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def describe_first(a: np.ndarray, bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{a[idx]} at index {idx}"


def check_array(x: Any, name: str, shape: str, ndim: int) -> np.ndarray:
    """Non-empty, finite, non-negative float array with ``ndim`` dimensions."""
    raw = np.asarray(x)
    a = np.asarray(raw, dtype=float)
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"{name} must be a non-empty array of shape {shape}, got shape {a.shape}")
    if np.issubdtype(raw.dtype, np.integer):  # finite by type: one pass over the counts
        if raw.min() < 0:
            raise ValueError(f"{name} must be non-negative, got {describe_first(a, a < 0)}")
        return a
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {describe_first(a, ~np.isfinite(a))}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative, got {describe_first(a, a < 0)}")
    return a


def check_votes(votes: Any) -> np.ndarray:
    v = check_array(votes, "votes", "(n, C)", 2)
    integral = np.issubdtype(np.asarray(votes).dtype, np.integer)
    # fractional votes are risky but legal: the sensitivity assumes one vote per teacher
    if not integral and np.any(v != np.round(v)):
        warnings.warn(f"votes are not integer counts (e.g. {describe_first(v, v != np.round(v))}); "
                      "the stated sensitivity assumes each teacher adds one vote", stacklevel=3)
    return v


def check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def project_to_simplex(x: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (sort-based)."""
    n, C = x.shape
    u = -np.sort(-x, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    positive = u - css / np.arange(1, C + 1) > 0  # column 0 is always True
    rho = C - 1 - np.argmax(positive[:, ::-1], axis=1)
    tau = css[np.arange(n), rho] / (rho + 1)
    return np.maximum(x - tau[:, None], 0.0)


def check_budget(target_epsilon: float, delta: float, num_queries: int) -> int:
    """Validate a calibration target; return ``num_queries`` as an int."""
    check_positive("target_epsilon", target_epsilon)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if isinstance(num_queries, bool) or not isinstance(num_queries, (int, np.integer)) \
            or num_queries < 1:
        raise ValueError(f"num_queries must be an integer >= 1, got {num_queries!r}")
    return int(num_queries)


def calibrate_noise(make: Callable[[float], Mechanism], target_epsilon: float, delta: float,
                    num_queries: int, guess: float) -> float:
    """Least noise p (within 1e-7 * guess) with epsilon of
    ``make(p).worst_case_events(num_queries)`` <= target, by dp-accounting's
    ``calibrate_dp_mechanism`` (which never returns a parameter over the target)."""
    n = check_budget(target_epsilon, delta, num_queries)
    try:
        return float(dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda p: dp_accounting.ComposedDpEvent(make(p).worst_case_events(n)),
            target_epsilon, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3 * guess, guess),
            tol=1e-7 * guess,
        ))
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError as err:
        raise ValueError(f"cannot calibrate to target_epsilon={target_epsilon!r} at "
                         f"delta={delta!r} over {n} queries") from err


class Mechanism(ABC):
    """A DP release of combined teacher/expert outputs, one query per input row."""

    name: ClassVar[str] = ""

    @abstractmethod
    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        """Answer every query (row) of ``inputs`` with noise from ``rng``."""

    @abstractmethod
    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        """What releasing ``num_queries`` answers can spend at most (data-independent)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable (for ledgers and releases)."""

    def pate_analysis_params(self) -> dict[str, float] | None:
        """Keyword arguments of :func:`fedens.privacy.analyze_pate` (the data-dependent
        analysis of Papernot et al. 2018) for this mechanism, or None where it has none."""
        return None

    def events(self, release: Release) -> list[dp_accounting.DpEvent]:
        """Exactly what ``release`` spent (every query answered unless overridden)."""
        return self.worst_case_events(self._own(release).labels.shape[0])

    def event(self, release: Release) -> dp_accounting.DpEvent:
        """:meth:`events` as one ``ComposedDpEvent``, for ``PrivacyLedger.charge``."""
        return dp_accounting.ComposedDpEvent(self.events(release))

    def _own(self, release: Release) -> Release:
        if release.mechanism != self.name or dict(release.params) != self.params():
            raise ValueError(f"release of {release.mechanism} {dict(release.params)} was not "
                             f"made by this {self.name} {self.params()}")
        return release

    def _release(self, **arrays: Any) -> Release:
        return Release(self.name, MappingProxyType(self.params()), **arrays)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def self_composed(event: dp_accounting.DpEvent, count: int) -> list[dp_accounting.DpEvent]:
    return [dp_accounting.SelfComposedDpEvent(event, int(count))] if count > 0 else []
