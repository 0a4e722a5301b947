"""Experiment trackers: MLflow and TensorBoard get each progress row at its step and the final
results after the last; a tracker that is unknown or not installed is refused before a run."""

from __future__ import annotations

import pytest

from fedens.config_schema import ConfigError
from fedens.runs import compose
from fedens.runs.config import FRAME_SCHEMA
from fedens.runs.trackers import TRACKERS, numbers, open_tracker

ROWS = [{"round": r, "num_rounds": 2, "router_accuracy": 0.5 + r / 10, "sites_reporting": 3,
         "aggregated": True, "failures": []} for r in (1, 2)]
RESULTS = {"metrics": {"test_accuracy": 0.8, "per_site": {"0": 0.7}}, "privacy": {"epsilon_max": 3.9},
           "data": {"num_sites": 3}}


def test_numbers_are_the_rows_numeric_values_by_path():
    assert dict(numbers(ROWS[0])) == {"router_accuracy": 0.6, "sites_reporting": 3.0}
    assert dict(numbers(RESULTS)) == {"metrics/test_accuracy": 0.8, "metrics/per_site/0": 0.7,
                                      "privacy/epsilon_max": 3.9, "data/num_sites": 3.0}


def test_mlflow_gets_the_config_each_round_and_the_results(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["tracker=mlflow"])
    tracker = open_tracker("mlflow", tmp_path, cfg)
    for row in ROWS:
        tracker.log(row, row["round"])
    tracker.finish(RESULTS)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "0"
    assert run.data.params["combiner.name"] == cfg.combiner.name
    history = client.get_metric_history(tracker.run_id, "router_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.6), (2, 0.7)]
    final = client.get_metric_history(tracker.run_id, "metrics/test_accuracy")
    assert [(m.step, m.value) for m in final] == [(3, 0.8)]
    assert client.get_experiment(run.info.experiment_id).name == "quickstart"


def test_auto_takes_an_installed_tracker_and_none_takes_none(tmp_path):
    assert open_tracker("none", tmp_path, compose()) is None
    tracker = open_tracker("auto", tmp_path, compose())
    assert type(tracker) is TRACKERS["tensorboard"]  # the first installed
    tracker.finish({})
    assert list((tmp_path / "tensorboard").iterdir())


def test_an_unknown_or_missing_tracker_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match=r"invalid tracker='wandb': expected one of \['none', 'auto', "
                                          r"'tensorboard', 'mlflow'\]"):
        FRAME_SCHEMA.check(compose(["tracker=wandb"]))
    monkeypatch.setattr(TRACKERS["mlflow"], "package", "mlflow_that_is_not_installed")
    with pytest.raises(ConfigError, match=r"invalid tracker='mlflow': expected a tracker whose package is "
                                          r"installed \(pip install mlflow_that_is_not_installed\)"):
        FRAME_SCHEMA.check(compose(["tracker=mlflow"]))
