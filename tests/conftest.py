"""Shared fixtures: Hydra configs composed the way the CLI composes them."""

from __future__ import annotations

import os

import pytest

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


@pytest.fixture
def compose():
    """``compose(*overrides)`` -> the DictConfig that ``fedens run`` would use."""
    from fedens.runs import compose as _compose

    return lambda *overrides: _compose(list(overrides))


@pytest.fixture(scope="session")
def chat_server():
    """A loopback OpenAI-compatible chat server (tests/chat_server.py), one per session."""
    from chat_server import ChatServer

    server = ChatServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def in_process_engine(monkeypatch):
    """``federation.backend=simulation`` runs the apps in this process (no Ray): for tests of what a
    pipeline computes and reports; the Ray end-to-end tests keep the real engine."""
    from in_process_grid import run_in_process

    from fedens.runs.backends import BACKENDS

    monkeypatch.setitem(BACKENDS, "simulation", run_in_process)


def pytest_collection_modifyitems(config, items):
    """The longest first: the Deployment Engine drills, then the end-to-end runs, then the rest
    (stable within each), so that on the suite's two workers the long runs overlap everything
    else instead of ending the run."""
    def rank(item) -> int:
        return 0 if item.get_closest_marker("deployment") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)
