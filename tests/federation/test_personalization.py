"""A site's choice between the global combiner and its fine-tuned one, by cross-validation on
its own training records (fedens.federation.ensemble.personalization)."""

import numpy as np
import torch

from fedens.combiners import GatedEnsemble
from fedens.federation import layout as L
from fedens.federation.ensemble.personalization import FOLDS, validation_gain

SETTINGS = {L.PERSONAL_EPOCHS: 30, L.LEARNING_RATE: 1.0, L.BATCH_SIZE: 8}


def two_experts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expert 0 always right, expert 1 always wrong, on n records of 3 classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    P = np.full((n, 2, 3), 0.05, dtype=np.float32)
    P[np.arange(n), 0, y] = 0.9
    P[np.arange(n), 1, (y + 1) % 3] = 0.9
    return rng.normal(size=(n, 4)).astype(np.float32), P, y


def gated_towards(expert: int) -> GatedEnsemble:
    model = GatedEnsemble(num_features=4, num_experts=2)
    with torch.no_grad():
        model.router.bias[expert] = 5.0
    return model


def test_fine_tuning_that_fixes_a_wrong_global_router_is_chosen():
    X, P, y = two_experts(40)
    gain = validation_gain(gated_towards(1), X, P, y, SETTINGS, seed=0)
    assert gain is not None and gain > 0.5  # the global router is always wrong here


def test_a_global_router_that_is_already_right_is_kept():
    X, P, y = two_experts(40)
    assert validation_gain(gated_towards(0), X, P, y, SETTINGS, seed=0) == 0.0


def test_too_few_records_to_cross_validate_give_no_gain():
    X, P, y = two_experts(FOLDS - 1)
    assert validation_gain(gated_towards(1), X, P, y, SETTINGS, seed=0) is None
