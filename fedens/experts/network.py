"""A network of specialised experts, trained on label-skewed public slices.

They stand in for models from different providers that every site may call:
each expert comes from a different model family and saw mostly a few
"specialty" classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from fedens.data import Split
from fedens.experts.base import SklearnExpert

EXPERT_FAMILIES: dict[str, Callable[[int], object]] = {
    "logreg": lambda seed: LogisticRegression(max_iter=1000),
    "knn": lambda seed: KNeighborsClassifier(n_neighbors=5),
    "tree": lambda seed: DecisionTreeClassifier(max_depth=8, random_state=seed),
    "naive_bayes": lambda seed: GaussianNB(),
    "mlp": lambda seed: MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=seed),
}


def train_expert_network(
    public: Split,
    num_classes: int,
    num_experts: int,
    families: Sequence[str],
    specialty_classes: int,
    in_fraction: float,
    out_fraction: float,
    seed: int,
) -> list[SklearnExpert]:
    """Train ``num_experts`` experts, expert ``k`` of family ``families[k % len]``.

    Expert ``k`` specialises in classes ``k, k+1, ..., k+specialty_classes-1``
    (mod C): it trains on ``in_fraction`` of the public records of those classes
    and ``out_fraction`` of the others.
    """
    unknown = [f for f in families if f not in EXPERT_FAMILIES]
    if unknown or not families:
        raise ValueError(
            f"experts.families={list(families)} has unknown entries {unknown}; "
            f"choose from {sorted(EXPERT_FAMILIES)}"
        )
    rng = np.random.default_rng(seed)
    experts = []
    for k in range(num_experts):
        specialty = {(k + j) % num_classes for j in range(specialty_classes)}
        keep_prob = np.where(np.isin(public.y, list(specialty)), in_fraction, out_fraction)
        keep = rng.random(len(public.y)) < keep_prob
        family = families[k % len(families)]
        estimator = EXPERT_FAMILIES[family](seed + k).fit(public.X[keep], public.y[keep])
        experts.append(
            SklearnExpert(estimator, num_classes, name=f"{family}-{k}", family=family)
        )
    return experts


def train_generalist_expert(
    public: Split, num_classes: int, seed: int, hidden_layer_sizes: tuple[int, ...] = (256, 256),
    max_iter: int = 500,
) -> SklearnExpert:
    """A larger MLP trained on *all* of the public split: the network's expensive, accurate member
    (next to cheap specialists, it is what a cascade escalates to)."""
    estimator = MLPClassifier(hidden_layer_sizes=hidden_layer_sizes, max_iter=max_iter, random_state=seed)
    estimator.fit(public.X, public.y)
    size = "x".join(str(h) for h in hidden_layer_sizes)
    return SklearnExpert(estimator, num_classes, name=f"mlp-{size}-all", family="mlp")
