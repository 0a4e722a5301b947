"""The simulation|deployment switch: the same Flower apps on Flower's Simulation Engine (Ray, one
machine) or on a running SuperLink (``flwr run``), chosen by ``federation.backend``.

A backend is a function ``(cfg, settings, apps, progress, echo)`` registered by name; a pipeline
hands the frame its apps and run settings and never asks which engine runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def federate(cfg: DictConfig, settings: Mapping[str, Any], apps: FlowerApps, progress: Progress | None,
             echo: Callable[[str], None]) -> None:
    """Run ``apps`` with ``settings`` on the backend ``cfg.federation.backend`` names."""
    BACKENDS[cfg.federation.backend](cfg, settings, apps, progress, echo)


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
