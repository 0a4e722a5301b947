"""TorchExpert and CallableExpert: batching, eval mode, no grad, the logits/probabilities flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedens.experts import CallableExpert, TorchExpert

X = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)


def linear(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Linear(4, classes)


def test_logits_are_softmaxed_like_a_direct_computation():
    module = linear()
    reference = torch.softmax(module(torch.from_numpy(X)).double(), dim=1).detach().numpy()
    P = TorchExpert(module, num_classes=3, name="lin").predict_proba(X)
    np.testing.assert_allclose(P, reference, rtol=1e-6)


def test_probability_outputs_pass_through_and_logits_flagged_as_probabilities_fail():
    module = nn.Sequential(linear(), nn.Softmax(dim=1))
    P = TorchExpert(module, 3, "soft", outputs="probabilities").predict_proba(X)
    np.testing.assert_allclose(P, module(torch.from_numpy(X)).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="expert 'raw'.*(negative probability|sum to)"):
        TorchExpert(linear(), 3, "raw", outputs="probabilities").predict_proba(X)
    with pytest.raises(ValueError, match="'odd'.*outputs.*'scores'"):
        TorchExpert(linear(), 3, "odd", outputs="scores")


def test_inputs_are_batched_and_batches_agree():
    module, calls = linear(), []
    module.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    P_small = TorchExpert(module, 3, "lin", batch_size=3).predict_proba(X)
    assert calls == [3, 3, 3, 1]
    np.testing.assert_allclose(P_small, TorchExpert(module, 3, "lin").predict_proba(X), rtol=1e-6)


def test_runs_in_eval_mode_without_grad_and_restores_the_training_flag():
    module = nn.Sequential(linear(), nn.Dropout(p=0.5))
    module.train()
    seen = []
    module.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    expert = TorchExpert(module, 3, "dropout")
    P = expert.predict_proba(X)
    np.testing.assert_array_equal(P, expert.predict_proba(X))  # dropout off: deterministic
    assert seen == [(False, False), (False, False)]
    assert module.training  # the caller's mode is restored


def test_wrong_class_count_is_named():
    shape = r"expert 'lin' returned probabilities of shape \(10, 3\), expected \(10, 5\)"
    with pytest.raises(ValueError, match=shape):
        TorchExpert(linear(), num_classes=5, name="lin").predict_proba(X)
    with pytest.raises(TypeError, match="'fn'.*nn.Module"):
        TorchExpert(lambda x: x, num_classes=3, name="fn")


def test_callable_expert_validates_what_the_function_returns():
    expert = CallableExpert(lambda X: np.tile([0.2, 0.8], (len(X), 1)), num_classes=2, name="tilted")
    np.testing.assert_array_equal(expert.predict_proba(X), np.tile([0.2, 0.8], (10, 1)))
    bad = CallableExpert(lambda X: np.tile([0.2, 0.7], (len(X), 1)), num_classes=2, name="leaky")
    with pytest.raises(ValueError, match="expert 'leaky': probabilities in row 0 sum to 0.9"):
        bad.predict_proba(X)
    with pytest.raises(TypeError, match="'nothing'.*callable"):
        CallableExpert(None, num_classes=2, name="nothing")
