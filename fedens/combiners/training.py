"""One training loop for learned combiners, used centrally and at every site.

The loop knows nothing of privacy: for DP-SGD the caller passes the module,
optimizer and data loader already wrapped by Opacus (``fedens.privacy``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

M = TypeVar("M", bound=torch.nn.Module)


def combiner_dataset(X: np.ndarray, P: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Records (x, expert outputs on x, label) as a torch dataset."""
    return TensorDataset(
        torch.as_tensor(X, dtype=torch.float32),
        torch.as_tensor(P, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.int64),
    )


def run_epochs(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    epochs: int,
    after_step: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Train ``module.loss`` for ``epochs`` passes; returns (steps, mean loss).

    ``after_step`` runs after every optimizer step (e.g. FedProx's proximal pull).
    """
    loss_fn = module._module.loss if hasattr(module, "_module") else module.loss
    steps, total = 0, 0.0
    module.train()
    for _ in range(epochs):
        for X, P, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(X, P, y) if len(y) else None
            if loss is not None:
                loss.backward()
                total += loss.item()
            optimizer.step()  # Opacus' DPOptimizer also noises empty Poisson batches
            if after_step is not None:
                after_step()
            steps += 1
    return steps, total / max(steps, 1)


def make_optimizer(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer every learned combiner uses (centrally and at sites)."""
    return torch.optim.Adam(module.parameters(), lr=lr)


def training_seed(seed: int, site: int, server_round: int) -> int:
    """The torch seed of a site's local training in a round (at a site: its Poisson batches and
    noise; in the non-private federation reference: its shuffles)."""
    return seed * 1000 + site * 100 + server_round


def train_combiner(
    module: M,
    X: np.ndarray,
    P: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> M:
    """Non-private central training of a learned combiner (its ``loss``): the reference a
    federated run is compared to, and (with ``batch_size = len(y)``) the pools' full-batch fit."""
    torch.manual_seed(seed)
    loader = DataLoader(combiner_dataset(X, P, y), batch_size=batch_size, shuffle=True)
    run_epochs(module, make_optimizer(module, lr), loader, epochs)
    return module


train_gated_ensemble = train_combiner  # the name it had when the router was the only learned combiner
