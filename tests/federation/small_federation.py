"""A small quickstart federation run in process (no Ray), for the round-loop tests."""

from __future__ import annotations

import json

import torch
from in_process_grid import InProcessGrid

from fedens.federation import layout as L
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate
from fedens.pipelines.ensemble import federation_settings

NUM_SITES = 3
OVERRIDES = [f"federation.num_sites={NUM_SITES}", "federation.num_rounds=3", "experts.num_experts=4",
             "experts.families=[logreg,naive_bayes]", "combiner.top_k=1", "combiner.local_epochs=1",
             "privacy.epsilon=4"]


def federate(cfg, run_dir, grid=None, resume=False, **overrides):
    """The coordinator's rounds over the sites' real ClientApps; its ``rounds.json``."""
    settings = {**federation_settings(cfg, run_dir, resume), L.HOLDOUT: 0.0, **overrides}
    grid = grid or InProcessGrid(make_client_app(settings), NUM_SITES)
    coordinate(grid, settings, progress=None)
    return json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())


def final_state(run_dir):
    return torch.load(L.federation_dir(run_dir) / "global_combiner.pt")
