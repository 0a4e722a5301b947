"""The coordinator's per-round checkpoint, so ``resume=<run dir>`` can continue a run.

One file, ``<run-dir>/federation/checkpoint.pkl``, replaced atomically after
each round: the round, the global parameters, the strategy's own state (server
optimiser moments, adaptive clipping norms), and the report so far (rows,
per-site metrics, failures). Sampling needs no saved RNG state: it is seeded
from (seed, round). The sites' spend lives in their own ledgers, which a
re-run round does not charge twice (``PrivacyLedger.charge(release_key=...)``).

A pickle: load checkpoints only from run directories you wrote yourself.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedens.federation import layout as L
from fedens.federation.strategies import restore_strategy_state, strategy_state
from fedens.files import write_atomic

FORMAT = 1


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, Any]  # a torch state dict
    strategy: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    def array_record(self) -> ArrayRecord:
        return ArrayRecord(self.arrays)


def checkpoint_path(run_dir: str | Path) -> Path:
    return L.federation_dir(run_dir) / "checkpoint.pkl"


def save_checkpoint(run_dir: str | Path, server_round: int, arrays: ArrayRecord, strategy: Strategy,
                    report: dict[str, Any]) -> Path:
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = Checkpoint(server_round, arrays.to_torch_state_dict(), strategy_state(strategy), report)
    write_atomic(path, pickle.dumps({"format": FORMAT, "checkpoint": state}))
    return path


def load_checkpoint(run_dir: str | Path, strategy: Strategy) -> Checkpoint:
    """The run's last checkpoint, with ``strategy``'s state put back; FileNotFoundError if none."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not completed a round")
    with path.open("rb") as f:
        saved = pickle.load(f)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {saved.get('format')!r}, expected {FORMAT}")
    checkpoint: Checkpoint = saved["checkpoint"]
    restore_strategy_state(strategy, checkpoint.strategy)
    return checkpoint
