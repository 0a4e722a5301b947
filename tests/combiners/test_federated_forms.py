"""The torch forms the federation trains: one loss with the central fit, per-record gradients
for Opacus, tagged state files; the cascade's histogram calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from fedens.combiners import (
    CascadeCombiner,
    GatedEnsemble,
    LogLinearModule,
    LogLinearPool,
    StackingCombiner,
    StackingModule,
    combiner_from_state,
    combiner_state,
    confidence_histograms,
    load_combiner,
    thresholds_from_histograms,
)
from fedens.combiners.training import train_combiner

K, C, N = 4, 3, 80


def data(seed=0):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(C) * 0.5, size=(N, K)).astype(np.float32)
    P[:10, 1] = 0.0  # exact zeros: the floor must keep the loss finite
    P[:10, 1, 0] = 1.0
    y = rng.integers(0, C, size=N)
    return P, y


def nll(Q, y):
    return float(-np.mean(np.log(Q[np.arange(len(y)), y])))


@pytest.mark.parametrize("cls", [LogLinearPool, StackingCombiner])
def test_the_module_loss_is_the_central_combiners_nll(cls):
    P, y = data()
    central = cls().fit(P, y, epochs=15, lr=0.1, seed=0)  # away from the uniform start
    module = central.to_module()
    loss = module.loss(torch.zeros(N, 0), torch.as_tensor(P), torch.as_tensor(y))
    assert loss.item() == pytest.approx(nll(central.combine(P), y), rel=1e-5)
    np.testing.assert_allclose(module.combine(P), central.combine(P), atol=1e-6)
    back = cls.from_module(module)
    np.testing.assert_allclose(back.combine(P), central.combine(P), atol=1e-9)


@pytest.mark.parametrize("cls", [LogLinearPool, StackingCombiner])
def test_the_central_fit_is_the_shared_training_loop_on_the_module(cls):
    P, y = data()
    central = cls().fit(P, y, epochs=25, lr=0.1, seed=3)
    module = train_combiner(cls().to_module(K), np.zeros((N, 0), np.float32), P, y, 25, 0.1, N, seed=3)
    np.testing.assert_allclose(cls.from_module(module).combine(P), central.combine(P), atol=1e-12)
    assert nll(central.combine(P), y) < nll(cls().combine(P), y)  # it did learn


@pytest.mark.parametrize("cls", [LogLinearModule, StackingModule])
def test_opacus_per_record_gradients_average_to_the_batch_gradient(cls):
    P, y = data(1)
    torch.manual_seed(0)
    module = cls(K)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    wrapped = GradSampleModule(module)
    module.loss(torch.zeros(N, 0), torch.as_tensor(P), torch.as_tensor(y)).backward()
    for name, p in module.named_parameters():
        assert p.grad_sample.shape == (N, *p.shape), name
        torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-4, atol=1e-6)
        assert p.grad_sample.std(0).abs().sum() > 0  # records differ: a real per-record gradient
    wrapped._close()


@pytest.mark.parametrize("make", [lambda: LogLinearModule(K, 1e-4), lambda: StackingModule(K),
                                  lambda: GatedEnsemble(2, K), lambda: CascadeCombiner([3.0, 1.0, 2.0, 5.0])])
def test_tagged_states_rebuild_the_same_kind(make, tmp_path):
    model = make()
    P, _ = data()
    X = np.zeros((N, 2), np.float32)
    torch.save(combiner_state(model), tmp_path / "c.pt")
    again = load_combiner(tmp_path / "c.pt")
    assert type(again) is type(model)
    args = (P, X, "router") if isinstance(model, GatedEnsemble) else (P,)
    np.testing.assert_array_equal(again.combine(*args), model.combine(*args))
    if hasattr(model, "trainable_state"):
        assert set(again.trainable_state()) == set(model.trainable_state())


def test_untagged_states_are_gated_ensembles_and_unknown_kinds_are_named():
    state = GatedEnsemble(2, K).state_dict()
    assert isinstance(combiner_from_state(state), GatedEnsemble)
    with pytest.raises(ValueError, match="combiner state has kind 'boost'; expected one of"):
        combiner_from_state({"kind": "boost"})


# --- cascade: calibration from confidence histograms -----------------------------------


def test_site_histograms_sum_to_the_central_ones_and_give_its_thresholds():
    P, y = data(2)
    grid = [0.4, 0.6, 0.8, 0.95]
    sites = np.array_split(np.arange(N), 3)
    summed = sum(confidence_histograms(P[i], y[i], grid) for i in sites)
    np.testing.assert_array_equal(summed, confidence_histograms(P, y, grid))
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    central = CascadeCombiner(costs).calibrate_selective(P, y, grid, min_count=3)
    federated = CascadeCombiner(costs).calibrate_from_histograms(summed, grid, min_count=3)
    np.testing.assert_array_equal(federated.threshold, central.threshold)


def test_histogram_thresholds_follow_selective_accuracy():
    # expert 0 (cheapest): right exactly when confident (>= 0.9); expert 1: always right, expensive
    n = 100
    y = np.zeros(n, dtype=int)
    P = np.zeros((n, 2, 2))
    P[:, 1] = [0.7, 0.3]
    confident = np.arange(n) < 40
    P[confident, 0] = [0.95, 0.05]
    P[~confident, 0] = [0.3, 0.7]  # wrong and unsure (0.7 < 0.9)
    grid = [0.6, 0.9]
    hist = confidence_histograms(P, y, grid)
    assert hist[0, :, 0].tolist() == [0, 60, 40] and hist[0, :, 1].tolist() == [0, 0, 40]
    t, target = thresholds_from_histograms(hist, np.array([1.0, 10.0]), grid)
    assert target == 1.0 and t.tolist() == [0.9, 0.0]
    cascade = CascadeCombiner([1.0, 10.0], t)
    assert (cascade.combine(P).argmax(1) == y).all() and cascade.expert_calls_per_query(P) == 1.6
    # too few records above a threshold: the expert is skipped
    t, _ = thresholds_from_histograms(hist, np.array([1.0, 10.0]), grid, min_count=41)
    assert t.tolist() == [np.inf, 0.0]
    with pytest.raises(ValueError, match=r"histograms must have shape \(K=3, 3, 2\)"):
        thresholds_from_histograms(hist, np.ones(3), grid)
