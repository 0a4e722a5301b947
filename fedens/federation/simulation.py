"""Run the fedens apps under Flower's Simulation Engine (Ray) on one machine."""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedens.federation.reaper import watching


def run_in_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_sites: int,
    *,
    num_cpus: int = 2,
    verbose: bool = False,
) -> None:
    """Run ``num_sites`` simulated SuperNodes with ``client_app`` and the coordinator's
    ``server_app`` until the server app returns."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # fedens prints its own progress; failures show in its reports
        flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), watching():  # Ray's agents outlive a killed run otherwise
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_sites,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {
                        "num_cpus": num_cpus,
                        "include_dashboard": False,
                        "logging_level": "ERROR" if not verbose else "INFO",
                        "log_to_driver": verbose,
                    },
                },
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
