"""Log-linear (geometric) pool with learned simplex weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedens.combiners.base import (
    check_expert_outputs,
    check_labels,
    check_num_experts,
    check_positive_int,
    load_arrays,
    register_combiner,
    save_arrays,
)


def check_log_floor(log_floor: float) -> float:
    """``log_floor`` if it is in (0, 1), else a ValueError naming it."""
    if not 0.0 < float(log_floor) < 1.0:
        raise ValueError(f"log_floor must be in (0, 1), got {log_floor!r}")
    return float(log_floor)


def check_fit_args(epochs: int, lr: float) -> None:
    """Shared checks of ``fit`` arguments."""
    check_positive_int(epochs, "epochs")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


def check_vector(values: np.ndarray | None, name: str, positive: bool = False) -> np.ndarray | None:
    """``values`` as a finite, non-empty float64 vector (K,) (> 0 if ``positive``), or None."""
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all() or (positive and (v <= 0).any()):
        kind = "finite values > 0" if positive else "finite values"
        raise ValueError(f"{name} must be a non-empty vector (K,) of {kind}, got {values!r}")
    return v


def softmax_weights(logits: np.ndarray) -> np.ndarray:
    """Weights on the simplex from logits."""
    z = np.exp(logits - logits.max())
    return z / z.sum()


def minimise(params: list[torch.Tensor], loss: Callable[[], torch.Tensor], epochs: int, lr: float) -> None:
    """Full-batch Adam on ``loss()`` for ``epochs`` steps (the learned pools' fit)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()


def floored_log(P: np.ndarray, log_floor: float) -> np.ndarray:
    """``log(max(P, log_floor))`` in float64: finite for exact zeros."""
    return np.log(np.maximum(P.astype(np.float64), log_floor))


@register_combiner("log_linear")
class LogLinearPool:
    """Geometric pool ``softmax_c(sum_k w_k log p_k)`` with weights ``w = softmax(weight_logits)``.

    The weights lie on the simplex, so the pool is a weighted geometric mean of
    the experts, renormalised. Probabilities are floored at ``log_floor`` before
    the log: an expert that gives a class exactly zero (trees, one-hot voters)
    would otherwise veto it with ``log 0 = -inf``. With the floor, a class every
    expert rules out gets about ``log_floor`` instead of 0.

    Parameters
    ----------
    weight_logits : array (K,), optional
        Logits of the expert weights; ``None`` means uniform weights over
        whatever K the outputs have (until :meth:`fit` sets them).
    log_floor : float
        Smallest probability used inside the log, in (0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[0.8, 0.2], [0.5, 0.5]], [[0.1, 0.9], [0.4, 0.6]]])
    >>> pool = LogLinearPool().fit(P, np.array([0, 1]), epochs=50, lr=0.1, seed=0)
    >>> pool.combine(P).shape, float(pool.weights().sum().round(6))
    ((2, 2), 1.0)
    >>> LogLinearPool().combine(np.array([[[0.5, 0.5], [1.0, 0.0]]])).round(3)
    array([[0.999, 0.001]])
    """

    def __init__(self, weight_logits: np.ndarray | None = None, log_floor: float = 1e-6) -> None:
        self.log_floor = check_log_floor(log_floor)
        self.weight_logits = check_vector(weight_logits, "weight_logits")

    @property
    def num_experts(self) -> int | None:
        """K once the weights are set, else ``None``."""
        return None if self.weight_logits is None else len(self.weight_logits)

    def weights(self, num_experts: int | None = None) -> np.ndarray:
        """Expert weights on the simplex (K,)."""
        if self.weight_logits is None:
            K = check_positive_int(num_experts, "num_experts")
            return np.full(K, 1.0 / K)
        return softmax_weights(self.weight_logits)

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """Combined distribution (n, C); ``X`` is ignored."""
        P = check_expert_outputs(P)
        check_num_experts(self.num_experts, P, "LogLinearPool")
        scores = np.einsum("k,nkc->nc", self.weights(P.shape[1]), floored_log(P, self.log_floor))
        scores -= scores.max(axis=1, keepdims=True)
        out = np.exp(scores)
        return out / out.sum(axis=1, keepdims=True)

    def fit(
        self, P: np.ndarray, y: np.ndarray, epochs: int = 200, lr: float = 0.05, seed: int = 0
    ) -> LogLinearPool:
        """Minimise the mean NLL of ``y`` by full-batch Adam on the weight logits.

        Starts from the current logits (zeros, i.e. uniform, if unset); ``seed``
        seeds torch for reproducibility. Returns ``self``.
        """
        P = check_expert_outputs(P)
        check_num_experts(self.num_experts, P, "LogLinearPool")
        y_t = torch.as_tensor(check_labels(y, P))
        check_fit_args(epochs, lr)
        torch.manual_seed(seed)
        logP = torch.as_tensor(floored_log(P, self.log_floor))
        start = np.zeros(P.shape[1]) if self.weight_logits is None else self.weight_logits
        logits = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        minimise([logits], lambda: torch.nn.functional.cross_entropy(
            torch.einsum("k,nkc->nc", torch.softmax(logits, 0), logP), y_t), epochs, lr)
        self.weight_logits = logits.detach().numpy().copy()
        return self

    def expert_calls_per_query(self, num_experts: int) -> float:
        """Every expert is called for every query (all weights are > 0)."""
        return float(check_positive_int(num_experts, "num_experts"))

    def save(self, path: str | Path) -> None:
        """Write weights and floor to ``path`` (npz)."""
        logits = np.zeros(0) if self.weight_logits is None else self.weight_logits
        save_arrays(path, "log_linear", weight_logits=logits, log_floor=np.array(self.log_floor))

    @classmethod
    def load(cls, path: str | Path) -> LogLinearPool:
        """Read a pool written by :meth:`save`."""
        a = load_arrays(path, "log_linear")
        return cls(a["weight_logits"] if a["weight_logits"].size else None, float(a["log_floor"]))
