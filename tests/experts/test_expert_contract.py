"""One contract suite over every registered expert adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fedens.experts import (
    EXPERTS,
    CallableExpert,
    Expert,
    MultipleChoiceQuestion,
    OnnxExpert,
    OpenAIChatExpert,
    SklearnExpert,
    TorchExpert,
    expert_outputs,
)

RNG = np.random.default_rng(0)
X_TABLE = RNG.normal(size=(7, 4)).astype(np.float32)
QUESTIONS = [
    MultipleChoiceQuestion("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
    {"question": "How many days are in a week?", "options": ["Five", "Seven", "Ten", "Twelve"]},
]


def softmax_rows(X):
    Z = np.exp(X[:, :3] - X[:, :3].max(axis=1, keepdims=True))
    return Z / Z.sum(axis=1, keepdims=True)


def make_sklearn(request):
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    return SklearnExpert(LogisticRegression().fit(X_TABLE, y), 3, name="logreg", site="site-0"), X_TABLE


def make_torch(request):
    torch.manual_seed(0)
    return TorchExpert(torch.nn.Linear(4, 3), num_classes=3, name="linear", cost=0.5), X_TABLE


def make_onnx(request):
    from fedens.experts.onnx_expert import torch_to_onnx

    torch.manual_seed(0)
    graph = torch_to_onnx(torch.nn.Linear(4, 3), 4)
    return OnnxExpert(graph, num_classes=3, name="linear-graph", outputs="logits", site="site-2"), X_TABLE


def make_callable(request):
    return CallableExpert(softmax_rows, num_classes=3, name="softmax-of-features"), X_TABLE


def make_causal_lm(request):
    return request.getfixturevalue("smollm2"), QUESTIONS


def make_openai_chat(request):
    server = request.getfixturevalue("chat_server")
    return OpenAIChatExpert(base_url=server.url, model="logprobs", name="loopback", timeout=5), QUESTIONS


def make_prompted(request):
    from fedens.data.rows import TextRows
    from fedens.experts import PromptedExpert

    server = request.getfixturevalue("chat_server")
    inner = OpenAIChatExpert(base_url=server.url, model="logprobs", name="loopback", timeout=5)
    rows = TextRows(X_TABLE[:3], {"review": np.array(["tasty", "stale", "fine"])})
    return PromptedExpert(inner, "Review: {review}", ("great", "other", "so-so"), name="prompted-loopback",
                          calibrate=False), rows


FACTORIES = {
    "sklearn": make_sklearn,
    "torch": make_torch,
    "onnx": make_onnx,
    "callable": make_callable,
    "causal_lm": make_causal_lm,
    "openai_chat": make_openai_chat,
    "prompted": make_prompted,
}


def test_the_suite_covers_every_registered_adapter():
    assert set(FACTORIES) == set(EXPERTS)


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_expert_contract(key, request):
    expert, X = FACTORIES[key](request)
    assert type(expert) is EXPERTS[key]
    assert isinstance(expert, Expert)
    # metadata
    assert isinstance(expert.name, str) and expert.name
    assert isinstance(expert.cost, float) and expert.cost > 0
    assert expert.site is None or isinstance(expert.site, str)
    # output: (n, C), non-negative rows summing to one, deterministic
    P = expert.predict_proba(X)
    assert P.ndim == 2 and P.shape[0] == len(X) and P.shape[1] >= 2
    assert np.all(np.isfinite(P)) and np.all(P >= 0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(expert.predict_proba(X), P)
    # stacks with itself into a network output (n, K, C)
    stacked = expert_outputs([expert, expert], X)
    assert stacked.shape == (len(X), 2, P.shape[1])
    np.testing.assert_allclose(stacked[:, 1], P, rtol=1e-6)
