"""Cascade: call experts cheapest first, stop at the first confident one."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedens.combiners.base import (
    check_expert_outputs,
    check_labels,
    check_num_experts,
    load_arrays,
    register_combiner,
    save_arrays,
)

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)


def check_costs(costs: Sequence[float]) -> np.ndarray:
    """Per-expert costs as a float vector; every cost must be finite and > 0."""
    c = np.asarray(costs, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"costs must be a non-empty vector (K,), got {costs!r}")
    bad = ~(np.isfinite(c) & (c > 0))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"costs must be finite and > 0, got cost {c[k]} for expert {k}")
    return c


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is in [0, 1], else a ValueError naming it."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


@register_combiner("cascade")
class CascadeCombiner:
    """Cheapest expert first; escalate while its top probability is under ``threshold``.

    Experts are called in order of cost (cheapest first, ties by index); a query
    stops at the first expert whose max probability is >= ``threshold`` and
    gets that expert's distribution. The last (most expensive) expert always
    answers. One threshold is shared by all experts; :meth:`calibrate` picks it
    on validation data.

    Unlike the other combiners, :meth:`expert_calls_per_query` and
    :meth:`cost_per_query` take the expert outputs ``P`` rather than ``K``: how
    many experts a cascade calls depends on the data. (For the measurement the
    outputs of all experts are computed up front; a deployment calls lazily.)

    Parameters
    ----------
    costs : sequence of float (K,), optional
        Cost per call of each expert, all > 0. ``None``: all 1.0 (index order).
    threshold : float
        Confidence needed to stop, in [0, 1]. 0 always stops at the first
        expert; 1 stops only at an expert that is certain.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[0.6, 0.4], [0.9, 0.1]], [[0.95, 0.05], [0.2, 0.8]]])
    >>> c = CascadeCombiner(costs=[5.0, 1.0], threshold=0.85)  # expert 1 is cheaper
    >>> c.combine(P)
    array([[0.9 , 0.1 ],
           [0.95, 0.05]])
    >>> c.expert_calls_per_query(P), c.cost_per_query(P)
    (1.5, 3.5)
    """

    def __init__(self, costs: Sequence[float] | None = None, threshold: float = 1.0) -> None:
        self.costs: np.ndarray | None = None if costs is None else check_costs(costs)
        self.threshold = check_threshold(threshold)

    @property
    def order(self) -> np.ndarray | None:
        """Expert indices cheapest first (ties by index), or ``None`` without costs."""
        return None if self.costs is None else np.argsort(self.costs, kind="stable")

    def _plan(self, P: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, position in order of the answering expert per query, costs)."""
        check_num_experts(None if self.costs is None else len(self.costs), P, "CascadeCombiner")
        K = P.shape[1]
        costs = np.ones(K) if self.costs is None else self.costs
        order = np.argsort(costs, kind="stable")
        confident = P[:, order].max(axis=2) >= threshold
        confident[:, -1] = True
        return order, confident.argmax(axis=1), costs

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """The answering expert's distribution per query (n, C); ``X`` is ignored."""
        P = check_expert_outputs(P)
        order, stop, _ = self._plan(P, self.threshold)
        return P[np.arange(len(P)), order[stop]].astype(np.float64)

    def _nonempty(self, P: np.ndarray) -> np.ndarray:
        P = check_expert_outputs(P)
        if len(P) == 0:
            raise ValueError("a cascade's calls per query need at least one query, got n=0")
        return P

    def expert_calls_per_query(self, P: np.ndarray) -> float:
        """Mean number of experts called on the queries ``P`` (n, K, C)."""
        P = self._nonempty(P)
        _, stop, _ = self._plan(P, self.threshold)
        return float(np.mean(stop + 1))

    def cost_per_query(self, P: np.ndarray) -> float:
        """Mean total cost of the experts called on the queries ``P``."""
        P = self._nonempty(P)
        order, stop, costs = self._plan(P, self.threshold)
        return float(np.mean(np.cumsum(costs[order])[stop]))

    def calibrate(
        self,
        P_val: np.ndarray,
        y_val: np.ndarray,
        costs: Sequence[float] | None = None,
        target_accuracy: float | None = None,
        max_cost: float | None = None,
        grid: Sequence[float] | None = None,
    ) -> CascadeCombiner:
        """Pick the shared threshold from ``grid`` (default 0, 0.01, ..., 1) on validation data.

        Give exactly one of ``target_accuracy`` (the cheapest threshold whose
        validation accuracy is >= it; ties to the more accurate, then the lower
        threshold) or ``max_cost`` (the most accurate threshold whose mean cost
        per query is <= it; ties to the cheaper, then the lower). If no threshold
        reaches ``target_accuracy`` this warns and picks the most accurate one.
        ``costs`` replaces the stored costs when given. Returns ``self``.
        """
        if (target_accuracy is None) == (max_cost is None):
            raise ValueError(
                f"give exactly one of target_accuracy and max_cost, got {target_accuracy!r} and {max_cost!r}"
            )
        if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in [0, 1], got {target_accuracy!r}")
        if max_cost is not None and not (np.isfinite(max_cost) and max_cost > 0):
            raise ValueError(f"max_cost must be finite and > 0, got {max_cost!r}")
        thresholds = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64)
        if thresholds.ndim != 1 or thresholds.size == 0:
            raise ValueError(f"grid must be a non-empty vector of thresholds, got {grid!r}")
        for t in thresholds:
            check_threshold(float(t))
        if costs is not None:
            self.costs = check_costs(costs)
        P = self._nonempty(P_val)
        y = check_labels(y_val, P)
        acc, cost = np.empty(len(thresholds)), np.empty(len(thresholds))
        for i, t in enumerate(thresholds):
            order, stop, c = self._plan(P, t)
            acc[i] = np.mean(P[np.arange(len(P)), order[stop]].argmax(axis=1) == y)
            cost[i] = np.mean(np.cumsum(c[order])[stop])
        if target_accuracy is not None:
            ok = acc >= target_accuracy
            if not ok.any():
                warnings.warn(
                    f"no threshold reaches target_accuracy={target_accuracy} on validation data "
                    f"(best {acc.max():.4f}); using the most accurate threshold",
                    stacklevel=2,
                )
                ok = acc == acc.max()
            key = np.lexsort((thresholds, -acc, cost))  # by cost, then -acc, then threshold
        else:
            ok = cost <= max_cost
            if not ok.any():
                raise ValueError(
                    f"max_cost={max_cost} is below the cheapest cascade's cost per query {cost.min():.4f}"
                )
            key = np.lexsort((thresholds, cost, -acc))
        best = next(i for i in key if ok[i])
        self.threshold = float(thresholds[best])
        return self

    def save(self, path: str | Path) -> None:
        """Write costs (hence the order) and threshold to ``path`` (npz)."""
        costs = np.zeros(0) if self.costs is None else self.costs
        order = np.zeros(0, dtype=np.int64) if self.order is None else self.order
        save_arrays(path, "cascade", costs=costs, order=order, threshold=np.array(self.threshold))

    @classmethod
    def load(cls, path: str | Path) -> CascadeCombiner:
        """Read a cascade written by :meth:`save`."""
        a = load_arrays(path, "cascade")
        return cls(a["costs"] if a["costs"].size else None, float(a["threshold"]))
