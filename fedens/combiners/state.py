"""One reader for every combiner file the federation passes around.

The shared initial combiner (and the coordinator's global one) is a torch
state dict tagged with the combiner's kind (:func:`combiner_state`); files
without a tag are GatedEnsemble states (written before other kinds existed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedens.combiners.base import COMBINERS
from fedens.combiners.federated import FederatedForm
from fedens.combiners.gated import GatedEnsemble
from fedens.combiners.trainable import KIND_KEY, combiner_state, decode_kind

__all__ = ["federated_form", "federated_forms", "combiner_from_state", "combiner_state", "load_combiner",
           "kind_of"]


def federated_form(name: str) -> type[FederatedForm] | None:
    """The class a federation learns for the combiner registered as ``name`` (the class itself,
    or the torch form of a numpy combiner); None for a fixed combiner (mean, vote)."""
    cls = COMBINERS[name]
    return cls if issubclass(cls, FederatedForm) else getattr(cls, "federated_form", None)


def federated_forms() -> dict[str, type[FederatedForm]]:
    """Every federated form by its kind (the tag in a combiner file)."""
    forms = (federated_form(name) for name in COMBINERS)
    return {form.kind: form for form in forms if form is not None}


def kind_of(state: dict[str, Any]) -> str:
    """The kind tag of a combiner state (untagged: ``gated_ensemble``)."""
    kind = decode_kind(state.get(KIND_KEY, GatedEnsemble.kind))
    if kind not in federated_forms():
        raise ValueError(f"combiner state has kind {kind!r}; expected one of {sorted(federated_forms())}")
    return kind


def combiner_from_state(state: dict[str, Any]) -> Any:
    """Rebuild the combiner a (tagged) state dict describes."""
    kind = kind_of(state)
    return federated_forms()[kind].from_state_dict({k: v for k, v in state.items() if k != KIND_KEY})


def load_combiner(path: str | Path) -> Any:
    """:func:`combiner_from_state` of a file written with ``torch.save(combiner_state(c), path)``."""
    return combiner_from_state(torch.load(path, weights_only=True))
