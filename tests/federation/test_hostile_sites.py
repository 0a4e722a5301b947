"""Hostile or broken sites (fedens.federation.attacks drills): the coordinator rejects corrupt
updates and goes on with the others; robust strategies resist what FedAvg does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, RecordDict
from small_federation import federate, final_state

from fedens.federation import layout as L
from fedens.federation.attacks import attacked
from fedens.federation.ensemble.rounds import update_problem
from fedens.federation.ensemble.server import coordinate
from fedens.pipelines.ensemble import federation_settings


def reply_with(state):
    return Message(RecordDict({"arrays": ArrayRecord(state)}), dst_node_id=1, message_type="train")


def test_update_problem_names_what_is_wrong():
    g = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    honest = {"w": torch.full((2, 3), 0.1), "b": torch.full((3,), -0.1)}
    current = {k: v.numpy() for k, v in g.items()}
    assert update_problem(current, reply_with(honest), 10.0) == ""
    for kind, said in (("nan", "parameter 'w' has non-finite values"),
                       ("inf", "parameter 'w' has non-finite values"),
                       ("shape", "parameter 'w' has shape (7,), expected (2, 3)")):
        assert update_problem(current, reply_with(attacked(kind, g, honest, 10.0, seed=0)), 10.0) == said
    far = attacked("scale", g, honest, 1e4, seed=0)  # the step 1e4 times: norm 1e4 * sqrt(0.09)
    assert update_problem(current, reply_with(far), 10.0) == \
        "update norm 3e+03 exceeds federation.max_update_norm=10"
    assert "differ from the global ones" in update_problem(current, reply_with({"w": honest["w"]}), 10.0)


@pytest.mark.parametrize("kind, said", [("nan", "non-finite values"), ("shape", "has shape"),
                                        ("scale", "exceeds federation.max_update_norm=100")])
def test_a_corrupt_update_is_rejected_and_the_round_aggregates_the_others(prepared_cfg, run_dir, tmp_path,
                                                                          kind, said):
    import shutil

    cfg, _ = prepared_cfg
    shutil.copytree(run_dir, tmp_path / "without")
    report = federate(cfg, run_dir, **{L.ATTACK_KIND: kind, L.ATTACK_SITES: "1", L.ATTACK_SCALE: 1e6,
                                       L.NUM_ROUNDS: 2})
    for server_round in ("1", "2"):
        (failure,) = report["failures"][server_round]
        assert failure["site"] == 1 and failure["kind"] == "rejected-update" and said in failure["reason"]
        assert set(report["sites"][server_round]) == {"0", "2"}
    # the same as a federation in which site 1 never replied
    federate(cfg, tmp_path / "without", **{L.INJECT_FAULTS: "1:1:raise,1:2:raise", L.NUM_ROUNDS: 2})
    for key, value in final_state(run_dir).items():
        assert torch.equal(value, final_state(tmp_path / "without")[key]), key


def test_fedmedian_resists_a_sign_flipping_site_that_fedavg_follows(prepared_cfg, run_dir, tmp_path):
    import shutil

    cfg, _ = prepared_cfg
    runs = {name: tmp_path / name for name in ("honest", "fedavg", "median")}
    for folder in runs.values():
        shutil.copytree(run_dir, folder)
    attack = {L.ATTACK_KIND: "signflip", L.ATTACK_SITES: "1", L.ATTACK_SCALE: 10.0, L.NUM_ROUNDS: 2}
    federate(cfg, runs["honest"], **{L.NUM_ROUNDS: 2})
    federate(cfg, runs["fedavg"], **attack)
    federate(cfg, runs["median"], **{**attack, L.STRATEGY: "FedMedian"})

    def distance(a, b):
        sa, sb = final_state(a), final_state(b)
        return float(np.sqrt(sum(((sa[k] - sb[k]) ** 2).sum() for k in ("router.weight", "router.bias"))))

    followed, resisted = distance(runs["fedavg"], runs["honest"]), distance(runs["median"], runs["honest"])
    assert resisted < followed / 3, (resisted, followed)


def impostor_grid(settings, first: bool):
    """The small federation's sites plus node 5000, which claims to be site 1."""
    from flwr.app import Context
    from in_process_grid import InProcessGrid
    from small_federation import NUM_SITES

    from fedens.federation.ensemble.client import make_client_app

    grid = InProcessGrid(make_client_app(settings), NUM_SITES)
    impostor = {5000: Context(run_id=1, node_id=5000, state=RecordDict(), run_config={},
                              node_config={L.PARTITION_ID: 1})}
    grid.contexts = {**impostor, **grid.contexts} if first else {**grid.contexts, **impostor}
    return grid


@pytest.mark.parametrize("binding", ["", "0=1000,1=1007,2=1014"])
def test_a_node_claiming_another_sites_id_is_refused(prepared_cfg, run_dir, binding):
    """Unbound, the second claimant of a site is refused; bound (site -> node id, what
    `flwr supernode register` gives a site's key), a claimant from another node is refused even
    when it answers first. The rounds go on with the real sites."""
    cfg, _ = prepared_cfg
    settings = {**federation_settings(cfg, run_dir), L.HOLDOUT: 0.0, L.NUM_ROUNDS: 2, L.SITE_NODES: binding}
    coordinate(impostor_grid(settings, first=bool(binding)), settings, progress=None)
    report = json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())
    (refusal,) = report["failures"]["1"]
    assert refusal["node"] == 5000 and refusal["site"] == 1 and refusal["kind"] == "wrong-site"
    assert refusal["reason"].startswith("node 5000 claims site 1: refused, ")
    assert ("binds site 1 to node 1007" if binding else "node 1007 already holds site 1") in refusal["reason"]
    assert report["failures"]["2"] == []  # refused once, not asked again
    for server_round in ("1", "2"):
        assert set(report["sites"][server_round]) == {"0", "1", "2"}


def test_site_nodes_are_checked_before_a_run_starts():
    from fedens.federation.grid import parse_site_nodes

    assert parse_site_nodes("0=4021, 1=977") == {0: 4021, 1: 977} and parse_site_nodes("") == {}
    with pytest.raises(ValueError, match="site-nodes entry '0:4021': expected site=node-id"):
        parse_site_nodes("0:4021")
