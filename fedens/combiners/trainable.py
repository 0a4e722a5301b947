"""What every learned combiner offers the training loop and the federation layer.

A learned combiner is a torch module with a per-record ``loss(X, P, y)`` whose
trainable parameters all sit in ``nn.Linear`` layers (so Opacus computes
per-sample gradients), and a split of its state into what is trained (and
travels between sites and coordinator) and what is fixed at construction
(buffers: public input maps, floors, objective flags).

Files hold ``{"kind": <registry name as bytes>, **state_dict}`` (:func:`combiner_state`),
so one reader (:func:`fedens.combiners.state.combiner_from_state`) rebuilds
the right module.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import nn

from fedens.files import torch_bytes, write_atomic

KIND_KEY = "kind"
Self = TypeVar("Self", bound="TrainableCombiner")


class TrainableCombiner(nn.Module):
    """Base of the learned combiners' torch forms; subclasses set ``kind`` and
    implement ``loss``, ``combine`` and ``from_state_dict``."""

    kind: ClassVar[str] = ""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters only: what travels between sites and coordinator
        (buffers such as a public projection stay where they are)."""
        names = {name for name, _ in self.named_parameters()}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load parameters produced by :meth:`trainable_state`; the keys must match exactly."""
        expected = {name for name, _ in self.named_parameters()}
        if set(state) != expected:
            raise ValueError(f"trainable state must have keys {sorted(expected)}, got {sorted(state)}")
        self.load_state_dict(state, strict=False)

    def loss(self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls: type[Self], state: dict[str, torch.Tensor]) -> Self:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the full state (parameters and buffers) to ``path`` (torch format)."""
        write_atomic(path, torch_bytes(self.state_dict()))

    @classmethod
    def load(cls: type[Self], path: str | Path) -> Self:
        """Read a combiner written by :meth:`save`."""
        return cls.from_state_dict(torch.load(path, weights_only=True))


def combiner_state(combiner: TrainableCombiner | object) -> dict[str, torch.Tensor]:
    """``combiner``'s state dict tagged with its kind (the name's UTF-8 bytes as a uint8
    tensor, so the file stays all tensors): the shared initial/global combiner file."""
    tag = torch.tensor(list(combiner.kind.encode()), dtype=torch.uint8)  # type: ignore[attr-defined]
    return {KIND_KEY: tag, **combiner.state_dict()}  # type: ignore[attr-defined]


def decode_kind(tag: torch.Tensor | str) -> str:
    """The kind name from a :func:`combiner_state` tag."""
    return tag if isinstance(tag, str) else bytes(tag.tolist()).decode()


def ones_column(n: int, like: torch.Tensor) -> torch.Tensor:
    """A column of ones (n, 1): the input of an ``nn.Linear(1, K)`` that holds per-expert
    parameters, so Opacus sees one per-record activation and clips per record."""
    return torch.ones(n, 1, dtype=like.dtype, device=like.device)
