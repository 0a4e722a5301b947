"""Pooled cascades: each stage but the last answers with the mean of the experts called so far."""

from __future__ import annotations

import numpy as np
import pytest

from fedens.combiners import CascadeCombiner, choose_grid
from fedens.combiners.cascade import GRIDS


def reference(P: np.ndarray, costs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query by query, obviously: (answers, cost paid per query)."""
    chain = [k for k in np.argsort(costs, kind="stable") if np.isfinite(thresholds[k])]
    answers, paid = [], []
    for p in P:
        called: list[int] = []
        for k in chain:
            called.append(k)
            last = len(called) == len(chain)
            answer = p[k] if last else p[called].mean(axis=0)
            if last or answer.max() >= thresholds[k]:
                answers.append(answer)
                paid.append(costs[called].sum())
                break
    return np.array(answers), np.array(paid)


def test_disagreeing_cheap_experts_escalate_where_a_plain_cascade_would_stop():
    # cheapest first: expert 0 unsure (0.7 < 0.8), expert 1 sure of the *other* class
    P = np.array([[[0.7, 0.3], [0.15, 0.85], [0.9, 0.1]]])
    costs, t = [1.0, 2.0, 10.0], [0.8, 0.8, 0.0]
    plain, pooled = CascadeCombiner(costs, t), CascadeCombiner(costs, t, pooled=True)
    np.testing.assert_allclose(plain.combine(P), [[0.15, 0.85]])  # expert 1 alone stops it
    np.testing.assert_allclose(pooled.combine(P), [[0.9, 0.1]])  # the pool (0.425, 0.575) does not
    assert plain.cost_per_query(P) == 3.0 and pooled.cost_per_query(P) == 13.0
    # agreeing cheap experts stop it, answered by their mean
    agree = np.array([[[0.7, 0.3], [0.95, 0.05], [0.1, 0.9]]])
    np.testing.assert_allclose(pooled.combine(agree), [[0.825, 0.175]])
    assert pooled.expert_calls_per_query(agree) == 2.0


@pytest.mark.parametrize("seed", range(4))
def test_pooled_cascade_matches_a_query_by_query_reference(seed):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(4) * 0.5, size=(50, 5))
    costs = rng.uniform(1, 10, size=5)
    thresholds = rng.uniform(0.3, 0.9, size=5)
    thresholds[rng.integers(0, 5)] = np.inf
    cascade = CascadeCombiner(costs, thresholds, pooled=True)
    answers, paid = reference(P, costs, thresholds)
    np.testing.assert_allclose(cascade.combine(P), answers, rtol=1e-12)
    assert cascade.cost_per_query(P) == pytest.approx(paid.mean(), rel=1e-12)
    assert np.isfinite(cascade.combine(P)).all()
    np.testing.assert_allclose(cascade.combine(P).sum(axis=1), 1.0)


def test_pooled_cascade_contract_identical_experts_and_permutation():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(3), size=20)
    P = np.repeat(p[:, None], 4, axis=1)
    costs, t = np.array([3.0, 1.0, 4.0, 2.0]), np.array([0.6, 0.7, 0.0, 0.5])
    np.testing.assert_allclose(CascadeCombiner(costs, t, pooled=True).combine(P), p)
    Q = rng.dirichlet(np.ones(3), size=(20, 4))
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(CascadeCombiner(costs[perm], t[perm], pooled=True).combine(Q[:, perm]),
                               CascadeCombiner(costs, t, pooled=True).combine(Q))


def test_pooled_flag_round_trips_through_files_and_state(tmp_path):
    cascade = CascadeCombiner([1.0, 2.0, 3.0], [0.7, np.inf, 0.0], pooled=True)
    cascade.save(tmp_path / "c.npz")
    assert CascadeCombiner.load(tmp_path / "c.npz").pooled is True
    assert CascadeCombiner.from_state_dict(cascade.state_dict()).pooled is True
    # files written before pooling existed load as plain cascades
    np.savez(tmp_path / "old.npz", combiner="cascade", costs=cascade.costs, order=cascade.order,
             threshold=cascade.threshold)
    assert CascadeCombiner.load(tmp_path / "old.npz").pooled is False


def test_pooled_calibration_reports_what_it_reaches_and_histograms_refuse_it():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=300)
    noisy = lambda acc: np.where(rng.random(300) < acc, y, rng.integers(0, 3, size=300))  # noqa: E731
    P = np.stack([np.eye(3)[noisy(a)] * 0.6 + 0.4 / 3 for a in (0.7, 0.7, 0.7, 0.9)], axis=1)
    costs = np.array([1.0, 1.0, 1.0, 20.0])
    target = float((P[:, 3].argmax(1) == y).mean())
    cascade = CascadeCombiner(pooled=True).calibrate(P, y, costs=costs, target_accuracy=target,
                                                     per_expert=True)
    assert cascade.validation_accuracy == pytest.approx(float((cascade.combine(P).argmax(1) == y).mean()))
    assert cascade.validation_accuracy >= target
    assert cascade.cost_per_query(P) == pytest.approx(cascade.validation_cost)
    name, held_out = choose_grid(P, y, costs, seed=0, pooled=True)
    assert name in GRIDS and set(held_out) == set(GRIDS)
    with pytest.raises(ValueError, match="calibrate a pooled cascade with calibrate"):
        cascade.calibrate_selective(P, y, GRIDS["coarse"])
    with pytest.raises(ValueError, match="pooled must be True or False, got 'yes'"):
        CascadeCombiner(costs, pooled="yes")
