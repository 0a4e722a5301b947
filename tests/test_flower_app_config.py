"""pyproject.toml's ``[tool.flwr.app.config]`` is there only because Flower needs every run-config
key declared (the SuperLink refuses others). It must equal what the frame sends: the same keys,
and, for the default configs, the same values (the run's own paths aside), so ``flwr run`` without
fedens behaves as ``fedens run`` does."""

import json
from pathlib import Path

import pytest
import tomli

from fedens.federation import layout as L
from fedens.pipelines.ensemble import EnsemblePipeline, federation_settings

DECLARED = tomli.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
    "tool"]["flwr"]["app"]["config"]
SET_BY_THE_RUN = {L.RUN_DIR, L.EXPERTS_PATH, L.INITIAL_COMBINER_PATH, L.TASK_SCHEMA}


@pytest.fixture
def run_dir(tmp_path):
    L.task_schema_path(tmp_path).parent.mkdir(parents=True)
    L.task_schema_path(tmp_path).write_text(json.dumps({"num_features": 64, "num_classes": 10}))
    return tmp_path


def sent(compose, run_dir, *overrides):
    return federation_settings(compose(*overrides), run_dir)


def test_the_declared_keys_are_exactly_those_the_frame_sends(compose, run_dir):
    keys = set()
    for combiner in EnsemblePipeline.groups["combiner"]:
        settings = sent(compose, run_dir, f"combiner={combiner}")
        assert set(settings) <= set(DECLARED), (combiner, set(settings) - set(DECLARED))
        keys |= set(settings)
    assert keys == set(DECLARED), set(DECLARED) - keys


@pytest.mark.parametrize("combiner", EnsemblePipeline.groups["combiner"])
def test_the_declared_values_are_the_default_configs(compose, run_dir, combiner):
    settings = sent(compose, run_dir, f"combiner={combiner}")
    quickstart = sent(compose, run_dir)
    for key, value in settings.items():
        if key in SET_BY_THE_RUN:
            assert DECLARED[key] == "", key  # filled in by fedens run
        elif key in quickstart and quickstart[key] != value:
            continue  # the combiner changes it (a cascade has one release, no holdout): not a default
        else:
            assert DECLARED[key] == value, (key, DECLARED[key], value)
