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


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The run's last checkpoint. FileNotFoundError if there is none; ValueError naming the file
    if it is not a checkpoint this version of fedens wrote (damaged, truncated, another format)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not completed a round")
    try:
        with path.open("rb") as f:
            saved = pickle.load(f)
    except Exception as error:  # a damaged pickle can raise nearly anything
        said = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path} is damaged ({type(error).__name__}{': ' + said if said else ''})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("checkpoint"), Checkpoint):
        raise ValueError(f"{path} is not a fedens checkpoint")
    if saved.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {saved.get('format')!r}, expected {FORMAT}")
    return saved["checkpoint"]


def load_checkpoint(run_dir: str | Path, strategy: Strategy) -> Checkpoint:
    """The run's last checkpoint, with ``strategy``'s state put back (see :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(run_dir)
    restore_strategy_state(strategy, checkpoint.strategy)
    return checkpoint
