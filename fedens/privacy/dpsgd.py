"""Opacus DP-SGD for a site's local training, with one accountant across rounds.

Flower builds a fresh ClientApp for every message, so the site's accountant
history travels in its ``Context.state`` between rounds and is loaded into
each round's ``PrivacyEngine`` before training; the engine is new, the
accountant's history is not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from torch.utils.data import DataLoader, Dataset

AccountantHistory = list[tuple[float, float, int]]


@dataclass
class PrivateTraining:
    """A module, optimizer and Poisson-sampled loader wrapped by Opacus."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    engine: PrivacyEngine

    def accountant_history(self) -> AccountantHistory:
        return [(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history]

    def opacus_epsilon(self, delta: float) -> float:
        """Opacus's own RDP epsilon over the whole history (a cross-check of the ledger's).

        What ``RDPAccountant.get_epsilon`` computes, with Opacus' own functions, order for order:
        the sum over the history of ``compute_rdp(q, sigma, steps)`` (which is ``steps`` times
        the one-step curve, kept here per ``(q, sigma)``: a site's rounds repeat it), then
        ``get_privacy_spent``."""
        history = self.engine.accountant.history
        if not history:
            return 0.0
        rdp = sum([_opacus_step_rdp(float(q), float(sigma)) * int(steps) for sigma, q, steps in history])
        eps, _ = opacus_rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)


@functools.lru_cache(maxsize=256)
def _opacus_step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """Opacus' RDP curve of one DP-SGD step over its accountant's default orders."""
    return opacus_rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                  orders=RDPAccountant.DEFAULT_ALPHAS)


def sample_rate_for(num_records: int, batch_size: int) -> float:
    """Opacus' Poisson sampling rate for a loader of this size: 1 / number of batches."""
    return 1.0 / len(DataLoader(range(num_records), batch_size=batch_size))


def make_private_training(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    *,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    history: AccountantHistory | None = None,
) -> PrivateTraining:
    """Wrap a site's training in Opacus DP-SGD, resuming the accountant's ``history``."""
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(history or [])
    module, optimizer, loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=DataLoader(dataset, batch_size=batch_size),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    return PrivateTraining(module, optimizer, loader, engine)
