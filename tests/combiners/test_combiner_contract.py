"""One contract suite over every registered combiner.

Each entry builds a combiner over K experts and says how to call it, how to
rebuild it for permuted experts (its parameters permuted accordingly; learned
combiners are tested with their fitted weights permuted, not refitted, because
refitting on permuted data is equivariant only up to float summation order),
and what it answers when all experts agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from fedens.combiners import (
    COMBINERS,
    CascadeCombiner,
    GatedEnsemble,
    LogLinearPool,
    MeanCombiner,
    StackingCombiner,
    VoteCombiner,
)

N, K, C, D = 12, 4, 3, 2
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype(np.float32)
COSTS = np.array([3.0, 1.0, 4.0, 2.0])  # distinct, so the cascade's order is permutation-equivariant


def dirichlet(n=N, k=K, c=C, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(c), size=(n, k))


def one_hot(n=N, k=K, c=C, seed=1):
    return np.eye(c)[np.random.default_rng(seed).integers(0, c, size=(n, k))]


@dataclass
class Spec:
    make: Callable[[], Any]
    permute: Callable[[Any, np.ndarray], Any]
    identical: Callable[[np.ndarray], np.ndarray]  # the answer when every expert gives p
    run: Callable[[Any, np.ndarray], np.ndarray] = lambda c, P: c.combine(P)
    calls: Callable[[Any, np.ndarray], float] = lambda c, P: c.expert_calls_per_query(P.shape[1])
    make_for_identical: Callable[[], Any] | None = None


def fit_data():
    P = dirichlet(60, seed=3)
    y = np.random.default_rng(4).integers(0, C, size=60)
    return P, y


def make_log_linear():
    return LogLinearPool().fit(*fit_data(), epochs=30, lr=0.1, seed=0)


def make_stacking():
    return StackingCombiner().fit(*fit_data(), epochs=30, lr=0.1, seed=0)


def make_cascade():
    return CascadeCombiner(COSTS, threshold=0.6)


def make_gated():
    torch.manual_seed(0)
    model = GatedEnsemble(num_features=D, num_experts=K)
    torch.nn.init.normal_(model.router.weight)
    torch.nn.init.normal_(model.router.bias)
    return model


def permute_gated(model, perm):
    permuted = GatedEnsemble(num_features=D, num_experts=K)
    state = model.state_dict()
    state = {k: (v[perm] if k.startswith(("router", "weights")) else v) for k, v in state.items()}
    permuted.load_state_dict(state)
    return permuted


def vote_identical(p):
    return np.eye(p.shape[1])[p.argmax(axis=1)]


SPECS: dict[str, Spec] = {
    "mean": Spec(MeanCombiner, lambda c, perm: c, lambda p: p),
    "vote": Spec(VoteCombiner, lambda c, perm: c, vote_identical),
    "log_linear": Spec(
        make_log_linear, lambda c, perm: LogLinearPool(c.weight_logits[perm], c.log_floor), lambda p: p
    ),
    "stacking": Spec(
        make_stacking,
        lambda c, perm: StackingCombiner(c.weight_logits[perm], c.temperatures[perm], c.log_floor),
        lambda p: p,
        # fitted temperatures recalibrate an expert's answer by design; agreement is tested at T = 1
        make_for_identical=lambda: StackingCombiner(RNG.normal(size=K), np.ones(K)),
    ),
    "cascade": Spec(
        make_cascade,
        lambda c, perm: CascadeCombiner(c.costs[perm], c.threshold),
        lambda p: p,
        calls=lambda c, P: c.expert_calls_per_query(P),
    ),
    "gated_ensemble": Spec(
        make_gated,
        permute_gated,
        lambda p: p,
        run=lambda c, P: c.combine(P, X[: len(P)], "router"),
        calls=lambda c, P: c.expert_calls_per_query(P.shape[1]),
    ),
}
KEYS = sorted(SPECS)


def test_the_suite_covers_every_registered_combiner():
    assert set(SPECS) == set(COMBINERS)


@pytest.mark.parametrize("key", KEYS)
def test_registered_class(key):
    assert type(SPECS[key].make()) is COMBINERS[key]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("outputs", [dirichlet, one_hot], ids=["dirichlet", "one_hot"])
def test_output_is_a_distribution_per_query(key, outputs):
    spec = SPECS[key]
    P = outputs()
    P[0] = 0.0  # exact zeros for every class but one
    P[0, :, 1] = 1.0
    out = spec.run(spec.make(), P)
    assert out.shape == (N, C)
    assert np.isfinite(out).all()
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("outputs", [dirichlet, one_hot], ids=["dirichlet", "one_hot"])
def test_identical_experts_give_that_experts_answer(key, outputs):
    spec = SPECS[key]
    p = outputs(k=1)[:, 0]
    P = np.repeat(p[:, None, :], K, axis=1)
    combiner = (spec.make_for_identical or spec.make)()
    # 1e-5: the log pools floor zeros at 1e-6 before renormalising
    np.testing.assert_allclose(spec.run(combiner, P), spec.identical(p), atol=1e-5)


@pytest.mark.parametrize("key", KEYS)
def test_permuting_the_experts_changes_nothing(key):
    spec = SPECS[key]
    P = dirichlet()
    combiner = spec.make()
    perm = np.array([2, 0, 3, 1])
    permuted = spec.permute(combiner, perm)
    np.testing.assert_allclose(spec.run(permuted, P[:, perm]), spec.run(combiner, P), rtol=1e-6, atol=1e-7)
    assert spec.calls(permuted, P[:, perm]) == spec.calls(combiner, P)


@pytest.mark.parametrize("key", KEYS)
def test_save_load_round_trips_exactly(key, tmp_path):
    spec = SPECS[key]
    combiner = spec.make()
    path = tmp_path / f"{key}.combiner"
    combiner.save(path)
    assert path.exists()
    loaded = type(combiner).load(path)
    P = dirichlet()
    np.testing.assert_array_equal(spec.run(loaded, P), spec.run(combiner, P))
    assert spec.calls(loaded, P) == spec.calls(combiner, P)


@pytest.mark.parametrize("key", KEYS)
def test_expert_calls_per_query_is_between_one_and_k(key):
    spec = SPECS[key]
    calls = spec.calls(spec.make(), dirichlet())
    assert isinstance(calls, float) and 1.0 <= calls <= K


BAD = {
    "empty expert axis": (np.ones((N, 0, C)), r"\(n, K>=1, C>=1\), got \(12, 0, 3\)"),
    "nan": (
        np.where(np.arange(C) == 1, np.nan, dirichlet()),
        r"finite, got nan at \[query 0, expert 0, class 1\]",
    ),
    "negative": (dirichlet() - 0.5, r"non-negative probabilities, got -"),
    "class counts differ": (
        [dirichlet(k=1)[:, 0], dirichlet(k=1, c=C + 1)[:, 0]] + [dirichlet(k=1)[:, 0]] * (K - 2),
        r"expert 1 has shape \(12, 4\) \(C=4\) but expert 0 has \(12, 3\) \(C=3\)",
    ),
}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_expert_outputs_raise_a_one_line_error_naming_the_value(key, case):
    spec = SPECS[key]
    bad, message = BAD[case]
    with pytest.raises(ValueError, match=message) as error:
        spec.run(spec.make(), bad)
    assert "\n" not in str(error.value)
