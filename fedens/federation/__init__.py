"""Flower apps (Message API) and how to run them: simulation now, deployment later."""

from fedens.federation.client_app import make_client_app
from fedens.federation.server_app import make_server_app
from fedens.federation.simulation import run_in_simulation

__all__ = ["make_client_app", "make_server_app", "run_in_simulation"]
