"""The run directory: one run per directory, a finished run never resumed."""

from __future__ import annotations

import os
from pathlib import Path

from fedens.config_schema import ConfigError
from fedens.federation import layout as L
from fedens.federation.checkpoint import checkpoint_path, read_checkpoint

#: what a run directory holds once a fedens run has started in it (Hydra's .hydra/ aside)
RUN_MARKERS = ("results.json", "sites", "federation", "coordinator", L.experts_path(".").name)


def check_creatable(path: Path, key: str) -> None:
    """``path`` (the value of ``key``) is a directory, or one can be made there."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file: expected a directory (new or empty)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    why = ("is a file" if not existing.is_dir()
           else "is not writable" if not os.access(existing, os.W_OK | os.X_OK) else "")
    if why:
        raise ConfigError(f"{key}={path} cannot be created: {existing} {why}; expected a directory "
                          "(new or empty) in a folder you can write")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a directory that holds no fedens run (its ledgers, results and site data
    would be mixed with another run's) and that can be created; ``resume`` needs an unfinished
    one whose checkpoint reads back, checked before anything is rebuilt."""
    finished = (run_dir / "results.json").is_file()
    if resume:
        if finished:
            raise ConfigError(f"cannot resume {run_dir}: the run is finished (it has results.json); "
                              "start a new run in another directory")
        try:
            read_checkpoint(run_dir)
        except FileNotFoundError:
            raise ConfigError(f"cannot resume {run_dir}: no checkpoint at {checkpoint_path(run_dir)} "
                              "(the run has not completed a round)") from None
        except ValueError as error:
            raise ConfigError(f"cannot resume {run_dir}: {error}; expected the checkpoint its "
                              "coordinator wrote (start a new run in another directory)") from None
        return
    check_creatable(run_dir, "hydra.run.dir")
    if found := [name for name in RUN_MARKERS if (run_dir / name).exists()]:
        state = "finished" if finished else f"unfinished (it has {found[0]})"
        advice = "" if finished else f"; continue it with `fedens run resume={run_dir}`"
        article = "a" if finished else "an"
        raise ConfigError(f"hydra.run.dir={run_dir} already holds {article} {state} fedens run: choose "
                          f"another directory{advice}")


def prepare_run_dir(run_dir: Path, resume: bool) -> Path:
    """``run_dir`` checked, created and cleared of an earlier attempt's failure note."""
    check_run_dir(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"hydra.run.dir={run_dir} cannot be created: {error.strerror}") from None
    L.failure_path(run_dir).unlink(missing_ok=True)
    return run_dir
