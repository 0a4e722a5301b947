"""Behaviour of the log-linear pool, stacking and the cascade beyond the contract."""

from __future__ import annotations

import numpy as np
import pytest

from fedens.combiners import CascadeCombiner, GatedEnsemble, LogLinearPool, MeanCombiner, StackingCombiner


def nll(Q, y):
    return -np.mean(np.log(Q[np.arange(len(y)), y]))


def one_good_expert(n=200, K=3, C=4, seed=0):
    """Expert 0 is right 90% of the time; the others are noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=n)
    P = rng.dirichlet(np.ones(C), size=(n, K))
    right = rng.random(n) < 0.9
    P[right, 0] = 0.02
    P[right, 0, y[right]] = 1 - 0.02 * (C - 1)
    return P, y


@pytest.mark.parametrize("cls", [LogLinearPool, StackingCombiner])
def test_fitting_beats_the_uniform_mean_and_weights_the_good_expert(cls):
    P, y = one_good_expert()
    fitted = cls().fit(P, y, epochs=200, lr=0.05, seed=0)
    assert nll(fitted.combine(P), y) < nll(MeanCombiner().combine(P), y)
    assert fitted.weights().argmax() == 0


@pytest.mark.parametrize("cls", [LogLinearPool, StackingCombiner])
def test_fitting_is_reproducible(cls):
    P, y = one_good_expert()
    a = cls().fit(P, y, epochs=20, seed=3).combine(P)
    np.testing.assert_array_equal(a, cls().fit(P, y, epochs=20, seed=3).combine(P))


@pytest.mark.parametrize("cls", [LogLinearPool, StackingCombiner])
def test_bad_fit_arguments_name_the_value(cls):
    P, y = one_good_expert()
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 4\), got \[7\]"):
        cls().fit(P, np.where(np.arange(len(y)) == 0, 7, y))
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        cls().fit(P, y, epochs=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        cls().fit(P, y, lr=-1.0)
    with pytest.raises(ValueError, match="log_floor must be in"):
        cls(log_floor=0.0)
    fitted = cls().fit(P, y, epochs=2)
    with pytest.raises(ValueError, match="built for 3 experts, got outputs of 2 experts"):
        fitted.combine(P[:, :2])


def test_stacking_rejects_non_positive_temperatures():
    with pytest.raises(ValueError, match=r"temperatures must be .* > 0, got"):
        StackingCombiner(temperatures=[1.0, 0.0])


def test_cascade_stops_at_the_first_confident_expert_cheapest_first():
    P = np.array([
        [[0.5, 0.5], [0.7, 0.3], [0.1, 0.9]],  # expert 1 unsure, expert 0 unsure -> expert 2
        [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]],
    ])
    cascade = CascadeCombiner(costs=[2.0, 1.0, 5.0], threshold=0.8)  # order: 1, 0, 2
    np.testing.assert_array_equal(cascade.combine(P), [[0.1, 0.9], [0.9, 0.1]])
    assert cascade.expert_calls_per_query(P) == 2.5  # 3 calls, then 2
    assert cascade.cost_per_query(P) == (8.0 + 3.0) / 2


def test_cascade_ties_in_cost_go_by_index_and_the_last_always_answers():
    P = np.full((1, 3, 2), 0.5)
    P[0, 2] = [0.4, 0.6]
    cascade = CascadeCombiner(costs=[1.0, 1.0, 1.0], threshold=0.99)
    np.testing.assert_array_equal(cascade.order, [0, 1, 2])
    np.testing.assert_array_equal(cascade.combine(P), [[0.4, 0.6]])
    assert cascade.expert_calls_per_query(P) == 3.0


def cascade_data(n=300, seed=0):
    """Expert 0: cheap, confident and right on 'easy' queries, unsure on the rest;
    expert 1: expensive, always right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    easy = rng.random(n) < 0.7
    P = np.empty((n, 2, 2))
    P[:, 0] = 0.5
    P[easy, 0, :] = 0.05
    P[easy, 0, y[easy]] = 0.95
    P[:, 1] = 0.2
    P[np.arange(n), 1, y] = 0.8
    return P, y, easy


def test_calibrate_picks_the_cheapest_threshold_reaching_the_target():
    P, y, easy = cascade_data()
    cascade = CascadeCombiner().calibrate(P, y, costs=[1.0, 10.0], target_accuracy=1.0)
    assert 0.5 < cascade.threshold <= 0.95  # escalate exactly the unsure queries
    assert np.mean(cascade.combine(P).argmax(1) == y) == 1.0
    assert cascade.cost_per_query(P) == pytest.approx(1 + 10 * np.mean(~easy))


def test_calibrate_under_max_cost_picks_the_most_accurate_affordable_threshold():
    P, y, _ = cascade_data()
    cheap = CascadeCombiner().calibrate(P, y, costs=[1.0, 10.0], max_cost=1.0)
    assert cheap.cost_per_query(P) == 1.0
    with pytest.raises(ValueError, match=r"max_cost=0.5 is below the cheapest cascade's cost per query 1"):
        CascadeCombiner().calibrate(P, y, costs=[1.0, 10.0], max_cost=0.5)


def test_calibrate_warns_when_no_threshold_reaches_the_target():
    P, y, _ = cascade_data()
    P[:, 1] = P[:, 1, ::-1]  # the expensive expert is now always wrong
    with pytest.warns(UserWarning, match="no threshold reaches target_accuracy=1.0"):
        CascadeCombiner().calibrate(P, y, costs=[1.0, 10.0], target_accuracy=1.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: CascadeCombiner(threshold=1.5), r"threshold must be in \[0, 1\], got 1.5"),
        (lambda: CascadeCombiner(threshold=-0.1), r"threshold must be in \[0, 1\], got -0.1"),
        (lambda: CascadeCombiner(costs=[1.0, 0.0]), "must be finite and > 0, got cost 0.0 for expert 1"),
        (lambda: CascadeCombiner(costs=[-2.0]), "got cost -2.0 for expert 0"),
        (lambda: CascadeCombiner(costs=[1.0, 2.0]).combine(np.full((1, 3, 2), 0.5)), "built for 2 experts"),
        (lambda: CascadeCombiner().expert_calls_per_query(np.zeros((0, 2, 2))), "got n=0"),
        (lambda: CascadeCombiner().calibrate(*cascade_data()[:2]), "exactly one of target_accuracy"),
        (lambda: CascadeCombiner().calibrate(*cascade_data()[:2], target_accuracy=1.2), "got 1.2"),
        (lambda: CascadeCombiner().calibrate(*cascade_data()[:2], max_cost=0.0), "max_cost must be"),
        (lambda: CascadeCombiner().calibrate(*cascade_data()[:2], max_cost=5, grid=[0.5, 2.0]), "got 2.0"),
        (lambda: GatedEnsemble(2, 3).gates(np.zeros((1, 2)), top_k=4), "top_k must be in .*, got 4"),
        (lambda: GatedEnsemble(2, 3).gates(np.zeros((1, 2)), top_k=0), "top_k must be in .*, got 0"),
        (lambda: MeanCombiner().expert_calls_per_query(0), "num_experts must be an integer >= 1, got 0"),
    ],
)
def test_out_of_range_settings_raise_a_one_line_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_load_refuses_another_combiners_file(tmp_path):
    path = tmp_path / "mean.npz"
    MeanCombiner().save(path)
    with pytest.raises(ValueError, match="holds a 'mean' combiner, not 'cascade'"):
        CascadeCombiner.load(path)
