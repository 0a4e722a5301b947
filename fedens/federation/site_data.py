"""What a site loads: the shared experts and initial combiner, and its own records
(the part it trains on and the part it holds back).

The held-back part never enters DP-SGD; the site uses it only to compare the
global combiner with its personalised one, and keeps that comparison itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedens.combiners import load_combiner
from fedens.federation import layout as L


def shared_experts(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> list:
    """The network's shared experts (the site's own copy if its node_config names one)."""
    from fedens.experts import load_experts  # sklearn & co.: only when a site calls its experts

    return load_experts(L.shared_file(settings, node_config, L.EXPERTS_PATH))


def initial_combiner(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> Any:
    """The combiner before training, of the kind its file is tagged with (a GatedEnsemble
    with its public input map, a log-linear pool or stacking module, or a cascade)."""
    return load_combiner(L.shared_file(settings, node_config, L.INITIAL_COMBINER_PATH))


def split_holdout(n: int, fraction: float, seed: int, site: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held back): a seeded ``fraction`` held back when the site has
    at least 5 records, else nothing."""
    order = np.random.default_rng([seed, site, 7919]).permutation(n)
    held = int(round(fraction * n)) if fraction > 0 and n >= 5 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def site_records(settings: Mapping[str, Any], data_path: Path, site: int
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((X, y) to train on, (X, y) held back) from the site's data file."""
    with np.load(data_path) as data:
        X, y = data["X"], data["y"]
    train, held = split_holdout(len(y), float(settings.get(L.HOLDOUT, 0.0)), int(settings[L.SEED]), site)
    return (X[train], y[train]), (X[held], y[held])
