"""Through Flower's Simulation Engine (Ray): a site that raises and one that hangs past the
round timeout do not stop the run; resume errors are one line. (A coordinator killed with
SIGKILL and resumed: ``tests/federation/test_rounds.py`` in process, exactly;
``test_deployment_faults.py`` on the Deployment Engine.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedens import run

SHRUNK = ["federation.num_sites=3", "federation.num_rounds=3", "combiner.central_epochs=5",
          "experts.num_experts=4", "experts.families=[logreg,naive_bayes]", "combiner.top_k=1",
          "privacy.epsilon=4"]


@pytest.mark.slow
def test_a_raising_and_a_hanging_site_do_not_stop_the_run(compose, tmp_path):
    # the timeout is what "hangs" means, so it must be far above a healthy round under load: with
    # the suite's other worker busy, healthy rounds overran an 8 s timeout here. The hanging site
    # sleeps just past it.
    cfg = compose(*SHRUNK, "federation.round_timeout=30", "federation.inject_faults='0:2:raise,2:2:hang'")
    results = run(cfg, run_dir=tmp_path)
    fed = results["federation"]
    assert fed["failures_per_round"] == {"1": 0, "2": 2, "3": 0}
    kinds = {f["site"]: f["kind"] for f in fed["failures"]["2"]}
    assert kinds == {0: "error", 2: "timeout"}
    rows = json.loads((tmp_path / "federation" / "rounds.json").read_text())["rounds"]
    assert [r["sites_reporting"] for r in rows] == [0, 3, 1, 3]
    assert results["metrics"]["test_accuracy"] > results["baselines"]["best_single_expert_accuracy"]



def test_resume_errors_are_one_line(tmp_path):
    empty = subprocess.run([sys.executable, "-m", "fedens", "run", f"resume={tmp_path}"],
                           capture_output=True, text=True)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (f"fedens: resume={tmp_path}: no {tmp_path}/.hydra/config.yaml; "
                                    "expected a fedens run directory")
    extra = subprocess.run([sys.executable, "-m", "fedens", "run", f"resume={tmp_path}", "seed=3"],
                           capture_output=True, text=True)
    assert extra.returncode == 2 and "resume takes no other overrides (got seed=3)" in extra.stderr


@pytest.mark.slow
def test_a_coordinator_that_raises_under_the_simulation_engine_is_reported_not_raised(compose, tmp_path):
    """Flower 1.41's run_simulation re-raises a ServerApp's exception; the frame reports the
    reason the coordinator recorded, in one line, as it does on the Deployment Engine."""
    from fedens.federation import layout as L
    from fedens.federation.ensemble.client import make_client_app
    from fedens.federation.grid import coordinator_app
    from fedens.runs.backends import FlowerApps, simulate

    def coordinate(grid, settings, progress):
        raise ValueError("the coordinator could not read its experts")

    said = []
    apps = FlowerApps(lambda s, p: coordinator_app(coordinate, s, p), make_client_app)
    simulate(compose("federation.num_sites=1", "federation.num_cpus=1"), {L.RUN_DIR: str(tmp_path)}, apps,
             None, said.append)
    assert "the coordinator could not read its experts" in L.failure_path(tmp_path).read_text()
    assert len(said) == 1 and said[0].startswith("simulation  Flower's Simulation Engine stopped: ")
