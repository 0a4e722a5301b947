"""A site that misses the teacher-training deadline but votes later is counted from its votes."""

import json

import numpy as np
from in_process_grid import InProcessGrid

from fedens.federation import layout as L
from fedens.federation.votes.coordinator import coordinate_pate
from fedens.federation.votes.sites import make_pate_client_app
from fedens.pipelines.pate import federation_settings, prepare

SHRUNK = ["experiment=pate_mnist", "federation.num_sites=2", "experts.num_teachers=6",
          "experts.steps=5", "privacy.num_queries=12", "privacy.query_batch=6",
          "privacy.threshold=3", "privacy.sigma1=1", "privacy.sigma2=1", "privacy.budget=100"]


class LateTrainingGrid(InProcessGrid):
    """Site 1 trains (and caches its teachers) but its training reply never arrives in time."""

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages[0].metadata.message_type == "train.teachers":
            late = next(n for n, c in self.contexts.items() if c.node_config[L.PARTITION_ID] == 1)
            replies = [r for r in replies if r.metadata.src_node_id != late]
        return replies


def test_teachers_are_counted_from_the_votes_not_from_the_training_replies(compose, tmp_path):
    cfg = compose(*SHRUNK, f"experts.cache_dir={tmp_path / 'teachers'}")
    data = prepare(cfg, tmp_path)
    settings = federation_settings(cfg, tmp_path, data["teachers"])
    lines: list[str] = []
    coordinate_pate(LateTrainingGrid(make_pate_client_app(settings), 2), settings, lines.append)
    assert lines[0].startswith("teachers  3 at 1 sites") and "1 site(s) did not reply" in lines[0]
    outcome = json.loads((L.federation_dir(tmp_path) / "pate.json").read_text())
    assert outcome["teachers"] == 6  # both sites voted: the analysis bounds votes by all 6
    assert [b["teachers"] for b in outcome["batches"]] == [6, 6]
    assert outcome["analysis"]["smooth_sensitivity_release"]["epsilon_estimate"] > 0
    with np.load(L.federation_dir(tmp_path) / "released_labels.npz") as released:
        assert len(released["labels"]) == 12
