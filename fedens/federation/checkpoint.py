"""The coordinator's per-round checkpoint, so ``resume=<run dir>`` can continue a run.

One file, ``<run-dir>/federation/checkpoint.npz``, replaced atomically after
each round: the round, the global parameters, the strategy's own state (server
optimiser moments, adaptive clipping norms), and the report so far (rows,
per-site metrics, failures). Sampling needs no saved RNG state: it is seeded
from (seed, round). The sites' spend lives in their own ledgers, which a
re-run round does not charge twice (``PrivacyLedger.charge(release_key=...)``).

Stored by :func:`fedens.files.state_bytes` (JSON and NumPy arrays, read with
``allow_pickle=False``): reading a checkpoint runs no code, whoever wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedens.federation import layout as L
from fedens.federation.strategies import arrays_record, restore_strategy_state, strategy_state
from fedens.files import read_state, state_bytes, write_atomic

FORMAT = 2  # 1: a pickle (fedens before code-free checkpoints)


@dataclass
class Checkpoint:
    round: int
    arrays: list[tuple[str, np.ndarray]]  # the global parameters, by name, in order
    strategy: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    def array_record(self) -> ArrayRecord:
        return arrays_record(self.arrays)


def checkpoint_path(run_dir: str | Path) -> Path:
    return L.federation_dir(run_dir) / "checkpoint.npz"


def save_checkpoint(run_dir: str | Path, server_round: int, arrays: ArrayRecord, strategy: Strategy,
                    report: dict[str, Any]) -> Path:
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "round": server_round, "strategy": strategy_state(strategy), "report": report,
             "arrays": [(name, array.numpy()) for name, array in arrays.items()]}
    write_atomic(path, state_bytes(state))
    return path


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The run's last checkpoint. FileNotFoundError if there is none; ValueError naming the file
    if it is not a checkpoint this version of fedens wrote (damaged, truncated, another format)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not completed a round")
    try:
        saved = read_state(path.read_bytes())
    except ValueError as error:
        raise ValueError(f"{path} is damaged: {error}") from None
    keys = {"format", "round", "arrays", "strategy", "report"}
    if not isinstance(saved, dict) or not keys <= set(saved):
        raise ValueError(f"{path} is not a fedens checkpoint")
    if saved["format"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {saved['format']!r}, expected {FORMAT}")
    return Checkpoint(int(saved["round"]), [tuple(pair) for pair in saved["arrays"]], saved["strategy"],
                      saved["report"])


def checkpointed_round(run_dir: str | Path) -> int:
    """The last round the run's checkpoint holds; 0 if it has none yet."""
    try:
        return read_checkpoint(run_dir).round
    except FileNotFoundError:
        return 0


def load_checkpoint(run_dir: str | Path, strategy: Strategy) -> Checkpoint:
    """The run's last checkpoint, with ``strategy``'s state put back (see :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(run_dir)
    restore_strategy_state(strategy, checkpoint.strategy)
    return checkpoint
