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

Training objective, per head (stored as buffers, so it travels with the initial
state to every site): ``"nll"`` maximises the mixture's likelihood; ``"score_ce"``
is the cross-entropy of ``softmax(score_scale * q)`` with ``q`` the mixture, i.e.
the pooled probabilities used as class scores. NLL pays up to ``-log(1e-6)`` for
a record whose truth the mixture rules out, so it moves the global weights to
the few experts that never give a class exact zero (the MLPs) and accuracy drops
below the uniform mean; ``score_ce`` is bounded and rewards the pool's argmax
margin instead. (For the router NLL is the better choice: it ranks experts,
which top-k routing needs.) ``train_top_k=k`` adds the loss of the router's
renormalised top-k mixture, so training sees the sparse gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedens.combiners.base import accuracy_and_nll, check_expert_outputs, register_combiner
from fedens.combiners.federated import TRAINED_SCHEMA, FederatedForm, Row
from fedens.combiners.trainable import TrainableCombiner, ones_column
from fedens.combiners.training import combiner_dataset, run_epochs
from fedens.config_schema import Rule, integer, is_int, one_of

_LOG_FLOOR = 1e-6  # experts such as trees give exact zeros
OBJECTIVES = ("nll", "score_ce")
OPTION_BUFFERS = ("score_scale_router", "score_scale_weights", "train_top_k")


def mixture_log_likelihood(
    gate_logits: torch.Tensor, P: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-record ``log sum_k softmax(gate)_k * P[k, y]`` of shape (n,)."""
    p_true = P[torch.arange(len(y)), :, y].clamp_min(_LOG_FLOOR)
    return torch.logsumexp(torch.log_softmax(gate_logits, dim=1) + torch.log(p_true), dim=1)


def pooled_score_cross_entropy(
    gate_logits: torch.Tensor, P: torch.Tensor, y: torch.Tensor, scale: float
) -> torch.Tensor:
    """Per-record cross-entropy of ``softmax(scale * sum_k softmax(gate)_k P[k])``, shape (n,)."""
    pooled = torch.einsum("nk,nkc->nc", torch.softmax(gate_logits, dim=1), P)
    return nn.functional.cross_entropy(scale * pooled, y, reduction="none")


def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` with all but the k largest per row set to -inf (exactly k kept, ties included)."""
    keep = torch.topk(logits, k, dim=1).indices
    return logits + torch.full_like(logits, float("-inf")).scatter(1, keep, 0.0)


def _top_k_in_range(v: Any, cfg: Any) -> bool:
    return v is None or (is_int(v) and 1 <= v <= cfg.experts.num_experts)


@register_combiner("gated_ensemble")
class GatedEnsemble(FederatedForm, TrainableCombiner):
    """Router and global weights over ``num_experts`` experts.

    Parameters
    ----------
    router_objective, weights_objective : {"nll", "score_ce"}
        Each head's training loss (module docstring). The issue-3 setting is
        ``weights_objective="score_ce"`` with the router on ``"nll"``.
    score_scale : float
        ``score_ce``'s scale of the pooled probabilities (> 0).
    train_top_k : int, optional
        Also train the router's renormalised top-k mixture (``None``: dense only).

    Examples
    --------
    >>> import numpy as np
    >>> m = GatedEnsemble(num_features=4, num_experts=3)
    >>> P = np.full((2, 3, 5), 0.2, dtype=np.float32); X = np.zeros((2, 4), np.float32)
    >>> m.combine(P, X, head="router", top_k=1).shape
    (2, 5)
    """

    kind = "gated_ensemble"
    label = "router"
    personalizable = True
    config_schema = TRAINED_SCHEMA + [
        integer("combiner.top_k", 1, "experts.num_experts"),
        one_of("combiner.weights_objective", ("nll", "score_ce"), show=lambda o: "'nll' or 'score_ce'"),
        Rule("combiner.train_top_k", _top_k_in_range,
             lambda cfg: f"null or an integer in [1, experts.num_experts={cfg.experts.num_experts}]"),
        integer("combiner.pretrain_epochs", 0, note="0: off"),
        integer("combiner.router_input_dim", 0, note="0: the raw inputs"),
    ]

    def __init__(
        self,
        num_features: int,
        num_experts: int,
        projection: np.ndarray | None = None,
        center: np.ndarray | None = None,
        *,
        router_objective: str = "nll",
        weights_objective: str = "nll",
        score_scale: float = 20.0,
        train_top_k: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("router_objective", router_objective), ("weights_objective", weights_objective)):
            if value not in OBJECTIVES:
                raise ValueError(f"{key} must be one of {list(OBJECTIVES)}, got {value!r}")
        if not (np.isfinite(score_scale) and score_scale > 0):
            raise ValueError(f"score_scale must be a finite number > 0, got {score_scale!r}")
        if train_top_k is not None and not (
            isinstance(train_top_k, (int, np.integer)) and 1 <= train_top_k <= num_experts
        ):
            raise ValueError(f"train_top_k must be None or in [1, {num_experts}], got {train_top_k!r}")
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
        # training objective as buffers (0: NLL / dense), so from_state_dict restores it
        for head, objective in (("router", router_objective), ("weights", weights_objective)):
            scale = float(score_scale) if objective == "score_ce" else 0.0
            self.register_buffer(f"score_scale_{head}", torch.tensor(scale))
        self.register_buffer("train_top_k", torch.tensor(int(train_top_k or 0)))
        self.router = nn.Linear(projection.shape[0], num_experts)
        self.weights = nn.Linear(1, num_experts, bias=False)
        for p in self.parameters():
            nn.init.zeros_(p)

    def options(self) -> dict[str, object]:
        """The constructor's keyword options this module was built with."""
        scales = {head: float(getattr(self, f"score_scale_{head}")) for head in ("router", "weights")}
        return {
            "router_objective": "score_ce" if scales["router"] else "nll",
            "weights_objective": "score_ce" if scales["weights"] else "nll",
            "score_scale": max(scales.values()) or 20.0,
            "train_top_k": int(self.train_top_k) or None,
        }

    @classmethod
    def with_public_projection(
        cls, X_public: np.ndarray, num_experts: int, dim: int, seed: int = 0, **options: object
    ) -> GatedEnsemble:
        """A GatedEnsemble whose router sees the top ``dim`` principal components of
        *public* data, or all of them if there are fewer (``dim=0``: the raw inputs);
        ``options`` go to the constructor."""
        num_features = X_public.shape[1]
        if dim == 0:
            return cls(num_features, num_experts, **options)  # type: ignore[arg-type]
        if dim < 0:
            raise ValueError(f"router input dim must be >= 0, got {dim}")
        dim = min(dim, *X_public.shape)
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dim, random_state=seed).fit(X_public)
        return cls(num_features, num_experts, pca.components_, pca.mean_, **options)  # type: ignore[arg-type]

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GatedEnsemble:
        """Rebuild a GatedEnsemble (shapes, public projection, objective) from its state dict.

        States saved before the objective buffers existed load as NLL, dense training.
        """
        projection = state["projection"].numpy()
        model = cls(projection.shape[1], state["weights.weight"].shape[0], projection)
        state = {**{k: v for k, v in model.state_dict().items() if k in OPTION_BUFFERS}, **state}
        model.load_state_dict(state)
        return model

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits of both heads, each (n, K)."""
        router_inputs = (X - self.center) @ self.projection.T
        return self.router(router_inputs), self.weights(ones_column(len(X), X))

    def head_loss(
        self, gate_logits: torch.Tensor, P: torch.Tensor, y: torch.Tensor, head: str = "router"
    ) -> torch.Tensor:
        """Per-record loss (n,) of a mixture with these gate logits under ``head``'s objective."""
        scale = float(getattr(self, f"score_scale_{head}"))
        if scale > 0:
            return pooled_score_cross_entropy(gate_logits, P, y, scale)
        return -mixture_log_likelihood(gate_logits, P, y)

    def loss(self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over records of both heads' losses, plus the router's top-k loss if ``train_top_k``."""
        router_logits, weight_logits = self(X)
        per_record = self.head_loss(router_logits, P, y) + self.head_loss(weight_logits, P, y, "weights")
        k = int(self.train_top_k)
        if k:
            per_record = per_record + self.head_loss(top_k_logits(router_logits, k), P, y)
        return per_record.mean()

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
            logits = top_k_logits(logits, top_k)
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

    # --- its federated form (fedens.combiners.federated) ------------------------------------

    @classmethod
    def initial(cls, c: Mapping[str, Any], public: Any, experts: list, seed: int) -> GatedEnsemble:
        """Both heads at the uniform mean, the router on the public split's principal components,
        then (``pretrain_epochs``) its router head pretrained on the public split: no privacy spent."""
        from fedens.experts import expert_outputs

        model = cls.with_public_projection(public.X, len(experts), int(c["router_input_dim"]), seed,
                                           weights_objective=c["weights_objective"],
                                           train_top_k=c["train_top_k"])
        if int(c["pretrain_epochs"]) > 0:
            pretrain_router(model, public.X, expert_outputs(experts, public.inputs()), public.y,
                            int(c["pretrain_epochs"]), float(c["lr"]), int(c["batch_size"]), seed)
        return model

    def scores(self, P: np.ndarray, X: np.ndarray, y: np.ndarray, top_k: int | None = None
               ) -> dict[str, float]:
        """Accuracy and NLL of the router (dense and top-k) and of the global weights; the dense
        router's balanced accuracy (the mean of the per-class recalls) beside its accuracy."""
        from sklearn.metrics import balanced_accuracy_score

        dense = self.combine(P, X, "router")
        router_acc, router_nll = accuracy_and_nll(dense, y)
        topk_acc, _ = accuracy_and_nll(self.combine(P, X, "router", top_k=top_k or 1), y)
        weights_acc, weights_nll = accuracy_and_nll(self.combine(P, X, "weights"), y)
        return {"router_accuracy": router_acc, "router_nll": router_nll, "router_topk_accuracy": topk_acc,
                "router_balanced_accuracy": float(balanced_accuracy_score(y, dense.argmax(axis=1))),
                "weights_accuracy": weights_acc, "weights_nll": weights_nll}

    def central_reference(self, c: Mapping[str, Any], private: Any, P_private: np.ndarray,
                          test: Any, P_test: np.ndarray, seed: int) -> dict[str, float]:
        s = self.central_scores(c, private, P_private, test, P_test, seed)
        return {"central_nonprivate_accuracy": s["router_accuracy"],
                "central_nonprivate_nll": s["router_nll"],
                "central_nonprivate_router_accuracy": s["router_accuracy"],
                "central_nonprivate_router_topk_accuracy": s["router_topk_accuracy"],
                "central_nonprivate_weights_accuracy": s["weights_accuracy"]}

    def results(self, final: Mapping[str, Any], num_experts: int, c: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
        """The dense router's scores as the headline, the other heads beside them."""
        return {
            "metrics": {"test_accuracy": final["router_accuracy"], "test_nll": final["router_nll"],
                        "test_balanced_accuracy": final["router_balanced_accuracy"],
                        "router_topk_accuracy": final["router_topk_accuracy"],
                        "weights_accuracy": final["weights_accuracy"], "weights_nll": final["weights_nll"]},
            "cost": {"num_experts": num_experts,
                     "expert_calls_per_query": self.expert_calls_per_query(num_experts),
                     "expert_calls_per_query_topk": self.expert_calls_per_query(num_experts,
                                                                                 int(c["top_k"]))},
        }

    @classmethod
    def report_rows(cls, results: Mapping[str, Any], c: Mapping[str, Any]) -> list[Row]:
        m, b, K, k = results["metrics"], results["baselines"], results["cost"]["num_experts"], int(c["top_k"])
        return [("learned weights (federated, DP)", m["weights_accuracy"], K),
                ("router dense (federated, DP)", m["test_accuracy"], K),
                (f"router top-{k} (federated, DP)", m["router_topk_accuracy"], k),
                ("router dense (public only, ε = 0)", b["public_only_router_accuracy"], K),
                ("router dense (federated, no DP)",
                 b["federated_nonprivate_router_accuracy"], K),
                ("router dense (central, non-private)", b["central_nonprivate_router_accuracy"], K)]

    @classmethod
    def plot_series(cls, c: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        return [("router_accuracy", "router (dense), DP", "o-"),
                ("router_topk_accuracy", f"router top-{int(c['top_k'])}, DP", "s--"),
                ("weights_accuracy", "learned weights, DP", "^-")]

    @classmethod
    def progress_line(cls, row: Mapping[str, Any], c: Mapping[str, Any]) -> str:
        if row["round"] == 0:
            start = "public pretraining only" if int(c["pretrain_epochs"]) > 0 else "uniform"
            return (f"round  0/{row['num_rounds']}  {cls.kind} {row['router_accuracy']:.3f} "
                    f"(initial: {start}, no private record)")
        return (f"round {row['round']:2d}/{row['num_rounds']}  router {row['router_accuracy']:.3f}  "
                f"top-{int(c['top_k'])} {row['router_topk_accuracy']:.3f}  "
                f"weights {row['weights_accuracy']:.3f}  sites {row['sites_reporting']}  "
                f"ε_max {row['epsilon_max']:.2f}  [{row['elapsed_s']:.0f} s]")


def pretrain_router(
    module: GatedEnsemble,
    X_public: np.ndarray,
    P_public: np.ndarray,
    y_public: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> GatedEnsemble:
    """Train only the router head on *public* data, before private (DP) fine-tuning.

    The global-weights head stays as it was (zero: uniform). Public data costs no
    privacy, and a router that already ranks the experts survives DP-SGD's noise:
    in the quickstart this is what keeps top-k routing near the dense router.
    Expert outputs on the public split are in-sample for experts trained on it
    (optimistic for k-NN and trees); the private fine-tuning corrects for that.
    """
    frozen = [p for p in module.weights.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        torch.manual_seed(seed)
        dataset = combiner_dataset(X_public, P_public, y_public)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        run_epochs(module, torch.optim.Adam(module.router.parameters(), lr=lr), loader, epochs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return module
