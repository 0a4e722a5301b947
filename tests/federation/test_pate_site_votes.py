"""What a site sends for a query batch: its teachers' votes, shifted by each shard's label
prior when asked (experts.prior_correction), recomputed here from the site's own files."""

import numpy as np
import pytest
from in_process_grid import InProcessGrid

from fedens.experts.teachers import TeacherCNNs, label_prior_shift
from fedens.federation import layout as L
from fedens.federation.votes.coordinator import coordinate_pate
from fedens.federation.votes.sites import make_pate_client_app
from fedens.pipelines.pate import federation_settings, prepare

SHRUNK = ["experiment=pate_mnist", "federation.num_sites=2", "experts.num_teachers=6",
          "experts.steps=5", "privacy.num_queries=12", "privacy.query_batch=12",
          "privacy.threshold=3", "privacy.sigma1=1", "privacy.sigma2=1", "privacy.budget=100",
          "partition=dirichlet", "partition.alpha=0.3"]


class VoteSpyGrid(InProcessGrid):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.votes: dict[int, np.ndarray] = {}

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.message_type == "query.votes":
                site = int(reply.content["metrics"]["site"])
                self.votes[site] = reply.content["votes"]["votes"].numpy()
        return replies


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_a_site_votes_with_its_shards_label_prior_shift(compose, tmp_path, strength):
    cfg = compose(*SHRUNK, f"experts.prior_correction={strength}")
    data = prepare(cfg, tmp_path)
    settings = federation_settings(cfg, tmp_path, data["teachers"])
    grid = VoteSpyGrid(make_pate_client_app(settings), 2)
    coordinate_pate(grid, settings, None)
    with np.load(tmp_path / "coordinator" / "pool.npz") as pool:
        queries = pool["images"][:12].astype(np.float32) / 255.0
    moved = []
    for site in (0, 1):
        folder = L.site_dir(tmp_path, site)
        y = np.load(folder / "data.npz")["y"]
        teachers = TeacherCNNs.load(folder / "teachers.pt")
        shards = np.array_split(np.random.default_rng(site).permutation(len(y)), teachers.num_teachers)
        shift = label_prior_shift([y[s] for s in shards], 10, strength)
        expected = teachers.votes(queries, logit_shift=shift)
        np.testing.assert_array_equal(grid.votes[site], expected)
        assert (expected.sum(axis=1) == teachers.num_teachers).all()
        moved.append((expected != teachers.votes(queries)).any())
    assert any(moved) == (strength > 0)  # the shift changed some site's votes, or was off
