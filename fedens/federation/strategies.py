"""Flower's own strategies, chosen by name from config; fedens adds no aggregation rule.

``make_strategy("FedProx", {"proximal_mu": 0.1}, fraction_train=...)`` builds
``flwr.serverapp.strategy.FedProx``. Strategy state (FedAdam's moments, an
adaptive clipping norm, ...) is captured generically for checkpoints by
:func:`strategy_state`, in values :func:`fedens.files.state_bytes` stores without code,
and put back by :func:`restore_strategy_state`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy

# Strategies that aggregate the combiner's arrays as they are (QFedAvg and the
# XGBoost ones need other replies; the DP wrappers come from privacy.site_level).
STRATEGIES = ("FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "FedMedian",
              "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan")
_COMMON = {"self", "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
           "min_available_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
           "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"}


def accepted_strategy_params(name: str) -> list[str]:
    """The keyword arguments of strategy ``name`` beyond the ones fedens sets itself."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    signature = inspect.signature(getattr(flwr_strategies, name).__init__)
    return [p for p in signature.parameters if p not in _COMMON]


def check_strategy(name: str, params: dict[str, Any]) -> None:
    """ValueError naming the strategy or parameter that Flower would not accept."""
    allowed = accepted_strategy_params(name)
    for key in params:
        if key not in allowed:
            raise ValueError(f"{name} has no parameter {key!r}; it takes: {', '.join(allowed) or 'none'}")


def make_strategy(name: str, params: dict[str, Any], **common: Any) -> Strategy:
    """Flower's strategy ``name`` with its own ``params`` and fedens' ``common`` settings."""
    check_strategy(name, params)
    return getattr(flwr_strategies, name)(**common, **params)


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """Every attribute of ``strategy`` but its functions (and of a strategy it wraps), with
    Flower's ``ArrayRecord`` as NumPy arrays and an object that has a ``state_dict`` (Flower's
    privacy accountant) as that: values a checkpoint stores without code."""
    state: dict[str, Any] = {}
    for key, value in vars(strategy).items():
        if isinstance(value, Strategy):
            state[key] = {"__strategy__": strategy_state(value)}
        elif all(callable(getattr(value, m, None)) for m in ("state_dict", "load_state_dict")):
            state[key] = {"__state_dict__": value.state_dict()}
        elif isinstance(value, ArrayRecord):
            state[key] = {"__arrays__": [[name, array.numpy()] for name, array in value.items()]}
        elif not callable(value):
            state[key] = value
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    for key, value in state.items():
        if isinstance(value, dict) and "__strategy__" in value:
            restore_strategy_state(getattr(strategy, key), value["__strategy__"])
        elif isinstance(value, dict) and "__state_dict__" in value:
            getattr(strategy, key).load_state_dict(value["__state_dict__"])
        elif isinstance(value, dict) and "__arrays__" in value:
            setattr(strategy, key, arrays_record(value["__arrays__"]))
        else:
            setattr(strategy, key, value)


def arrays_record(named: list[tuple[str, np.ndarray]] | list[list[Any]]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``(name, array)`` pairs, in their order."""
    return ArrayRecord(OrderedDict((str(name), Array(np.asarray(array))) for name, array in named))
