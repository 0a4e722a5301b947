"""Learned combiners over a fixed network of experts, as one torch module.

``GatedEnsemble`` holds two heads trained together:

* ``router``: an input-conditioned gate ``g(x) = softmax(W x + b)`` over the K
  experts; the answer is ``sum_k g_k(x) p_k(x)``. Top-k routing keeps the k
  largest gates (renormalised), so only k experts are called per query.
* ``weights``: global ensemble weights ``softmax(w)`` (a linear pool).

The router sees a fixed linear map of the input, ``(x - center) @ projection.T``,
fitted on *public* data only (PCA, see :meth:`GatedEnsemble.with_public_projection`):
fewer trainable parameters means less DP noise for the same signal. The map is
stored as buffers, so it travels with the parameters and is never trained.

Both start at zero, i.e. at the uniform mean, so training can only move them
away from it when the data says so. Both heads are ``nn.Linear`` layers so
Opacus computes per-sample gradients for them.
"""

from __future__ import annotations

from pathlib import Path

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

    def __init__(
        self,
        num_features: int,
        num_experts: int,
        projection: np.ndarray | None = None,
        center: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if projection is None:
            projection = np.eye(num_features, dtype=np.float32)
        projection = np.asarray(projection, dtype=np.float32)
        if projection.ndim != 2 or projection.shape[1] != num_features:
            raise ValueError(
                f"projection must have shape (r, num_features={num_features}), got {projection.shape}"
            )
        if center is None:
            center = np.zeros(num_features, dtype=np.float32)
        self.register_buffer("projection", torch.as_tensor(projection))
        self.register_buffer("center", torch.as_tensor(np.asarray(center, dtype=np.float32)))
        self.router = nn.Linear(projection.shape[0], num_experts)
        self.weights = nn.Linear(1, num_experts, bias=False)
        for p in self.parameters():
            nn.init.zeros_(p)

    @classmethod
    def with_public_projection(
        cls, X_public: np.ndarray, num_experts: int, dim: int, seed: int = 0
    ) -> GatedEnsemble:
        """A GatedEnsemble whose router sees the top ``dim`` principal components of
        *public* data (``dim=0``: the raw inputs)."""
        num_features = X_public.shape[1]
        if dim == 0:
            return cls(num_features, num_experts)
        if not 1 <= dim <= min(X_public.shape):
            raise ValueError(f"router input dim must be in [0, {min(X_public.shape)}], got {dim}")
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dim, random_state=seed).fit(X_public)
        return cls(num_features, num_experts, pca.components_, pca.mean_)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GatedEnsemble:
        """Rebuild a GatedEnsemble (shapes and public projection) from its state dict."""
        projection = state["projection"].numpy()
        model = cls(projection.shape[1], state["weights.weight"].shape[0], projection)
        model.load_state_dict(state)
        return model

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters only: what travels between sites and coordinator
        (the public projection stays where it is)."""
        names = {name for name, _ in self.named_parameters()}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load parameters produced by :meth:`trainable_state`; the keys must match exactly."""
        expected = {name for name, _ in self.named_parameters()}
        if set(state) != expected:
            raise ValueError(f"trainable state must have keys {sorted(expected)}, got {sorted(state)}")
        self.load_state_dict(state, strict=False)

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits of both heads, each (n, K)."""
        router_inputs = (X - self.center) @ self.projection.T
        return self.router(router_inputs), self.weights(torch.ones(len(X), 1, dtype=X.dtype))

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
            keep = torch.topk(logits, top_k, dim=1).indices  # exactly k, ties included
            mask = torch.full_like(logits, float("-inf")).scatter(1, keep, 0.0)
            logits = logits + mask
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

    def save(self, path: str | Path) -> None:
        """Write the full state (heads and public projection) to ``path`` (torch format)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> GatedEnsemble:
        """Read a GatedEnsemble written by :meth:`save`."""
        return cls.from_state_dict(torch.load(path, weights_only=True))
