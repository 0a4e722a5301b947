"""Hostile-site drills (``federation.attack``): chosen sites send a corrupted or adversarial update
in place of their own, so the coordinator's defences (its update checks, robust strategies) can
be rehearsed and measured. A drill, like ``inject_faults``: a real hostile site runs its own code.

Each attack maps the global parameters a site received and its honest update to what it sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

State = dict[str, torch.Tensor]
Attack = Callable[[Mapping[str, torch.Tensor], State, float, torch.Generator], State]


def _sign_flip(received: Mapping[str, torch.Tensor], update: State, scale: float,
               rng: torch.Generator) -> State:
    """The honest step reversed and scaled: ``g - scale * (u - g)``."""
    return {k: received[k] - scale * (u - received[k]) for k, u in update.items()}


def _scaled(received: Mapping[str, torch.Tensor], update: State, scale: float,
            rng: torch.Generator) -> State:
    """The honest step scaled up: ``g + scale * (u - g)``."""
    return {k: received[k] + scale * (u - received[k]) for k, u in update.items()}


def _random(received: Mapping[str, torch.Tensor], update: State, scale: float,
            rng: torch.Generator) -> State:
    """Noise in place of a step: ``g + N(0, scale^2)`` per parameter."""
    return {k: received[k] + scale * torch.randn(u.shape, generator=rng) for k, u in update.items()}


def _not_finite(value: float) -> Attack:
    def attack(received: Mapping[str, torch.Tensor], update: State, scale: float,
               rng: torch.Generator) -> State:
        return {k: torch.full_like(u, value) for k, u in update.items()}
    return attack


def _misshapen(received: Mapping[str, torch.Tensor], update: State, scale: float,
               rng: torch.Generator) -> State:
    """Every parameter with one value too many (a site on another model version)."""
    return {k: torch.cat([u.flatten(), u.flatten()[:1]]) for k, u in update.items()}


ATTACKS: dict[str, Attack] = {"signflip": _sign_flip, "scale": _scaled, "random": _random,
                              "nan": _not_finite(float("nan")), "inf": _not_finite(float("inf")),
                              "shape": _misshapen}


def attacked(kind: str, received: Mapping[str, torch.Tensor], update: State, scale: float,
             seed: int) -> State:
    """What a site running drill ``kind`` sends in place of ``update``."""
    if kind not in ATTACKS:
        raise ValueError(f"attack {kind!r}: expected one of {sorted(ATTACKS)}")
    return ATTACKS[kind](received, update, scale, torch.Generator().manual_seed(seed))
