"""Fixtures for the federation tests."""

import pytest


@pytest.fixture(autouse=True)
def serverapp_identity():
    """Messages are created by a ServerApp task; say we are one (as run_simulation does)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="session")
def simulated_shrunk_quickstart(tmp_path_factory):
    """The deployment tests' shrunk quickstart, run once in the Simulation Engine: the result
    both the loopback and the across-hosts deployment are compared with."""
    from test_deployment import SHRINK

    from fedens import run
    from fedens.runs import compose as _compose

    return run(_compose(list(SHRINK)), run_dir=tmp_path_factory.mktemp("simulated"))
