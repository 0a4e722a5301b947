"""The non-private federation reference (FederatedForm.federated_nonprivate): FedAvg of plain local
training, weighted by the sites' record counts, started from the form every site starts from."""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedens.combiners import CascadeCombiner, GatedEnsemble
from fedens.combiners.cascade import GRIDS
from fedens.combiners.training import train_combiner

CONFIG = {"local_epochs": 2, "lr": 0.05, "batch_size": 8}


def site(n, seed, K=4, C=3, D=3):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(C), size=(n, K)).astype(np.float32)
    return rng.normal(size=(n, D)).astype(np.float32), P, rng.integers(0, C, size=n)


def test_one_round_is_the_record_weighted_mean_of_each_sites_own_training():
    start = GatedEnsemble(num_features=3, num_experts=4)
    sites = [site(30, 1), site(10, 2)]
    model = start.federated_nonprivate(CONFIG, sites, rounds=1, seed=5)
    local = [train_combiner(copy.deepcopy(start), X, P, y, 2, 0.05, 8, seed=5 * 1000 + k * 100 + 1)
             .trainable_state() for k, (X, P, y) in enumerate(sites)]
    for name, value in model.trainable_state().items():
        torch.testing.assert_close(value, 0.75 * local[0][name] + 0.25 * local[1][name])
    assert not torch.equal(model.trainable_state()["router.weight"], start.trainable_state()["router.weight"])
    # the start is left as it was, and more rounds move further
    two = start.federated_nonprivate(CONFIG, sites, rounds=2, seed=5)
    assert not torch.equal(two.trainable_state()["router.weight"], model.trainable_state()["router.weight"])


def test_the_cascade_without_noise_is_calibrated_on_every_sites_records():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(3) * 0.3, size=(300, 3))
    y = P[:, 2].argmax(axis=1)
    c = {"grid": next(iter(GRIDS)), "target_margin": 0.0, "min_count": 5.0}
    start = CascadeCombiner([1.0, 2.0, 4.0])
    sites = [(None, P[:100], y[:100]), (None, P[100:], y[100:])]
    federated = start.federated_nonprivate(c, sites, rounds=10, seed=0)
    central = copy.deepcopy(start).calibrate_selective(P, y, GRIDS[c["grid"]], margin=0.0, min_count=5.0)
    np.testing.assert_array_equal(np.asarray(federated.threshold), np.asarray(central.threshold))
