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



@pytest.fixture
def in_process_engine(monkeypatch):
    """``federation.backend=simulation`` runs the apps in this process (no Ray): for tests of what a
    pipeline computes and reports; the Ray end-to-end tests keep the real engine."""
    from in_process_grid import run_in_process

    from fedens.runs.backends import BACKENDS

    monkeypatch.setitem(BACKENDS, "simulation", run_in_process)
