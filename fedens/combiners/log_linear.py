"""Log-linear (geometric) pool with learned simplex weights.

Two forms, one loss: :class:`LogLinearModule` (torch) holds the weight logits
in an ``nn.Linear`` so Opacus can clip per record, and is what a site trains
with DP-SGD; :class:`LogLinearPool` (numpy in/out) fits by running that same
module through :func:`fedens.combiners.training.train_combiner` full-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedens.combiners.base import (
    check_expert_outputs,
    check_labels,
    check_num_experts,
    check_positive_int,
    load_arrays,
    register_combiner,
    save_arrays,
)
from fedens.combiners.federated import TRAINED_SCHEMA, FederatedForm
from fedens.combiners.trainable import TrainableCombiner, ones_column
from fedens.combiners.training import train_combiner
from fedens.config_schema import Rule, is_num


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


def floored_log(P: np.ndarray, log_floor: float) -> np.ndarray:
    """``log(max(P, log_floor))`` in float64: finite for exact zeros."""
    return np.log(np.maximum(P.astype(np.float64), log_floor))


def full_batch_fit(module: TrainableCombiner, P: np.ndarray, y: np.ndarray, epochs: int, lr: float,
                   seed: int) -> None:
    """The pools' central fit: ``epochs`` full-batch Adam steps on ``module.loss`` (the loss a
    site minimises with DP-SGD), through the shared training loop."""
    check_fit_args(epochs, lr)
    X = np.zeros((len(y), 0), dtype=np.float32)  # pools do not look at the input
    train_combiner(module, X, P, y, epochs, lr, batch_size=max(len(y), 1), seed=seed)


def check_module_args(num_experts: int, log_floor: float) -> float:
    check_positive_int(num_experts, "num_experts")
    return check_log_floor(log_floor)


class FlooredPoolModule(FederatedForm, TrainableCombiner):
    """Shared by the torch forms of the floored pools (log-linear, stacking): a
    ``log_floor`` buffer, per-expert weight logits in ``weights`` (``nn.Linear(1, K)``
    fed a column of ones), every expert called, rebuilding from a state dict, and their
    federated form (trained by DP-SGD rounds from uniform weights)."""

    config_schema = TRAINED_SCHEMA + [
        Rule("combiner.log_floor", lambda v, cfg: is_num(v) and 0 < v < 1, "a number in (0, 1)")]

    @classmethod
    def initial(cls, c: Mapping[str, Any], public: Any, experts: list, seed: int) -> FlooredPoolModule:
        """Uniform weights over the experts (nothing learned from public data)."""
        return cls(len(experts), float(c["log_floor"]))

    def __init__(self, num_experts: int, log_floor: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("log_floor", torch.tensor(check_module_args(num_experts, log_floor),
                                                       dtype=torch.float64))
        self.weights = nn.Linear(1, num_experts, bias=False)
        nn.init.zeros_(self.weights.weight)

    @staticmethod
    def expert_calls_per_query(num_experts: int) -> float:
        return float(check_positive_int(num_experts, "num_experts"))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> FlooredPoolModule:
        model = cls(state["weights.weight"].shape[0], float(state["log_floor"]))
        model.load_state_dict(state)
        return model


class LogLinearModule(FlooredPoolModule):
    """Torch form of :class:`LogLinearPool`: ``softmax_c(sum_k w_k log max(p_k, floor))``.

    ``weights`` is ``nn.Linear(1, K)`` fed a column of ones, so its weight holds the
    logits of ``w`` and Opacus computes per-record gradients. Starts uniform.

    Examples
    --------
    >>> import torch
    >>> m = LogLinearModule(num_experts=3)
    >>> P = torch.full((2, 3, 4), 0.25); y = torch.tensor([0, 1])
    >>> round(float(m.loss(torch.zeros(2, 0), P, y)), 4)  # uniform experts: log 4
    1.3863
    """

    kind = "log_linear"

    def weight_logits(self) -> np.ndarray:
        return self.weights.weight.detach().double().numpy()[:, 0].copy()

    def log_scores(self, P: torch.Tensor) -> torch.Tensor:
        """Unnormalised log pool (n, C)."""
        w = torch.softmax(self.weights(ones_column(len(P), P)), dim=1)
        return torch.einsum("nk,nkc->nc", w, torch.log(P.clamp_min(float(self.log_floor))))

    def loss(self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean NLL of ``y`` under the pool (``X`` is ignored)."""
        return nn.functional.cross_entropy(self.log_scores(P), y)

    @torch.no_grad()
    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        P = check_expert_outputs(P)
        return torch.softmax(self.log_scores(torch.as_tensor(P, dtype=torch.float32)), 1).double().numpy()


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

    federated_form = LogLinearModule  # what a site trains with DP-SGD

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
        """Minimise the mean NLL of ``y`` by full-batch Adam on the weight logits
        (:class:`LogLinearModule`'s loss, the one sites train with DP-SGD).

        Starts from the current logits (zeros, i.e. uniform, if unset); ``seed``
        seeds torch for reproducibility. Returns ``self``.
        """
        P = check_expert_outputs(P)
        check_num_experts(self.num_experts, P, "LogLinearPool")
        module = self.to_module(P.shape[1])
        full_batch_fit(module, P, check_labels(y, P), epochs, lr, seed)
        self.weight_logits = module.weight_logits()
        return self

    def to_module(self, num_experts: int | None = None) -> LogLinearModule:
        """This pool as a :class:`LogLinearModule` (uniform if unset: give ``num_experts``)."""
        module = LogLinearModule(self.num_experts or check_positive_int(num_experts, "num_experts"),
                                 self.log_floor)
        if self.weight_logits is not None:
            with torch.no_grad():
                module.weights.weight.copy_(torch.as_tensor(self.weight_logits)[:, None])
        return module

    @classmethod
    def from_module(cls, module: LogLinearModule) -> LogLinearPool:
        """The numpy pool with ``module``'s (e.g. federated) weights."""
        return cls(module.weight_logits(), float(module.log_floor))

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
