import numpy as np
import pytest
import torch

from fedens.combiners import GatedEnsemble, MeanCombiner, VoteCombiner, mixture_log_likelihood


def random_outputs(n=20, K=5, C=4, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(C), size=(n, K)).astype(np.float32)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    return P, X


def test_untrained_gated_ensemble_is_the_uniform_mean():
    P, X = random_outputs()
    model = GatedEnsemble(num_features=3, num_experts=5)
    for head in ("router", "weights"):
        np.testing.assert_allclose(model.combine(P, X, head), MeanCombiner().combine(P), rtol=1e-6)


def test_top_k_routes_to_k_experts_and_stays_normalised():
    P, X = random_outputs()
    model = GatedEnsemble(3, 5)
    torch.nn.init.normal_(model.router.weight)
    for k in (1, 2, 5):
        gates = model.gates(X, "router", top_k=k)
        assert ((gates > 0).sum(axis=1) == k).all()
        np.testing.assert_allclose(model.combine(P, X, "router", top_k=k).sum(1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="top_k"):
        model.gates(X, "router", top_k=6)


def test_top_k_calls_exactly_k_experts_even_when_gates_tie():
    P, X = random_outputs()
    gates = GatedEnsemble(3, 5).gates(X, "router", top_k=2)  # untrained: all gates equal
    assert ((gates > 0).sum(axis=1) == 2).all()
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-6)


def test_mixture_log_likelihood_matches_direct_computation():
    P, X = random_outputs()
    y = np.random.default_rng(1).integers(0, 4, size=20)
    logits = torch.randn(20, 5)
    got = mixture_log_likelihood(logits, torch.as_tensor(P), torch.as_tensor(y))
    gates = torch.softmax(logits, 1).numpy()
    want = np.log((gates * P[np.arange(20), :, y]).sum(1))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_vote_counts_argmaxes():
    P = np.zeros((1, 3, 3), dtype=np.float32)
    P[0, 0, 2] = P[0, 1, 2] = P[0, 2, 0] = 1.0
    np.testing.assert_allclose(VoteCombiner().combine(P), [[1 / 3, 0, 2 / 3]])


@pytest.mark.parametrize("bad", [np.full((2, 3, 4), np.nan), -np.ones((2, 3, 4)), np.ones((2, 0, 4))])
def test_bad_expert_outputs_are_rejected(bad):
    with pytest.raises(ValueError, match="expert outputs"):
        MeanCombiner().combine(bad)
