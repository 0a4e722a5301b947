"""GatedEnsemble's training objectives (NLL, score-CE), top-k in training and public pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedens.combiners import (
    GatedEnsemble,
    MeanCombiner,
    pooled_score_cross_entropy,
    pretrain_router,
    train_gated_ensemble,
)
from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs
from fedens.privacy.dpsgd import make_private_training


def softmax(z, axis=-1):
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def data(n=40, K=4, C=3, D=3, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(C), size=(n, K)).astype(np.float32)
    return rng.normal(size=(n, D)).astype(np.float32), P, rng.integers(0, C, size=n)


def randomised(model, seed=0):
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    return model


def test_score_ce_matches_a_hand_computation():
    X, P, y = data()
    logits = np.random.default_rng(1).normal(size=(len(y), 4))
    got = pooled_score_cross_entropy(torch.as_tensor(logits), torch.as_tensor(P, dtype=torch.float64),
                                     torch.as_tensor(y), 20.0).numpy()
    pooled = np.einsum("nk,nkc->nc", softmax(logits), P)
    want = -np.log(softmax(20.0 * pooled)[np.arange(len(y)), y])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_loss_with_top_k_in_training_is_dense_plus_renormalised_top_k_by_hand():
    X, P, y = data()
    model = randomised(GatedEnsemble(3, 4, train_top_k=2))
    router = X @ model.router.weight.detach().numpy().T + model.router.bias.detach().numpy()
    weights = np.broadcast_to(model.weights.weight.detach().numpy()[:, 0], router.shape)
    top2 = np.argsort(-router, axis=1)[:, :2]
    sparse = np.zeros_like(router)
    np.put_along_axis(sparse, top2, softmax(np.take_along_axis(router, top2, 1)), axis=1)
    p_true = P[np.arange(len(y)), :, y].astype(np.float64)
    want = -np.mean(np.log((softmax(router) * p_true).sum(1)) + np.log((softmax(weights) * p_true).sum(1))
                    + np.log((sparse * p_true).sum(1)))
    got = model.loss(torch.as_tensor(X), torch.as_tensor(P), torch.as_tensor(y)).item()
    assert got == pytest.approx(want, rel=1e-5)
    # and the trained module's top-2 answer is that renormalised mixture
    np.testing.assert_allclose(model.combine(P, X, "router", top_k=2), np.einsum("nk,nkc->nc", sparse, P),
                               rtol=1e-5, atol=1e-7)


def test_top_k_training_keeps_the_sparse_router_near_the_dense_one():
    """Experts 0-1 are right on x > 0, experts 2-3 on x < 0: top-2 must pick the right pair."""
    rng = np.random.default_rng(0)
    n, C = 400, 3
    X = rng.normal(size=(n, 1)).astype(np.float32)
    y = rng.integers(0, C, size=n)
    P = np.full((n, 4, C), 1.0 / C, dtype=np.float32)
    good = np.where(X[:, 0] > 0, 0, 2)
    for off in (0, 1):
        P[np.arange(n), good + off] = np.eye(C)[y] * 0.8 + 0.2 / C
    model = train_gated_ensemble(GatedEnsemble(1, 4, train_top_k=2), X, P, y, 30, 0.05, 32, 0)
    dense = (model.combine(P, X).argmax(1) == y).mean()
    sparse = (model.combine(P, X, top_k=2).argmax(1) == y).mean()
    assert dense > 0.95 and sparse >= 0.99 * dense


def test_score_ce_weights_beat_nll_weights_and_the_uniform_mean_on_the_quickstart_network():
    """The issue-3 finding on seed 0 of the quickstart's network (see experiments/combiners)."""
    from fedens.data import load_task
    from fedens.experts import expert_outputs, train_expert_network

    task = load_task("digits", 0.3, 0.25, seed=0)
    experts = train_expert_network(task.public, 10, 10, ["logreg", "knn", "tree", "naive_bayes", "mlp"],
                                   3, 1.0, 0.05, seed=0)
    P_val, P = expert_outputs(experts, task.private.X), expert_outputs(experts, task.test.X)
    X, y = task.test.X, task.test.y
    acc = lambda m: (m.combine(P, X, "weights").argmax(1) == y).mean()
    fit = lambda **o: train_gated_ensemble(GatedEnsemble(64, 10, **o), task.private.X, P_val, task.private.y,
                                           10, 0.05, 32, 0)
    nll, sce = fit(), fit(weights_objective="score_ce")
    uniform = (MeanCombiner().combine(P).argmax(1) == y).mean()
    assert acc(nll) < uniform < acc(sce)
    nll_weights = nll.gates(X[:1], "weights")[0]
    assert nll_weights[[4, 9]].sum() > 0.6  # NLL moves the weight to the two MLPs


def test_options_travel_in_the_state_dict_and_old_states_load_as_nll(tmp_path):
    model = GatedEnsemble(3, 4, weights_objective="score_ce", score_scale=7.0, train_top_k=2)
    rebuilt = GatedEnsemble.from_state_dict(model.state_dict())
    assert rebuilt.options() == {"router_objective": "nll", "weights_objective": "score_ce",
                                 "score_scale": 7.0, "train_top_k": 2}
    old = {k: v for k, v in model.state_dict().items() if "score_scale" not in k and k != "train_top_k"}
    assert GatedEnsemble.from_state_dict(old).options() == GatedEnsemble(3, 4).options()
    model.save(tmp_path / "g.pt")
    assert GatedEnsemble.load(tmp_path / "g.pt").options() == model.options()
    # the federation exchanges exactly these parameters
    assert set(model.trainable_state()) == {"router.weight", "router.bias", "weights.weight"}


@pytest.mark.parametrize("kwargs, message", [
    ({"weights_objective": "brier"}, r"weights_objective must be one of \['nll', 'score_ce'\], got 'brier'"),
    ({"score_scale": 0.0}, "score_scale must be a finite number > 0, got 0.0"),
    ({"train_top_k": 5}, r"train_top_k must be None or in \[1, 4\], got 5"),
])
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        GatedEnsemble(3, 4, **kwargs)
    assert "\n" not in str(error.value)


def test_new_objectives_train_under_opacus_dp_sgd():
    X, P, y = data(n=64)
    model = GatedEnsemble(3, 4, router_objective="score_ce", weights_objective="score_ce", train_top_k=2)
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    private = make_private_training(model, make_optimizer(model, 0.05), combiner_dataset(X, P, y),
                                    batch_size=16, noise_multiplier=1.0, max_grad_norm=1.0)
    steps, loss = run_epochs(private.module, private.optimizer, private.loader, 1)
    assert steps == 4 and np.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.trainable_state().items())


def test_pretrain_router_moves_only_the_router():
    X, P, y = data(n=64)
    model = pretrain_router(GatedEnsemble(3, 4), X, P, y, epochs=3, lr=0.1, batch_size=16, seed=0)
    assert model.router.weight.abs().sum() > 0
    assert torch.equal(model.weights.weight, torch.zeros_like(model.weights.weight))
    assert all(p.requires_grad for p in model.parameters())
