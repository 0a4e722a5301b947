"""Shared fixtures: Hydra configs composed the way the CLI composes them."""

from __future__ import annotations

import os

import pytest

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


@pytest.fixture
def compose():
    """``compose(*overrides)`` -> the DictConfig that ``fedens run`` would use."""
    from fedens.cli import _compose

    return lambda *overrides: _compose(list(overrides))
