"""Cost per call of an expert, from something measurable.

:func:`count_macs` counts the multiply-accumulates of one forward pass of a
fitted model (deterministic; what fedens uses as ``cost`` when asked to):

* logistic regression: ``C x d``; Gaussian naive Bayes: ``2 x C x d``;
* k-NN (brute force): ``n_fit x d`` (one distance to every stored record);
* decision tree: its depth (one comparison per level); forest: the sum over trees;
* MLP / torch ``nn.Linear`` stacks: the sum of the weight matrices' sizes.

:func:`seconds_per_query` measures wall time instead: a cross-check, noisy on a
shared machine, so never used to decide anything in tests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedens.experts.validation import check_cost, check_int


def _estimator_macs(est: Any) -> int:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(est, LogisticRegression):
        return int(est.coef_.size)
    if isinstance(est, GaussianNB):
        return int(2 * est.theta_.size)
    if isinstance(est, KNeighborsClassifier):
        return int(est.n_samples_fit_ * est.n_features_in_)
    if isinstance(est, DecisionTreeClassifier):
        return max(int(est.get_depth()), 1)
    if isinstance(est, RandomForestClassifier):
        return sum(max(int(t.get_depth()), 1) for t in est.estimators_)
    if isinstance(est, MLPClassifier):
        return int(sum(w.size for w in est.coefs_))
    raise ValueError(f"count_macs does not know estimator type {type(est).__name__!r}")


def count_macs(expert: Any) -> int:
    """Multiply-accumulates of one call on one input, for sklearn and torch ``Linear`` experts.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from fedens.experts import SklearnExpert
    >>> est = LogisticRegression().fit(np.eye(4), [0, 1, 2, 2])
    >>> count_macs(SklearnExpert(est, num_classes=3, name="lr"))
    12
    """
    if hasattr(expert, "estimator"):
        return _estimator_macs(expert.estimator)
    module = getattr(expert, "module", None)
    if module is not None:
        from torch import nn

        layers = list(module.modules())
        unknown = [type(m).__name__ for m in layers if not list(m.children())
                   and not isinstance(m, (nn.Linear, nn.ReLU, nn.Tanh, nn.Dropout, nn.Flatten, nn.Identity))]
        if unknown:
            raise ValueError(f"expert {expert.name!r}: count_macs does not know layer {unknown[0]}")
        return int(sum(m.weight.numel() for m in layers if isinstance(m, nn.Linear)))
    name = getattr(expert, "name", expert)
    raise ValueError(f"expert {name!r}: count_macs needs an sklearn or torch (Linear) expert")


def seconds_per_query(expert: Any, X: Any, repeats: int = 3) -> float:
    """Median over ``repeats`` of the wall time of ``expert.predict_proba(X)``, divided by ``len(X)``."""
    name = str(getattr(expert, "name", expert))
    repeats = check_int(repeats, "repeats", name)
    if len(X) == 0:
        raise ValueError(f"expert {name!r}: timing needs at least one query, got 0")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        expert.predict_proba(X)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(X)


def with_costs(experts: Sequence[Any], costs: Sequence[float]) -> list[Any]:
    """Copies of dataclass experts with ``cost`` set to ``costs[k]`` (each checked > 0)."""
    if len(costs) != len(experts):
        raise ValueError(f"costs must have one entry per expert ({len(experts)}), got {len(costs)}")
    return [dataclasses.replace(e, cost=check_cost(c, e.name)) for e, c in zip(experts, costs, strict=True)]


def with_mac_costs(experts: Sequence[Any]) -> list[Any]:
    """Copies of ``experts`` whose ``cost`` is :func:`count_macs` (multiply-accumulates per call)."""
    return with_costs(experts, [float(count_macs(e)) for e in experts])
