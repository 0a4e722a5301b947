"""Cascade: call experts cheapest first, stop at the first confident one."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedens.combiners.base import (
    accuracy_and_nll,
    check_expert_outputs,
    check_labels,
    check_num_experts,
    load_arrays,
    register_combiner,
    save_arrays,
)
from fedens.combiners.federated import FederatedForm, SiteRecords
from fedens.config_schema import Rule, Schema, is_num, one_of

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)
#: threshold grids for :func:`choose_grid`: finer grids fit validation data more closely (and overfit)
GRIDS = {
    "fine": DEFAULT_GRID,
    "coarse": np.array([0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]),
    "high": np.array([0.9, 0.99, 0.999, 0.9999]),
}


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


def check_thresholds(threshold: float | Sequence[float]) -> float | np.ndarray:
    """A shared threshold in [0, 1], or per-expert thresholds (K,) each in [0, 1] or ``inf`` (skipped)."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return check_threshold(float(t))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"threshold must be a number or a non-empty vector (K,), got {threshold!r}")
    for k, v in enumerate(t):
        if not (0.0 <= v <= 1.0 or v == np.inf):
            raise ValueError(f"threshold of expert {k} must be in [0, 1] or inf (skip), got {v!r}")
    if np.isinf(t).all():
        raise ValueError(f"at least one expert's threshold must be finite (not skipped), got {threshold!r}")
    return t


def _chain(costs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Experts called, cheapest first (ties by index), skipping those whose threshold is inf."""
    order = np.argsort(costs, kind="stable")
    return order[np.isfinite(thresholds[order])]


def _stage_outputs(P: np.ndarray, chain: np.ndarray, pooled: bool) -> np.ndarray:
    """What each chain position would answer (n, L, C): that expert's distribution or, pooled,
    the mean of every expert called so far; the last expert (the most accurate one called)
    answers alone either way, since averaging weaker experts into it dilutes it."""
    Q = P[:, chain].astype(np.float64)
    if pooled and len(chain) > 1:
        last = Q[:, -1].copy()
        Q = np.cumsum(Q, axis=1) / np.arange(1, len(chain) + 1)[None, :, None]
        Q[:, -1] = last
    return Q


def _stops(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per query, the first chain position whose confidence (n, L) reaches its threshold (L,)."""
    confident = confidence >= thresholds
    confident[:, -1] = True
    return confident.argmax(axis=1)


def calibrate_per_expert(
    P: np.ndarray, y: np.ndarray, costs: np.ndarray, target_accuracy: float, grid: np.ndarray,
    pooled: bool = False,
) -> tuple[np.ndarray, float, float]:
    """Per-expert thresholds: the cheapest cascade found whose accuracy on (P, y) is >= the target.

    Starts from the most accurate expert alone (the *anchor*; ties to the
    cheaper) and greedily changes one cheaper expert's threshold at a time
    (to a grid value, or ``inf``: skip it), taking the change that gives the
    lowest cost among those reaching the target (while below the target: the
    highest accuracy), until no change improves. ``pooled``: stages answer with the
    mean of the experts called so far (:class:`CascadeCombiner`). Returns
    (thresholds, accuracy, cost per query) on (P, y).
    """
    n, K, _ = P.shape
    confidence, correct = P.max(axis=2), P.argmax(axis=2) == y[:, None]  # per expert
    rows = np.arange(n)

    def evaluate(t: np.ndarray) -> tuple[float, float]:
        chain = _chain(costs, t)
        if pooled:  # a stage's answer depends on the chain before it
            Q = _stage_outputs(P, chain, pooled)
            stop = _stops(Q.max(axis=2), t[chain])
            right = Q[rows, stop].argmax(axis=1) == y
        else:  # each stage is one expert: slice what was computed once
            stop = _stops(confidence[:, chain], t[chain])
            right = correct[rows, chain[stop]]
        return float(right.mean()), float(np.cumsum(costs[chain])[stop].mean())

    def score(acc: float, cost: float) -> tuple[int, float, float]:
        return (0, cost, -acc) if acc >= target_accuracy else (1, -acc, cost)

    order = np.argsort(costs, kind="stable")
    accs = correct.mean(axis=0)
    anchor = int(min(range(K), key=lambda k: (-accs[k], costs[k], k)))
    cheaper = order[: int(np.flatnonzero(order == anchor)[0])]
    t = np.full(K, np.inf)
    t[anchor] = 0.0  # the anchor is the last expert called: it always answers
    best = evaluate(t)
    values = np.append(np.unique(grid), np.inf)
    while True:
        moves = []
        for k in cheaper:
            for v in values:
                if v != t[k]:
                    trial = t.copy()
                    trial[k] = v
                    moves.append((score(*evaluate(trial)), int(k), float(v)))
        if not moves:
            break
        top = min(moves)
        if top[0] >= score(*best):
            break
        t[top[1]] = top[2]
        best = evaluate(t)
    return t, best[0], best[1]


def check_grid(grid: Sequence[float]) -> np.ndarray:
    """A threshold grid as sorted unique values, each in [0, 1]."""
    g = np.unique(np.asarray(grid, dtype=np.float64))
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty vector of thresholds, got {grid!r}")
    for t in g:
        check_threshold(float(t))
    return g


def confidence_histograms(P: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """Per expert (index order) and confidence bin: [records, records the expert gets right].

    Shape (K, len(grid) + 1, 2). Bin ``b`` holds the records whose confidence (the
    expert's max probability) has exactly ``b`` grid values at or below it, so
    "confidence >= grid[j]" is bins ``j + 1`` onwards. One record adds 1 to one bin's
    count and at most 1 to its correct count, once per expert.
    """
    P = check_expert_outputs(P)
    y = check_labels(y, P)
    g = check_grid(grid)
    bins = np.searchsorted(g, P.max(axis=2), side="right")  # (n, K)
    correct = (P.argmax(axis=2) == y[:, None]).astype(np.float64)
    K, B = P.shape[1], len(g) + 1
    hist = np.zeros((K, B, 2))
    for k in range(K):
        hist[k, :, 0] = np.bincount(bins[:, k], minlength=B)
        hist[k, :, 1] = np.bincount(bins[:, k], weights=correct[:, k], minlength=B)
    return hist


def thresholds_from_histograms(
    hist: np.ndarray, costs: np.ndarray, grid: Sequence[float], target_accuracy: float | None = None,
    margin: float = 0.0, min_count: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Per-expert thresholds from confidence histograms (:func:`confidence_histograms`,
    possibly noisy and summed over sites): the calibration both the central and the
    federated cascade use.

    The *anchor* is the expert with the highest accuracy in the histograms (ties to
    the cheaper); it always answers and more expensive experts are skipped. Each
    cheaper expert answers from the lowest grid threshold at which its accuracy on
    the records at or above it (with at least ``min_count`` of them) reaches the
    target, else it is skipped (``inf``). The target is ``target_accuracy``, default
    the anchor's accuracy plus ``margin``. Only the histograms are read: noisy counts
    (negative ones included) are post-processed here at no privacy cost. Returns
    (thresholds (K,), target).
    """
    g = check_grid(grid)
    hist = np.asarray(hist, dtype=np.float64)
    if hist.shape != (len(costs), len(g) + 1, 2):
        raise ValueError(f"histograms must have shape (K={len(costs)}, {len(g) + 1}, 2), got {hist.shape}")
    totals = hist.sum(axis=1)
    accs = totals[:, 1] / np.maximum(totals[:, 0], min_count)
    K = len(costs)
    anchor = int(min(range(K), key=lambda k: (-accs[k], costs[k], k)))
    target = float(accs[anchor] + margin) if target_accuracy is None else float(target_accuracy)
    tails = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (K, len(g), 2): confidence >= g[j]
    t = np.full(K, np.inf)
    t[anchor] = 0.0
    order = np.argsort(costs, kind="stable")
    for k in order[: int(np.flatnonzero(order == anchor)[0])]:
        n, right = tails[k, :, 0], tails[k, :, 1]
        ok = (n >= min_count) & (right >= target * n)
        if ok.any():
            t[k] = g[int(np.argmax(ok))]
    return t, target


def choose_grid(
    P: np.ndarray, y: np.ndarray, costs: np.ndarray, grids: dict[str, np.ndarray] | None = None,
    seed: int = 0, pooled: bool = False,
) -> tuple[str, dict[str, tuple[float, float]]]:
    """Pick a per-expert threshold grid by 2-fold cross-validation on validation data (P, y).

    For each grid, calibrate on one half to the best single expert's accuracy
    there and measure, on the other half, (cascade accuracy - that expert's
    accuracy, cost per query); both folds averaged. Returns the cheapest grid
    whose held-out accuracy gap is >= 0 (else the one with the largest gap), and
    every grid's (gap, cost). ``pooled``: for a cascade of pooled stages.
    """
    grids = GRIDS if grids is None else grids
    idx = np.random.default_rng(seed).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2:])
    held_out: dict[str, tuple[float, float]] = {}
    for name, grid in grids.items():
        gaps, spent = [], []
        for fit, check in (halves, halves[::-1]):
            accs = (P[fit].argmax(axis=2) == y[fit, None]).mean(axis=0)
            target = float(accs.max())
            thresholds, _, _ = calibrate_per_expert(P[fit], y[fit], costs, target, np.asarray(grid), pooled)
            cascade = CascadeCombiner(costs, thresholds, pooled)
            anchor = (P[check][:, int(np.argmax(accs))].argmax(axis=1) == y[check]).mean()
            gaps.append(float((cascade.combine(P[check]).argmax(axis=1) == y[check]).mean() - anchor))
            spent.append(cascade.cost_per_query(P[check]))
        held_out[name] = (float(np.mean(gaps)), float(np.mean(spent)))
    ok = [name for name, (gap, _) in held_out.items() if gap >= 0]
    best = min(ok, key=lambda n: held_out[n][1]) if ok else max(held_out, key=lambda n: held_out[n][0])
    return best, held_out


@register_combiner("cascade")
class CascadeCombiner(FederatedForm):
    """Cheapest expert first; escalate while its top probability is under ``threshold``.

    Experts are called in order of cost (cheapest first, ties by index); a query
    stops at the first expert whose max probability is >= ``threshold`` and
    gets that expert's distribution. The last (most expensive) expert always
    answers. ``pooled=True`` makes each stage but the last answer (and judge its
    confidence) with the mean of the experts called so far, a cascade of
    growing ensembles: cheap experts that agree stop a query sooner, and the
    last expert still answers alone. One threshold is shared by all experts, or each expert has its own;
    an expert whose threshold is ``inf`` never answers, so it is never called.
    :meth:`calibrate` picks the threshold(s) on validation data.

    Unlike the other combiners, :meth:`expert_calls_per_query` and
    :meth:`cost_per_query` take the expert outputs ``P`` rather than ``K``: how
    many experts a cascade calls depends on the data. (For the measurement the
    outputs of all experts are computed up front; a deployment calls lazily.)

    Parameters
    ----------
    costs : sequence of float (K,), optional
        Cost per call of each expert, all > 0. ``None``: all 1.0 (index order).
    threshold : float or sequence of float (K,)
        Confidence needed to stop, in [0, 1]. 0 always stops at the first
        expert; 1 stops only at an expert that is certain. Per expert, ``inf``
        skips that expert; the most expensive expert not skipped always answers.
    pooled : bool
        Stages answer with the mean of the experts called so far (see above).

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

    kind = "cascade"
    label = "cascade"
    protocol = "histogram_release"
    config_schema = Schema([
        one_of("combiner.costs", ("macs", "uniform"), show=lambda o: "'macs' or 'uniform'"),
        one_of("combiner.grid", GRIDS),
        Rule("combiner.target_margin", lambda v, cfg: is_num(v) and -1 < v < 1, "a number in (-1, 1)"),
        Rule("combiner.min_count", lambda v, cfg: is_num(v) and v > 0, "a number > 0"),
    ])

    def __init__(
        self, costs: Sequence[float] | None = None, threshold: float | Sequence[float] = 1.0,
        pooled: bool = False,
    ) -> None:
        self.costs: np.ndarray | None = None if costs is None else check_costs(costs)
        self.threshold = check_thresholds(threshold)
        if not isinstance(pooled, (bool, np.bool_)):
            raise ValueError(f"pooled must be True or False, got {pooled!r}")
        self.pooled = bool(pooled)
        if self.costs is not None and isinstance(self.threshold, np.ndarray):
            if len(self.threshold) != len(self.costs):
                raise ValueError(
                    f"threshold has {len(self.threshold)} entries but costs has {len(self.costs)}"
                )

    @property
    def order(self) -> np.ndarray | None:
        """Expert indices cheapest first (ties by index), or ``None`` without costs."""
        return None if self.costs is None else np.argsort(self.costs, kind="stable")

    def _plan(
        self, P: np.ndarray, threshold: float | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(chain: experts called in order, position in the chain where each query stops,
        costs, the answer per query (n, C))."""
        check_num_experts(None if self.costs is None else len(self.costs), P, "CascadeCombiner")
        if isinstance(threshold, np.ndarray):
            check_num_experts(len(threshold), P, "CascadeCombiner thresholds")
        K = P.shape[1]
        costs = np.ones(K) if self.costs is None else self.costs
        t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (K,))
        chain = _chain(costs, t)
        Q = _stage_outputs(P, chain, self.pooled)
        stop = _stops(Q.max(axis=2), t[chain])
        return chain, stop, costs, Q[np.arange(len(P)), stop]

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """The answering stage's distribution per query (n, C); ``X`` is ignored."""
        P = check_expert_outputs(P)
        return self._plan(P, self.threshold)[3]

    def _nonempty(self, P: np.ndarray) -> np.ndarray:
        P = check_expert_outputs(P)
        if len(P) == 0:
            raise ValueError("a cascade's calls per query need at least one query, got n=0")
        return P

    def expert_calls_per_query(self, P: np.ndarray) -> float:
        """Mean number of experts called on the queries ``P`` (n, K, C)."""
        P = self._nonempty(P)
        _, stop, _, _ = self._plan(P, self.threshold)
        return float(np.mean(stop + 1))

    def cost_per_query(self, P: np.ndarray) -> float:
        """Mean total cost of the experts called on the queries ``P``."""
        P = self._nonempty(P)
        chain, stop, costs, _ = self._plan(P, self.threshold)
        return float(np.mean(np.cumsum(costs[chain])[stop]))

    def calibrate(
        self,
        P_val: np.ndarray,
        y_val: np.ndarray,
        costs: Sequence[float] | None = None,
        target_accuracy: float | None = None,
        max_cost: float | None = None,
        grid: Sequence[float] | None = None,
        per_expert: bool = False,
    ) -> CascadeCombiner:
        """Pick the shared threshold from ``grid`` (default 0, 0.01, ..., 1) on validation data.

        ``per_expert=True`` (with ``target_accuracy``) instead picks one threshold
        per expert from ``grid`` or ``inf`` (skip), by :func:`calibrate_per_expert`.
        Either way ``validation_accuracy`` and ``validation_cost`` are set to what
        the chosen thresholds give on the validation data.

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
        check_grid(thresholds)
        if costs is not None:
            self.costs = check_costs(costs)
        P = self._nonempty(P_val)
        y = check_labels(y_val, P)
        if per_expert:
            if target_accuracy is None:
                raise ValueError(f"per-expert calibration takes target_accuracy, got max_cost={max_cost!r}")
            check_num_experts(None if self.costs is None else len(self.costs), P, "CascadeCombiner")
            costs_ = np.ones(P.shape[1]) if self.costs is None else self.costs
            self.threshold, acc_, cost_ = calibrate_per_expert(P, y, costs_, target_accuracy, thresholds,
                                                               self.pooled)
            self.validation_accuracy, self.validation_cost = acc_, cost_
            if acc_ < target_accuracy:
                warnings.warn(f"no per-expert thresholds reach target_accuracy={target_accuracy} on "
                              f"validation data (best found {acc_:.4f})", stacklevel=2)
            return self
        acc, cost = np.empty(len(thresholds)), np.empty(len(thresholds))
        for i, t in enumerate(thresholds):
            chain, stop, c, answer = self._plan(P, t)
            acc[i] = np.mean(answer.argmax(axis=1) == y)
            cost[i] = np.mean(np.cumsum(c[chain])[stop])
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
        self.validation_accuracy, self.validation_cost = float(acc[best]), float(cost[best])
        return self

    def calibrate_from_histograms(
        self, hist: np.ndarray, grid: Sequence[float], target_accuracy: float | None = None,
        margin: float = 0.0, min_count: float = 1.0,
    ) -> CascadeCombiner:
        """Per-expert thresholds from (noisy, summed) confidence histograms, by
        :func:`thresholds_from_histograms`; sets ``target`` too. Returns ``self``."""
        if self.pooled:
            raise ValueError("histograms hold each expert's own confidence, not a pooled stage's: "
                             "calibrate a pooled cascade with calibrate(per_expert=True)")
        costs = np.ones(len(hist)) if self.costs is None else self.costs
        self.threshold, self.target = thresholds_from_histograms(hist, costs, grid, target_accuracy,
                                                                 margin, min_count)
        return self

    def calibrate_selective(
        self, P_val: np.ndarray, y_val: np.ndarray, grid: Sequence[float],
        target_accuracy: float | None = None, margin: float = 0.0, min_count: float = 1.0,
    ) -> CascadeCombiner:
        """Central twin of the federated calibration: the same rule on exact histograms of
        the validation data (:func:`confidence_histograms`). Returns ``self``."""
        P = self._nonempty(P_val)
        check_num_experts(None if self.costs is None else len(self.costs), P, "CascadeCombiner")
        hist = confidence_histograms(P, y_val, grid)
        return self.calibrate_from_histograms(hist, grid, target_accuracy, margin, min_count)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Costs and thresholds as tensors (the federation's combiner files; needs costs)."""
        if self.costs is None:
            raise ValueError("a cascade's state needs its costs, got costs=None")
        t = np.broadcast_to(np.asarray(self.threshold, dtype=np.float64), self.costs.shape)
        return {"costs": torch.as_tensor(self.costs), "threshold": torch.as_tensor(t.copy()),
                "pooled": torch.tensor(self.pooled)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> CascadeCombiner:
        pooled = bool(state["pooled"]) if "pooled" in state else False  # files before pooling existed
        return cls(state["costs"].double().numpy(), state["threshold"].double().numpy(), pooled)

    def save(self, path: str | Path) -> None:
        """Write costs (hence the order) and threshold to ``path`` (npz)."""
        costs = np.zeros(0) if self.costs is None else self.costs
        order = np.zeros(0, dtype=np.int64) if self.order is None else self.order
        save_arrays(path, "cascade", costs=costs, order=order, threshold=np.array(self.threshold),
                    pooled=np.array(self.pooled))

    @classmethod
    def load(cls, path: str | Path) -> CascadeCombiner:
        """Read a cascade written by :meth:`save`."""
        a = load_arrays(path, "cascade")
        t = a["threshold"]
        pooled = bool(a["pooled"]) if "pooled" in a else False  # files before pooling existed
        return cls(a["costs"] if a["costs"].size else None, float(t) if t.ndim == 0 else t, pooled)

    # --- its federated form (fedens.combiners.federated) ------------------------------------

    @classmethod
    def initial(cls, c: Mapping[str, Any], public: Any, experts: list, seed: int) -> CascadeCombiner:
        """Uncalibrated, with each expert's cost: its multiply-accumulates per query, or 1."""
        from fedens.experts import count_macs

        return cls([float(count_macs(e)) if c["costs"] == "macs" else 1.0 for e in experts])

    def scores(self, P: np.ndarray, X: np.ndarray | None, y: np.ndarray, top_k: int | None = None
               ) -> dict[str, float]:
        accuracy, nll = accuracy_and_nll(self.combine(P), y)
        return {"accuracy": accuracy, "nll": nll, "expert_calls_per_query": self.expert_calls_per_query(P),
                "cost_per_query": self.cost_per_query(P)}

    def central_reference(self, c: Mapping[str, Any], private: Any, P_private: np.ndarray,
                          test: Any, P_test: np.ndarray, seed: int) -> dict[str, float]:
        """The same selective-accuracy rule on the exact histograms of all private records."""
        s = self._calibrated_copy(c, P_private, private.y).scores(P_test, None, test.y)
        return {"central_nonprivate_accuracy": s["accuracy"], "central_nonprivate_nll": s["nll"],
                "central_nonprivate_expert_calls_per_query": s["expert_calls_per_query"]}

    def federated_nonprivate(self, c: Mapping[str, Any], sites: list[SiteRecords], rounds: int,
                             seed: int) -> CascadeCombiner:
        """Without noise the sites' summed histograms are those of all their records: the
        calibration on every site's records together (one release, so ``rounds`` is unused)."""
        return self._calibrated_copy(c, np.concatenate([P for _, P, _ in sites]),
                                     np.concatenate([y for _, _, y in sites]))

    def _calibrated_copy(self, c: Mapping[str, Any], P: np.ndarray, y: np.ndarray) -> CascadeCombiner:
        import copy

        return copy.deepcopy(self).calibrate_selective(
            P, y, GRIDS[c["grid"]], margin=float(c["target_margin"]), min_count=float(c["min_count"]))

    def results(self, final: Mapping[str, Any], num_experts: int, c: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
        out = super().results(final, num_experts, c)
        out["cost"]["cost_per_query"] = final["cost_per_query"]
        out["cost"]["cost_unit"] = "multiply-accumulates" if c["costs"] == "macs" else "calls"
        return out

    @classmethod
    def progress_line(cls, row: Mapping[str, Any], c: Mapping[str, Any]) -> str:
        return (f"cascade  thresholds from {row['sites_reporting']} sites' noisy histograms: "
                f"accuracy {row['accuracy']:.3f}, {row['expert_calls_per_query']:.2f} expert "
                f"calls / query, ε_max {row['epsilon_max']:.2f}")
