"""The simulation|deployment switch: the same Flower apps on Flower's Simulation Engine (Ray, one
machine) or on a running SuperLink (``flwr run``), chosen by ``federation.backend``.

A backend is a function ``(cfg, settings, apps, progress, echo)`` registered by name; a pipeline
hands the frame its apps and run settings and never asks which engine runs them. Inside a running
ServerApp (``flwr run .`` alone, :mod:`fedens.flower_app`) the apps run on that run's grid instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from fedens.registry import Registry

Progress = Callable[[Any], None]


@dataclass(frozen=True)
class FlowerApps:
    """A pipeline's apps: ``server(settings, progress)`` and ``client(settings)`` build them."""

    server: Callable[[Mapping[str, Any], Progress | None], Any]
    client: Callable[[Mapping[str, Any]], Any]


BACKENDS = Registry("federation backend")


#: (grid, context) of the ServerApp this process runs in, while it runs a prepared run on them
_ON_GRID: ContextVar[tuple[Any, Any] | None] = ContextVar("fedens_on_grid", default=None)


@contextmanager
def on_grid(grid: Any, context: Any) -> Iterator[None]:
    """Within this block :func:`federate` runs the apps on ``grid``, the grid of the running
    ``flwr run`` whose ServerApp context is ``context``."""
    token = _ON_GRID.set((grid, context))
    try:
        yield
    finally:
        _ON_GRID.reset(token)


def federate(cfg: DictConfig, settings: Mapping[str, Any], apps: FlowerApps, progress: Progress | None,
             echo: Callable[[str], None]) -> None:
    """Run ``apps`` with ``settings`` on the backend ``cfg.federation.backend`` names (inside
    :func:`on_grid`: on that grid)."""
    if (running := _ON_GRID.get()) is not None:
        return _run_on_grid(*running, settings, apps, progress)
    BACKENDS[cfg.federation.backend](cfg, settings, apps, progress, echo)


def _run_on_grid(grid: Any, context: Any, settings: Mapping[str, Any], apps: FlowerApps,
                 progress: Progress | None) -> None:
    """The coordinator on the running grid, the settings published for this run's sites (its
    run_config names no run directory; they run on this machine: Flower's local simulation)."""
    from flwr.app import Context

    from fedens.federation import layout as L
    from fedens.files import write_atomic

    published = L.published_settings_path(context.run_id)
    published.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(published, json.dumps(dict(settings)))
    try:
        apps.server(settings, progress)(grid, Context(run_id=context.run_id, node_id=context.node_id,
                                                      node_config=context.node_config, state=context.state,
                                                      run_config=dict(settings)))
    finally:
        published.unlink(missing_ok=True)


@BACKENDS.register("simulation")  # type: ignore[arg-type]
def simulate(cfg: DictConfig, settings: Mapping[str, Any], apps: FlowerApps, progress: Progress | None,
             echo: Callable[[str], None]) -> None:
    from fedens.federation.simulation import run_in_simulation

    try:
        run_in_simulation(apps.server(settings, progress), apps.client(settings), cfg.federation.num_sites,
                          num_cpus=cfg.federation.num_cpus, verbose=cfg.federation.verbose)
    except Exception as error:  # noqa: BLE001
        # Flower 1.41 re-raises a ServerApp's exception from its thread. The coordinator has
        # recorded why (layout.failure_recorded) and the pipeline reports it in one line, as on
        # the Deployment Engine; this line says what the engine itself said.
        said = (str(error).splitlines() or [""])[0][:300]
        echo(f"simulation  Flower's Simulation Engine stopped: {type(error).__name__}: {said}")


@BACKENDS.register("deployment")  # type: ignore[arg-type]
def deploy(cfg: DictConfig, settings: Mapping[str, Any], apps: FlowerApps, progress: Progress | None,
           echo: Callable[[str], None]) -> None:
    """The apps the Flower App at ``federation.app_dir`` declares, shipped by ``flwr run`` to the
    SuperLink ``federation.superlink``; the ServerApp's progress lines come back in its log."""
    from fedens.federation.deployment import run_in_deployment

    run_in_deployment(settings, superlink=cfg.federation.superlink, app_dir=cfg.federation.app_dir,
                      timeout=float(cfg.federation.run_timeout), verbose=cfg.federation.verbose, echo=echo)
