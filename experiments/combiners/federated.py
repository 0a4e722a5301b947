"""The quickstart's federated DP training of a GatedEnsemble, in one process, without Flower.

Each round every site wraps a copy of the global combiner in Opacus DP-SGD
(``fedens.privacy.dpsgd.make_private_training``, noise calibrated once with
dp-accounting so all rounds spend at most ``epsilon`` at ``delta``), trains one
local epoch with ``fedens.combiners.training.run_epochs``, and the coordinator
averages the parameters weighted by record counts (FedAvg): the same steps as
the ClientApp and ServerApp, minus messaging, ledgers and Ray. It exists so the
combiner table can show DP numbers in seconds; the real run is ``./scripts/run``.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from fedens.combiners import GatedEnsemble
from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs
from fedens.privacy import calibrate_dpsgd_noise
from fedens.privacy.dpsgd import make_private_training, sample_rate_for


def federate(
    initial: GatedEnsemble,
    X: np.ndarray,
    P: np.ndarray,
    y: np.ndarray,
    sites: list[np.ndarray],
    seed: int,
    epsilon: float = 8.0,
    delta: float = 1e-5,
    rounds: int = 10,
    lr: float = 0.05,
    batch_size: int = 32,
    max_grad_norm: float = 1.0,
) -> GatedEnsemble:
    """FedAvg over ``sites`` (record indices into X, P, y) of per-site DP-SGD; returns the global model."""
    model = copy.deepcopy(initial)
    sigmas: dict[int, float] = {}
    for r in range(1, rounds + 1):
        states, sizes = [], []
        for s, records in enumerate(sites):
            rate = sample_rate_for(len(records), batch_size)
            steps = round(1 / rate)
            if s not in sigmas:
                sigmas[s] = calibrate_dpsgd_noise(epsilon, delta, rate, steps * rounds)
            torch.manual_seed(seed * 1000 + s * 100 + r)
            local = copy.deepcopy(initial)
            local.load_trainable(model.trainable_state())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus' notes on secure RNG and hooks
                private = make_private_training(
                    local, make_optimizer(local, lr), combiner_dataset(X[records], P[records], y[records]),
                    batch_size=batch_size, noise_multiplier=sigmas[s], max_grad_norm=max_grad_norm,
                )
                run_epochs(private.module, private.optimizer, private.loader, 1)
            states.append(local.trainable_state())
            sizes.append(len(records))
        w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        average = {k: sum(float(wi) * st[k] for wi, st in zip(w, states, strict=True)) for k in states[0]}
        model.load_trainable(average)
    return model
