"""The expert registry and the one-line validation errors that name the expert and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.naive_bayes import GaussianNB

from fedens.experts import (
    EXPERTS,
    ROW_SUM_TOLERANCE,
    CallableExpert,
    CausalLMExpert,
    OnnxExpert,
    OpenAIChatExpert,
    PromptedExpert,
    SklearnExpert,
    TorchExpert,
    check_probabilities,
    expert_outputs,
    make_expert,
    register_expert,
)

X = np.random.default_rng(0).normal(size=(6, 3))


def softmax_graph(C=3):
    """The bytes of an ONNX graph that takes (n, C) floats and gives their softmax."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C])
    y = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", C])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["p"], axis=1)], "softmax", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


GRAPH = softmax_graph()


def uniform(C):
    return lambda X: np.full((len(X), C), 1.0 / C)


def constant(P, name="bad"):
    P = np.asarray(P, dtype=np.float64)
    return CallableExpert(lambda X: np.tile(P, (len(X) // len(P), 1)), num_classes=P.shape[1], name=name)


def fail_one_line(call, *fragments):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_registry_finds_every_adapter_by_name():
    assert EXPERTS == {
        "sklearn": SklearnExpert,
        "torch": TorchExpert,
        "onnx": OnnxExpert,
        "callable": CallableExpert,
        "causal_lm": CausalLMExpert,
        "openai_chat": OpenAIChatExpert,
        "prompted": PromptedExpert,
    }
    estimator = GaussianNB().fit(X, [0, 1, 2, 0, 1, 2])
    built = [
        make_expert("sklearn", estimator=estimator, num_classes=3, name="nb"),
        make_expert("torch", module=torch.nn.Linear(3, 3), num_classes=3, name="lin", site="site-1"),
        make_expert("onnx", model=GRAPH, num_classes=3, name="graph", outputs="logits"),
        make_expert("callable", fn=uniform(3), num_classes=3, name="flat", cost=0.1),
        make_expert("causal_lm", name="lm"),  # loads its model lazily, on first use
        make_expert("openai_chat", base_url="http://127.0.0.1:9/v1", model="m", name="api"),
    ]
    order = ("sklearn", "torch", "onnx", "callable", "causal_lm", "openai_chat")
    assert [type(e) for e in built] == [EXPERTS[k] for k in order]
    assert built[1].site == "site-1" and built[3].cost == 0.1 and built[0].site is None
    assert built[4].model is None


def test_unknown_and_duplicate_adapter_names_are_named():
    fail_one_line(lambda: make_expert("gpt-9"), "'gpt-9'", "callable")
    with pytest.raises(ValueError, match="'torch' is already registered"):
        register_expert("torch")(type("Another", (), {}))


@pytest.mark.parametrize("cost", [0, -1.0, math.nan, math.inf, None, "cheap"])
@pytest.mark.parametrize("adapter", sorted(EXPERTS))
def test_a_cost_that_is_not_positive_is_refused_for_every_adapter(adapter, cost):
    kwargs = {
        "sklearn": dict(estimator=GaussianNB(), num_classes=3),
        "torch": dict(module=torch.nn.Linear(3, 3), num_classes=3),
        "onnx": dict(model=GRAPH, num_classes=3),
        "callable": dict(fn=uniform(3), num_classes=3),
        "causal_lm": {},
        "openai_chat": dict(base_url="http://127.0.0.1:9/v1", model="m"),
        "prompted": dict(inner=CallableExpert(uniform(2), 2, "u"), prompt="{t}", answers=("a", "b")),
    }[adapter]
    fail_one_line(lambda: make_expert(adapter, name="pricey", cost=cost, **kwargs), "'pricey'", repr(cost))


def test_an_empty_expert_list_is_refused():
    fail_one_line(lambda: expert_outputs([], X), "non-empty")


def test_experts_with_different_class_counts_are_named():
    experts = [CallableExpert(uniform(3), 3, "three"), CallableExpert(uniform(4), 4, "four")]
    fail_one_line(lambda: expert_outputs(experts, X), "'four' gives 4 classes", "'three' gives 3")


@pytest.mark.parametrize(
    "P, fragments",
    [
        ([[0.5, math.nan]], ["non-finite probability nan", "column 1"]),
        ([[math.inf, 0.0]], ["non-finite probability inf", "row 0"]),
        ([[1.2, -0.2]], ["negative probability -0.2", "column 1"]),
        ([[0.5, 0.4]], ["sum to 0.9, not 1"]),
    ],
)
def test_bad_probabilities_are_named(P, fragments):
    # through the adapter's own check and through expert_outputs for any Expert-like object
    fail_one_line(lambda: constant(P).predict_proba(X), "'bad'", *fragments)

    class Handmade:
        name, cost, site = "handmade", 1.0, None

        def predict_proba(self, X):
            return np.tile(P, (len(X), 1))

    fail_one_line(lambda: expert_outputs([Handmade()], X), "'handmade'", *fragments)


def test_wrong_shapes_are_named():
    fail_one_line(lambda: check_probabilities(np.ones(5) / 5, "flat", num_rows=5), "'flat'", "shape (5,)")
    fail_one_line(lambda: check_probabilities(np.eye(3)[:2], "short", num_rows=3), "'short'", "(3, C)")
    fail_one_line(lambda: CallableExpert(uniform(4), 3, "liar").predict_proba(X), "'liar'", "(6, 3)")


def test_rows_within_the_tolerance_pass_unchanged():
    P = np.array([[0.5, 0.5 + ROW_SUM_TOLERANCE / 2]])
    np.testing.assert_array_equal(check_probabilities(P, "close"), P)


def test_sklearn_expert_keeps_its_alignment_and_gains_metadata():
    expert = SklearnExpert(GaussianNB().fit(X, [1, 3, 1, 3, 1, 3]), num_classes=5, name="nb", site="site-2")
    P = expert_outputs([expert], X)[:, 0]
    assert P.shape == (6, 5) and np.all(P[:, [0, 2, 4]] == 0)
    assert (expert.cost, expert.site) == (1.0, "site-2")
    fail_one_line(lambda: SklearnExpert(GaussianNB(), num_classes=0, name="nb"), "'nb'", "num_classes", "0")
