"""PATE's votes path charges in one step: a site reserves the batch's worst case in the same
transaction that lets it answer, and the charge message settles the reservation. A batch some
site could not settle is dropped; its reservation stays at the worst case."""

import json

import dp_accounting
import numpy as np
import pytest
from flwr.app import Error, Message
from in_process_grid import InProcessGrid

from fedens.federation import layout as L
from fedens.federation.votes.coordinator import coordinate_pate
from fedens.federation.votes.sites import make_pate_client_app
from fedens.pipelines.pate import _mechanism_params, federation_settings, prepare
from fedens.privacy import PrivacyLedger, epsilon_from_events, make_mechanism

SHRUNK = ["experiment=pate_mnist", "federation.num_sites=2", "experts.num_teachers=6",
          "experts.steps=5", "privacy.num_queries=12", "privacy.query_batch=6",
          "privacy.threshold=3", "privacy.sigma1=1", "privacy.sigma2=1", "privacy.budget=100"]


class LedgerSpyGrid(InProcessGrid):
    """Reads each site's ledger the moment its vote reply leaves it; ``lose_charge``: the
    ``query.charge`` of that (site, batch) never reaches the site."""

    def __init__(self, *args, run_dir, lose_charge=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_dir, self.lose_charge, self.at_vote = run_dir, lose_charge, []

    def send_and_receive(self, messages, *, timeout=None):
        kind = messages[0].metadata.message_type
        if kind == "query.charge" and self.lose_charge is not None:
            replies = []
            for msg in messages:
                site = self.contexts[msg.metadata.dst_node_id].node_config[L.PARTITION_ID]
                if (site, int(msg.content["config"]["batch"])) == self.lose_charge:
                    replies.append(Message(Error(code=2, reason="Message: lost"), reply_to=msg))
                else:
                    replies.extend(super().send_and_receive([msg], timeout=timeout))
            return replies
        replies = super().send_and_receive(messages, timeout=timeout)
        if kind == "query.votes":
            for site in (0, 1):
                ledger = PrivacyLedger.read(L.site_dir(self.run_dir, site) / "ledger.sqlite")
                states = [r["state"] for r in ledger.records()]
                self.at_vote.append((site, states, ledger.epsilon_worst_case()))
                ledger.close()
        return replies


def run_pate(compose, tmp_path, **grid_options):
    cfg = compose(*SHRUNK, f"experts.cache_dir={tmp_path / 'teachers'}")
    data = prepare(cfg, tmp_path)
    settings = federation_settings(cfg, tmp_path, data["teachers"])
    grid = LedgerSpyGrid(make_pate_client_app(settings), 2, run_dir=tmp_path, **grid_options)
    coordinate_pate(grid, settings, None)
    mechanism = make_mechanism(cfg.privacy.mechanism, **_mechanism_params(cfg))
    return grid, mechanism, json.loads((L.federation_dir(tmp_path) / "pate.json").read_text())


def test_a_site_has_reserved_the_worst_case_when_its_votes_leave_it(compose, tmp_path):
    grid, mechanism, outcome = run_pate(compose, tmp_path)
    one_batch = epsilon_from_events(mechanism.worst_case_events(6), 1e-5)
    two_batches = epsilon_from_events(mechanism.worst_case_events(6) * 2, 1e-5)
    # batch 0: one open reservation at its worst case; batch 1: batch 0 settled, batch 1 reserved
    assert grid.at_vote == [(0, ["reserved"], pytest.approx(one_batch)),
                            (1, ["reserved"], pytest.approx(one_batch)),
                            (0, ["settled", "reserved"], pytest.approx(two_batches)),
                            (1, ["settled", "reserved"], pytest.approx(two_batches))]
    for site in (0, 1):
        ledger = PrivacyLedger.read(L.site_dir(tmp_path, site) / "ledger.sqlite")
        assert [r["state"] for r in ledger.records()] == ["settled", "settled"]
        assert ledger.epsilon() <= ledger.epsilon_worst_case() == pytest.approx(two_batches)
        ledger.close()
    assert [b["used"] for b in outcome["batches"]] == [b["answered"] for b in outcome["batches"]]


def test_a_batch_a_site_could_not_settle_is_dropped_and_stays_reserved(compose, tmp_path):
    _, mechanism, outcome = run_pate(compose, tmp_path, lose_charge=(1, 0))
    first, second = outcome["batches"]
    assert first["used"] == 0 and first["answered"] > 0 and "node" in first["failed"][0]
    assert second["used"] == second["answered"]
    assert outcome["answered"] == second["answered"]
    assert outcome["answered_unsettled"] == first["answered"]
    with np.load(L.federation_dir(tmp_path) / "released_labels.npz") as released:
        assert not released["answered"][:6].any()  # batch 0's labels are not used
        assert released["answered"][6:].sum() == second["answered"]
    lost = PrivacyLedger.read(L.site_dir(tmp_path, 1) / "ledger.sqlite")
    assert [r["state"] for r in lost.records()] == ["reserved", "settled"]
    # what stays on site 1's books for batch 0 is the worst case it reserved
    assert lost.events()[0] == dp_accounting.ComposedDpEvent(mechanism.worst_case_events(6))
    kept = PrivacyLedger.read(L.site_dir(tmp_path, 0) / "ledger.sqlite")
    assert [r["state"] for r in kept.records()] == ["settled", "settled"]
    assert lost.epsilon() >= kept.epsilon()
    lost.close()
    kept.close()
