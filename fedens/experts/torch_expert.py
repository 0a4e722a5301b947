"""Adapter for a torch ``nn.Module`` that outputs logits or probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_int, check_num_classes, check_probabilities


@register_expert("torch")
@dataclass(eq=False)
class TorchExpert:
    """A torch module mapping a batch of inputs to ``num_classes`` scores, as an expert.

    Inputs are run in batches of ``batch_size`` in eval mode without gradients (the
    module's training flag is restored afterwards). ``outputs="logits"`` applies a
    softmax; ``outputs="probabilities"`` checks the module's rows are probabilities.

    Examples
    --------
    >>> import numpy as np, torch
    >>> e = TorchExpert(torch.nn.Linear(4, 3), num_classes=3, name="linear")
    >>> e.predict_proba(np.zeros((5, 4), dtype=np.float32)).shape
    (5, 3)
    """

    module: nn.Module
    num_classes: int
    name: str
    outputs: Literal["logits", "probabilities"] = "logits"
    batch_size: int = 1024
    cost: float = 1.0
    site: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"expert {self.name!r}: module must be a torch nn.Module, got {self.module!r}")
        if self.outputs not in ("logits", "probabilities"):
            raise ValueError(
                f"expert {self.name!r}: outputs must be 'logits' or 'probabilities', got {self.outputs!r}"
            )
        self.batch_size = check_int(self.batch_size, "batch_size", self.name)
        self.num_classes = check_num_classes(self.num_classes, self.name)
        self.cost = check_cost(self.cost, self.name)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        X_t = torch.as_tensor(np.asarray(X), dtype=dtype)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                chunks = [
                    self.module(X_t[i : i + self.batch_size].to(device)).double().cpu()
                    for i in range(0, len(X_t), self.batch_size)
                ]
        finally:
            self.module.train(was_training)
        out = torch.cat(chunks) if chunks else torch.zeros(0, self.num_classes, dtype=torch.float64)
        if self.outputs == "logits":
            # softmax in float64 of finite logits; NaN/inf logits are reported below
            out = torch.softmax(out, dim=-1) if out.ndim == 2 else out
            return check_probabilities(out.numpy(), self.name, len(X_t), self.num_classes)
        P = check_probabilities(out.numpy(), self.name, len(X_t), self.num_classes)
        return P / P.sum(axis=1, keepdims=True)  # remove float32 round-off
