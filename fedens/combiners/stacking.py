"""Stacking: a linear pool of temperature-scaled experts, fitted by NLL.

As for the log-linear pool, :class:`StackingModule` (torch, Opacus-ready) holds
the one loss; :class:`StackingCombiner` (numpy in/out) fits through it.
"""

from __future__ import annotations

from pathlib import Path

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
from fedens.combiners.log_linear import (
    FlooredPoolModule,
    check_log_floor,
    check_vector,
    floored_log,
    full_batch_fit,
    softmax_weights,
)
from fedens.combiners.trainable import ones_column


class StackingModule(FlooredPoolModule):
    """Torch form of :class:`StackingCombiner`: ``sum_k w_k softmax(log max(p_k, floor) / T_k)``.

    Weight logits and log-temperatures are each the weight of an ``nn.Linear(1, K)``
    fed a column of ones (per-record gradients for Opacus). Starts at uniform
    weights and unit temperatures.
    """

    kind = "stacking"

    def __init__(self, num_experts: int, log_floor: float = 1e-6) -> None:
        super().__init__(num_experts, log_floor)
        self.log_temperature = nn.Linear(1, num_experts, bias=False)
        nn.init.zeros_(self.log_temperature.weight)

    def parameters_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight logits, temperatures), each (K,)."""
        logits, log_t = (m.weight.detach().double().numpy()[:, 0]
                         for m in (self.weights, self.log_temperature))
        return logits.copy(), np.exp(log_t)

    def log_mixture(self, P: torch.Tensor) -> torch.Tensor:
        """Log of the combined distribution (n, C)."""
        ones = ones_column(len(P), P)
        log_w, log_t = torch.log_softmax(self.weights(ones), dim=1), self.log_temperature(ones)
        logP = torch.log(P.clamp_min(float(self.log_floor)))
        scaled = torch.log_softmax(logP / torch.exp(log_t)[:, :, None], dim=2)
        return torch.logsumexp(log_w[:, :, None] + scaled, dim=1)

    def loss(self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean NLL of ``y`` (``X`` is ignored)."""
        return nn.functional.nll_loss(self.log_mixture(P), y)

    @torch.no_grad()
    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        P = check_expert_outputs(P)
        return torch.exp(self.log_mixture(torch.as_tensor(P, dtype=torch.float32))).double().numpy()


@register_combiner("stacking")
class StackingCombiner:
    """``sum_k w_k softmax(log p_k / T_k)``: per-expert temperature ``T_k`` and weight ``w_k``.

    Each expert is first recalibrated by its own temperature (``T > 1``
    softens, ``T < 1`` sharpens), then the recalibrated experts are mixed with
    simplex weights ``w = softmax(weight_logits)``. Both are fitted by
    minimising NLL. Probabilities are floored at ``log_floor`` before the log,
    so exact zeros stay finite. At unit temperatures this is the weighted mean
    (up to the floor); the temperatures make it *not* return an expert's own
    answer when all experts agree -- that is the point of calibrating.

    Parameters
    ----------
    weight_logits, temperatures : arrays (K,), optional
        ``None``: uniform weights / unit temperatures until :meth:`fit`.
    log_floor : float
        Smallest probability used inside the log, in (0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[0.8, 0.2], [0.5, 0.5]], [[0.1, 0.9], [0.4, 0.6]]])
    >>> s = StackingCombiner().fit(P, np.array([0, 1]), epochs=50, lr=0.1, seed=0)
    >>> s.combine(P).shape, s.temperatures.shape
    ((2, 2), (2,))
    """

    federated_form = StackingModule  # what a site trains with DP-SGD

    def __init__(
        self,
        weight_logits: np.ndarray | None = None,
        temperatures: np.ndarray | None = None,
        log_floor: float = 1e-6,
    ) -> None:
        self.log_floor = check_log_floor(log_floor)
        self.weight_logits = check_vector(weight_logits, "weight_logits")
        self.temperatures = check_vector(temperatures, "temperatures", positive=True)
        if self.weight_logits is not None and self.temperatures is not None:
            if len(self.weight_logits) != len(self.temperatures):
                raise ValueError(
                    f"weight_logits has {len(self.weight_logits)} experts but temperatures has "
                    f"{len(self.temperatures)}"
                )

    @property
    def num_experts(self) -> int | None:
        """K once weights or temperatures are set, else ``None``."""
        for a in (self.weight_logits, self.temperatures):
            if a is not None:
                return len(a)
        return None

    def _params(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        logits = np.zeros(K) if self.weight_logits is None else self.weight_logits
        temps = np.ones(K) if self.temperatures is None else self.temperatures
        return logits, temps

    def weights(self, num_experts: int | None = None) -> np.ndarray:
        """Expert weights on the simplex (K,)."""
        K = self.num_experts or check_positive_int(num_experts, "num_experts")
        return softmax_weights(self._params(K)[0])

    def combine(self, P: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        """Combined distribution (n, C); ``X`` is ignored."""
        P = check_expert_outputs(P)
        check_num_experts(self.num_experts, P, "StackingCombiner")
        _, temps = self._params(P.shape[1])
        scaled = floored_log(P, self.log_floor) / temps[None, :, None]
        scaled -= scaled.max(axis=2, keepdims=True)
        scaled = np.exp(scaled)
        scaled /= scaled.sum(axis=2, keepdims=True)
        return np.einsum("k,nkc->nc", self.weights(P.shape[1]), scaled)

    def fit(
        self, P: np.ndarray, y: np.ndarray, epochs: int = 200, lr: float = 0.05, seed: int = 0
    ) -> StackingCombiner:
        """Minimise the mean NLL of ``y`` by full-batch Adam on weight logits and log-temperatures
        (:class:`StackingModule`'s loss, the one sites train with DP-SGD).

        Starts from the current parameters (uniform, unit temperature if unset).
        Returns ``self``.
        """
        P = check_expert_outputs(P)
        check_num_experts(self.num_experts, P, "StackingCombiner")
        module = self.to_module(P.shape[1])
        full_batch_fit(module, P, check_labels(y, P), epochs, lr, seed)
        self.weight_logits, self.temperatures = module.parameters_numpy()
        return self

    def to_module(self, num_experts: int | None = None) -> StackingModule:
        """This combiner as a :class:`StackingModule` (defaults if unset: give ``num_experts``)."""
        K = self.num_experts or check_positive_int(num_experts, "num_experts")
        module = StackingModule(K, self.log_floor)
        logits, temps = self._params(K)
        with torch.no_grad():
            module.weights.weight.copy_(torch.as_tensor(logits)[:, None])
            module.log_temperature.weight.copy_(torch.as_tensor(np.log(temps))[:, None])
        return module

    @classmethod
    def from_module(cls, module: StackingModule) -> StackingCombiner:
        """The numpy combiner with ``module``'s (e.g. federated) parameters."""
        return cls(*module.parameters_numpy(), log_floor=float(module.log_floor))

    def expert_calls_per_query(self, num_experts: int) -> float:
        """Every expert is called for every query (all weights are > 0)."""
        return float(check_positive_int(num_experts, "num_experts"))

    def save(self, path: str | Path) -> None:
        """Write weights, temperatures and floor to ``path`` (npz)."""
        empty = np.zeros(0)
        save_arrays(
            path, "stacking",
            weight_logits=empty if self.weight_logits is None else self.weight_logits,
            temperatures=empty if self.temperatures is None else self.temperatures,
            log_floor=np.array(self.log_floor),
        )

    @classmethod
    def load(cls, path: str | Path) -> StackingCombiner:
        """Read a combiner written by :meth:`save`."""
        a = load_arrays(path, "stacking")
        return cls(
            a["weight_logits"] if a["weight_logits"].size else None,
            a["temperatures"] if a["temperatures"].size else None,
            float(a["log_floor"]),
        )
