"""A site brings its own table (data=local in deployment): it reads and encodes it as the
coordinator's schema says, and a table that does not fit fails the round with one line naming the
column, nothing charged."""

from __future__ import annotations

import json

import numpy as np
from in_process_grid import InProcessGrid
from sklearn.datasets import load_wine

from fedens.federation import layout as L
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate
from fedens.pipelines.ensemble import federation_settings, prepare
from fedens.privacy import PrivacyLedger
from fedens.runs import compose

SITES = 3


def wine(path):
    X, y = load_wine(return_X_y=True, as_frame=True)
    frame = X.assign(cultivar=[f"c{v}" for v in y], band=np.where(X["color_intensity"] > 5, "dark", "light"))
    frame.to_csv(path, index=False)
    return frame


def test_a_site_trains_on_its_own_table_and_a_misfit_table_is_refused(tmp_path):
    frame = wine(tmp_path / "wine.csv")
    cfg = compose(["data=local", f"data.path={tmp_path / 'wine.csv'}", "data.label=cultivar",
                   f"federation.num_sites={SITES}", "partition=iid", "experts.num_experts=3",
                   "experts.specialty_classes=1", "federation.personalization.holdout=0"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prepare(cfg, run_dir)
    schema = json.loads(L.task_schema_path(run_dir).read_text())["table"]
    assert schema["label"] == "cultivar" and schema["categories"] == {"band": ["dark", "light"]}
    own = tmp_path / "site_0.csv"  # site 0's own records, as its institution keeps them
    frame.sample(40, random_state=1).to_csv(own, index=False)
    misfit = tmp_path / "site_1.csv"
    frame.drop(columns=["proline"]).sample(30, random_state=2).to_csv(misfit, index=False)

    settings = {**federation_settings(cfg, run_dir), L.NUM_ROUNDS: 1}
    grid = InProcessGrid(make_client_app(settings), SITES)
    for context in grid.contexts.values():
        site = context.node_config[L.PARTITION_ID]
        if site < 2:
            context.node_config[L.DATA_PATH] = str((own, misfit)[site])
            context.node_config[L.LEDGER_PATH] = str(tmp_path / f"ledger_{site}.sqlite")
    coordinate(grid, settings, progress=None)

    report = json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())
    assert set(report["sites"]["1"]) == {"0", "2"}
    assert report["sites"]["1"]["0"]["num-examples"] == 40
    (failure,) = report["failures"]["1"]
    assert failure["site"] == 1 and failure["kind"] == "invalid-data"
    assert "site 1: site_1.csv has no column data.features='proline'" in failure["reason"]
    if (tmp_path / "ledger_1.sqlite").exists():  # nothing charged
        assert PrivacyLedger.read(tmp_path / "ledger_1.sqlite").records() == []
    assert [r["round"] for r in PrivacyLedger.read(tmp_path / "ledger_0.sqlite").records()] == [1]
