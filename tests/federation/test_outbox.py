"""A site's outbox records every reply as it leaves; canaries planted in the sites' data never
appear in it, nor does any private record (the quickstart's protocol, in process)."""

from __future__ import annotations

import numpy as np
from in_process_grid import InProcessGrid
from leak_check import CANARY, leaks, plant_canaries
from small_federation import NUM_SITES

from fedens.combiners.state import combiner_from_state
from fedens.federation import layout as L
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.server import coordinate
from fedens.federation.outbox import read_outbox
from fedens.pipelines.ensemble import federation_settings


def test_no_canary_and_no_private_record_leaves_a_site(prepared_cfg, run_dir):
    import torch

    cfg, _ = prepared_cfg
    records = {site: plant_canaries(L.site_dir(run_dir, site) / "data.npz") for site in range(NUM_SITES)}
    settings = {**federation_settings(cfg, run_dir), L.NUM_ROUNDS: 2, L.HOLDOUT: 0.25}
    grid = InProcessGrid(make_client_app(settings), NUM_SITES)
    for context in grid.contexts.values():
        site = context.node_config[L.PARTITION_ID]
        context.node_config[L.OUTBOX_PATH] = str(run_dir / f"outbox_{site}")
    coordinate(grid, settings, progress=None)

    initial = combiner_from_state(torch.load(run_dir / "initial_combiner.pt", weights_only=True))
    names = set(initial.trainable_state())
    for site in range(NUM_SITES):
        outbox = run_dir / f"outbox_{site}"
        kinds = [e["message_type"] for e in read_outbox(outbox)]
        assert kinds == ["query.site", "train", "train", "evaluate"], kinds
        assert leaks(outbox, records[site], names) == []


def test_the_leak_check_finds_a_planted_leak(tmp_path):
    """The check above could fail: a reply that carries a record, or a canary, is caught."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

    from fedens.federation.outbox import record_outgoing

    records = np.vstack([np.arange(64, dtype=np.float64), np.full(64, CANARY)])
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={L.OUTBOX_PATH: str(tmp_path / "outbox")})

    def leaky(msg, ctx):
        return Message(RecordDict({"arrays": ArrayRecord([records[0].astype(np.float32)]),
                                   "metrics": MetricRecord({"site": 0, "mean-x": 1.0})}), reply_to=msg)

    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    record_outgoing(msg, context, leaky)
    found = leaks(tmp_path / "outbox", records, {"w"})
    assert "outbox: a train reply carries record 0 as float32" in found
    assert "outbox: a train reply: metrics ['mean-x']" in found
    assert any("array record 'arrays' with ['0']" in f for f in found)
