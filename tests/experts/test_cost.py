"""Expert cost per call: multiply-accumulates counted from the fitted model, and timing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from fedens.data import Split
from fedens.experts import (
    SklearnExpert,
    TorchExpert,
    count_macs,
    seconds_per_query,
    train_generalist_expert,
    with_costs,
    with_mac_costs,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 5)).astype(np.float32)
y = RNG.integers(0, 3, size=60)


@pytest.mark.parametrize("estimator, macs", [
    (LogisticRegression(max_iter=200), 3 * 5),
    (GaussianNB(), 2 * 3 * 5),
    (KNeighborsClassifier(n_neighbors=3), 60 * 5),
    (DecisionTreeClassifier(max_depth=2, random_state=0), 2),
    (MLPClassifier((7,), max_iter=50, random_state=0), 5 * 7 + 7 * 3),
])
def test_count_macs_by_hand(estimator, macs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expert = SklearnExpert(estimator.fit(X, y), num_classes=3, name="e")
    assert count_macs(expert) == macs


def test_count_macs_of_a_torch_linear_stack():
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert count_macs(TorchExpert(module, num_classes=3, name="t")) == 5 * 8 + 8 * 3


@pytest.mark.parametrize("expert, message", [
    (SklearnExpert(DummyClassifier().fit(X, y), 3, "dummy"), "does not know estimator type 'Dummy"),
    (TorchExpert(torch.nn.Conv1d(1, 1, 3), 3, "conv"), "expert 'conv': count_macs does not know layer Conv"),
])
def test_unknown_models_raise_a_one_line_error(expert, message):
    with pytest.raises(ValueError, match=message) as error:
        count_macs(expert)
    assert "\n" not in str(error.value)


def test_with_mac_costs_sets_costs_and_leaves_the_originals_alone():
    experts = [SklearnExpert(LogisticRegression().fit(X, y), 3, "lr"),
               SklearnExpert(GaussianNB().fit(X, y), 3, "nb")]
    costed = with_mac_costs(experts)
    assert [e.cost for e in costed] == [15.0, 30.0] and [e.cost for e in experts] == [1.0, 1.0]
    with pytest.raises(ValueError, match="expert 'nb': cost must be a finite number > 0, got 0.0"):
        with_costs(experts, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"one entry per expert \(2\), got 1"):
        with_costs(experts, [1.0])


def test_generalist_is_bigger_than_the_specialists_and_timing_is_positive():
    with pytest.warns(UserWarning):  # sklearn: not converged in 20 iterations
        big = train_generalist_expert(Split(X, y), 3, seed=0, hidden_layer_sizes=(16, 16), max_iter=20)
    assert count_macs(big) == 5 * 16 + 16 * 16 + 16 * 3
    assert seconds_per_query(big, X, repeats=1) > 0
    with pytest.raises(ValueError, match="at least one query, got 0"):
        seconds_per_query(big, X[:0])
