"""One reader for every combiner file the federation passes around.

The shared initial combiner (and the coordinator's global one) is a torch
state dict tagged with the combiner's kind (:func:`combiner_state`); files
without a tag are GatedEnsemble states (written before other kinds existed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedens.combiners.cascade import CascadeCombiner
from fedens.combiners.gated import GatedEnsemble
from fedens.combiners.log_linear import LogLinearModule
from fedens.combiners.stacking import StackingModule
from fedens.combiners.trainable import KIND_KEY, combiner_state, decode_kind

#: kind -> the class whose ``from_state_dict`` rebuilds it (torch forms of the learned pools)
FEDERATED_KINDS: dict[str, Any] = {
    GatedEnsemble.kind: GatedEnsemble,
    LogLinearModule.kind: LogLinearModule,
    StackingModule.kind: StackingModule,
    CascadeCombiner.kind: CascadeCombiner,
}

__all__ = ["FEDERATED_KINDS", "combiner_from_state", "combiner_state", "load_combiner", "kind_of"]


def kind_of(state: dict[str, Any]) -> str:
    """The kind tag of a combiner state (untagged: ``gated_ensemble``)."""
    kind = decode_kind(state.get(KIND_KEY, GatedEnsemble.kind))
    if kind not in FEDERATED_KINDS:
        raise ValueError(f"combiner state has kind {kind!r}; expected one of {sorted(FEDERATED_KINDS)}")
    return kind


def combiner_from_state(state: dict[str, Any]) -> Any:
    """Rebuild the combiner a (tagged) state dict describes."""
    kind = kind_of(state)
    return FEDERATED_KINDS[kind].from_state_dict({k: v for k, v in state.items() if k != KIND_KEY})


def load_combiner(path: str | Path) -> Any:
    """:func:`combiner_from_state` of a file written with ``torch.save(combiner_state(c), path)``."""
    return combiner_from_state(torch.load(path, weights_only=True))
