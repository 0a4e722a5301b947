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


@pytest.fixture(scope="module")
def prepared_cfg(tmp_path_factory):
    """A small quickstart (small_federation.OVERRIDES): files prepared once per module."""
    from small_federation import OVERRIDES

    from fedens.pipelines.ensemble import prepare
    from fedens.runs import compose as _compose

    cfg = _compose(OVERRIDES)
    source = tmp_path_factory.mktemp("prepared")
    prepare(cfg, source)
    return cfg, source


@pytest.fixture
def run_dir(prepared_cfg, tmp_path):
    """A copy of the prepared files for one test."""
    import shutil

    _, source = prepared_cfg
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run"
