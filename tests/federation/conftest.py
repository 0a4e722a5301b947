"""Fixtures for the federation tests."""

import pytest


@pytest.fixture(autouse=True)
def serverapp_identity():
    """Messages are created by a ServerApp task; say we are one (as run_simulation does)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
