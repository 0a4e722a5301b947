"""Learned combiners over a fixed network of experts, as one torch module.

``GatedEnsemble`` holds two heads trained together:

* ``router``: an input-conditioned gate ``g(x) = softmax(W x + b)`` over the K
  experts; the answer is ``sum_k g_k(x) p_k(x)``. Top-k routing keeps the k
  largest gates (renormalised), so only k experts are called per query.
* ``weights``: global ensemble weights ``softmax(w)`` (a linear pool).

Both start at zero, i.e. at the uniform mean, so training can only move them
away from it when the data says so. Both heads are ``nn.Linear`` layers so
Opacus computes per-sample gradients for them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedens.combiners.base import check_expert_outputs, register_combiner

_LOG_FLOOR = 1e-6  # experts such as trees give exact zeros


def mixture_log_likelihood(
    gate_logits: torch.Tensor, P: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-record ``log sum_k softmax(gate)_k * P[k, y]`` of shape (n,)."""
    p_true = P[torch.arange(len(y)), :, y].clamp_min(_LOG_FLOOR)
    return torch.logsumexp(torch.log_softmax(gate_logits, dim=1) + torch.log(p_true), dim=1)


@register_combiner("gated_ensemble")
class GatedEnsemble(nn.Module):
    """Router and global weights over ``num_experts`` experts.

    Examples
    --------
    >>> import numpy as np
    >>> m = GatedEnsemble(num_features=4, num_experts=3)
    >>> P = np.full((2, 3, 5), 0.2, dtype=np.float32); X = np.zeros((2, 4), np.float32)
    >>> m.combine(P, X, head="router", top_k=1).shape
    (2, 5)
    """

    def __init__(self, num_features: int, num_experts: int) -> None:
        super().__init__()
        self.router = nn.Linear(num_features, num_experts)
        self.weights = nn.Linear(1, num_experts, bias=False)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits of both heads, each (n, K)."""
        return self.router(X), self.weights(torch.ones(len(X), 1, dtype=X.dtype))

    def loss(self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of both heads' mixtures."""
        router_logits, weight_logits = self(X)
        ll = mixture_log_likelihood(router_logits, P, y) + mixture_log_likelihood(
            weight_logits, P, y
        )
        return -ll.mean()

    @torch.no_grad()
    def gates(self, X: np.ndarray, head: str = "router", top_k: int | None = None) -> np.ndarray:
        """Mixing weights (n, K); with ``top_k`` all but the k largest are zero."""
        if head not in ("router", "weights"):
            raise ValueError(f"head must be 'router' or 'weights', got {head!r}")
        router_logits, weight_logits = self(torch.as_tensor(X, dtype=torch.float32))
        logits = router_logits if head == "router" else weight_logits
        K = logits.shape[1]
        if top_k is not None:
            if not 1 <= top_k <= K:
                raise ValueError(f"top_k must be in [1, {K}] (the number of experts), got {top_k}")
            kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.softmax(logits, dim=1).numpy()

    def combine(
        self, P: np.ndarray, X: np.ndarray, head: str = "router", top_k: int | None = None
    ) -> np.ndarray:
        """Combined distribution (n, C)."""
        P = check_expert_outputs(P)
        return np.einsum("nk,nkc->nc", self.gates(X, head, top_k), P)

    @staticmethod
    def expert_calls_per_query(num_experts: int, top_k: int | None = None) -> float:
        return float(num_experts if top_k is None else top_k)
