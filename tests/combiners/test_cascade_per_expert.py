"""Cascades with per-expert thresholds (``inf`` skips an expert) and their calibration."""

from __future__ import annotations

import numpy as np
import pytest

from fedens.combiners import CascadeCombiner, choose_grid
from fedens.combiners.cascade import GRIDS


def test_per_expert_thresholds_skip_inf_experts_and_stop_at_the_first_confident_one():
    P = np.array([
        [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]],  # expert 1 (cheapest) stops at 0.6
        [[0.9, 0.1], [0.55, 0.45], [0.4, 0.6], [0.2, 0.8]],  # 1 unsure, 0 skipped, 2 unsure -> 3
    ])
    cascade = CascadeCombiner(costs=[2.0, 1.0, 3.0, 10.0], threshold=[np.inf, 0.6, 0.7, 0.0])
    np.testing.assert_array_equal(cascade.combine(P), [[0.6, 0.4], [0.2, 0.8]])
    assert cascade.expert_calls_per_query(P) == 2.0  # (1 + 3) / 2: expert 0 is never called
    assert cascade.cost_per_query(P) == (1.0 + 14.0) / 2


def overconfident_cheap_expert(n=400, seed=0):
    """Expert 0 (cost 1): always certain, right half the time. Expert 1 (cost 2): right and
    confident on 'easy' queries, unsure otherwise. Expert 2 (cost 40): right 95% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    easy = rng.random(n) < 0.6
    P = np.empty((n, 3, 2))
    P[:, 0] = np.eye(2)[rng.integers(0, 2, size=n)]
    P[:, 1] = 0.5
    P[easy, 1] = np.eye(2)[y[easy]] * 0.9 + 0.05
    right = rng.random(n) < 0.95
    P[:, 2] = np.eye(2)[np.where(right, y, 1 - y)] * 0.8 + 0.1
    return P, y, np.array([1.0, 2.0, 40.0])


def test_per_expert_calibration_reaches_the_target_on_validation_at_the_reported_cost():
    P, y, costs = overconfident_cheap_expert()
    target = float((P[:, 2].argmax(1) == y).mean())  # the best single expert's accuracy
    cascade = CascadeCombiner().calibrate(P, y, costs=costs, target_accuracy=target, per_expert=True)
    accuracy = float((cascade.combine(P).argmax(1) == y).mean())
    assert accuracy >= target and accuracy == cascade.validation_accuracy
    assert cascade.cost_per_query(P) == pytest.approx(cascade.validation_cost)
    assert cascade.validation_cost <= 0.5 * costs[2]  # easy queries stop at expert 1
    assert cascade.threshold[0] == np.inf  # the overconfident expert is skipped, so never paid for


def test_a_shared_threshold_cannot_skip_the_overconfident_expert():
    P, y, costs = overconfident_cheap_expert()
    target = float((P[:, 2].argmax(1) == y).mean())
    with pytest.warns(UserWarning, match="no threshold reaches"):
        shared = CascadeCombiner().calibrate(P, y, costs=costs, target_accuracy=target)
    per_expert = CascadeCombiner().calibrate(P, y, costs=costs, target_accuracy=target, per_expert=True)
    assert shared.validation_accuracy < target <= per_expert.validation_accuracy


def test_per_expert_calibration_never_costs_more_than_the_best_expert_alone():
    rng = np.random.default_rng(3)
    for _ in range(5):
        P = rng.dirichlet(np.ones(3) * 0.3, size=(200, 4))
        y = rng.integers(0, 3, size=200)
        costs = rng.uniform(1, 10, size=4)
        best = int(np.argmax([(P[:, k].argmax(1) == y).mean() for k in range(4)]))
        target = float((P[:, best].argmax(1) == y).mean())
        cascade = CascadeCombiner().calibrate(P, y, costs=costs, target_accuracy=target, per_expert=True)
        assert cascade.validation_accuracy >= target
        assert cascade.cost_per_query(P) <= costs[best] + 1e-12


def test_per_expert_thresholds_round_trip(tmp_path):
    cascade = CascadeCombiner(costs=[1.0, 2.0, 3.0], threshold=[0.7, np.inf, 0.0])
    cascade.save(tmp_path / "c.npz")
    loaded = CascadeCombiner.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(loaded.threshold, cascade.threshold)
    P = np.random.default_rng(0).dirichlet(np.ones(2), size=(10, 3))
    np.testing.assert_array_equal(loaded.combine(P), cascade.combine(P))


@pytest.mark.parametrize("call, message", [
    (lambda: CascadeCombiner(threshold=[0.5, 1.5]), r"threshold of expert 1 must be in \[0, 1\] or inf"),
    (lambda: CascadeCombiner(threshold=[np.inf, np.inf]), "at least one expert's threshold must be finite"),
    (lambda: CascadeCombiner(costs=[1.0, 2.0], threshold=[0.5, 0.5, 0.5]),
     "threshold has 3 entries but costs has 2"),
    (lambda: CascadeCombiner(threshold=[0.5, 0.5]).combine(np.full((1, 3, 2), 0.5)), "built for 2 experts"),
    (lambda: CascadeCombiner().calibrate(*overconfident_cheap_expert()[:2], max_cost=5.0, per_expert=True),
     "per-expert calibration takes target_accuracy, got max_cost=5.0"),
])
def test_bad_per_expert_settings_raise_a_one_line_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_choose_grid_picks_a_grid_whose_held_out_cascade_keeps_the_best_experts_accuracy():
    P, y, costs = overconfident_cheap_expert(n=600)
    name, held_out = choose_grid(P, y, costs, seed=0)
    assert set(held_out) == set(GRIDS) and name in GRIDS
    gap, cost = held_out[name]
    assert gap >= 0 and cost <= 0.5 * costs[2]
    assert cost == min(c for g, c in held_out.values() if g >= 0)
