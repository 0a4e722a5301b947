"""Experiment trackers (``tracker=`` in the config), fed from a run's per-round progress rows and
its final results: TensorBoard event files in the run directory, or an MLflow run (the tracking
URI ``MLFLOW_TRACKING_URI`` names, else a SQLite store in the run directory). ``tracker=auto``
takes whichever is installed; ``none`` (the default) tracks nothing."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedens.registry import Registry

TRACKERS = Registry("tracker")
#: the sections of results.json whose numbers a tracker records at the end
FINAL_SECTIONS = ("metrics", "baselines", "privacy", "cost")
SKIPPED = ("round", "num_rounds")  # the step itself


def numbers(row: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The row's numeric values (nested mappings as ``a/b``), booleans and the step left out."""
    for key, value in row.items():
        if isinstance(value, Mapping):
            yield from numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in SKIPPED:
            yield f"{prefix}{key}", float(value)


class Tracker:
    """What every tracker does with the numbers; a subclass says where a scalar goes
    (:meth:`scalar`) and how the run ends (:meth:`close`)."""

    package = ""  # the module it needs installed
    step = 0

    def scalar(self, key: str, value: float, step: int) -> None:
        raise NotImplementedError

    def close(self, ok: bool) -> None:
        raise NotImplementedError

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for key, value in numbers(row):
            self.scalar(key, value, step)
        self.step = max(self.step, step)

    def finish(self, results: Mapping[str, Any], ok: bool = True) -> None:
        for key, value in numbers({s: results[s] for s in FINAL_SECTIONS if s in results}):
            self.scalar(key, value, self.step + 1)
        self.close(ok)


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """Scalars in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``): each round's row at
    its round, the final results at the last round + 1; the run's config as text."""

    package = "tensorboard"

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "```")

    def scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)

    def close(self, ok: bool) -> None:
        self.writer.close()


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run in the experiment named after the run (``name``), with the config's values
    as parameters, each round's row as metrics at its step and the final results."""

    package = "mlflow"

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir) / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.name)
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).name).info.run_id
        for key, value in _flat(OmegaConf.to_container(cfg, resolve=True)):
            self.client.log_param(self.run_id, key, str(value)[:500])

    def scalar(self, key: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def _flat(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(config, Mapping):
        for key, value in config.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), config


def installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKERS[name].package) is not None


def tracker_problem(name: Any) -> str:
    """Why ``tracker=name`` cannot track ('' when it can)."""
    choices = ["none", "auto", *TRACKERS]
    if name not in choices:
        return f"one of {choices}"
    if name in TRACKERS and not installed(name):
        return f"a tracker whose package is installed (pip install {TRACKERS[name].package})"
    return ""


def open_tracker(name: str, run_dir: Path, cfg: DictConfig) -> Any | None:
    """The tracker ``name`` chooses (``auto``: the first installed of :data:`TRACKERS`), or None."""
    if name == "auto":
        name = next((n for n in TRACKERS if installed(n)), "none")
    return None if name == "none" else TRACKERS[name](run_dir, cfg)
