"""Through Flower's Simulation Engine (Ray): a site that raises and one that hangs
past the round timeout do not stop the run; a coordinator killed with SIGKILL
mid-run is resumed with ``fedens run resume=<run dir>``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedens import run
from fedens.federation.checkpoint import checkpointed_round
from fedens.privacy import PrivacyLedger

SHRUNK = ["federation.num_sites=3", "federation.num_rounds=3", "combiner.central_epochs=5",
          "experts.num_experts=4", "experts.families=[logreg,naive_bayes]", "combiner.top_k=1",
          "privacy.epsilon=4"]


@pytest.mark.slow
def test_a_raising_and_a_hanging_site_do_not_stop_the_run(compose, tmp_path):
    cfg = compose(*SHRUNK, "federation.round_timeout=8", "federation.inject_faults='0:2:raise,2:2:hang'")
    results = run(cfg, run_dir=tmp_path)
    fed = results["federation"]
    assert fed["failures_per_round"] == {"1": 0, "2": 2, "3": 0}
    kinds = {f["site"]: f["kind"] for f in fed["failures"]["2"]}
    assert kinds == {0: "error", 2: "timeout"}
    rows = json.loads((tmp_path / "federation" / "rounds.json").read_text())["rounds"]
    assert [r["sites_reporting"] for r in rows] == [0, 3, 1, 3]
    assert results["metrics"]["test_accuracy"] > results["baselines"]["best_single_expert_accuracy"]



@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fedens", "run", *SHRUNK, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while checkpointed_round(run_dir) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the coordinator and its simulated sites, at once
    first.wait()
    killed_at = checkpointed_round(run_dir)
    assert 1 <= killed_at < 3 and not (run_dir / "results.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "fedens", "run", f"resume={run_dir}"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {run_dir}" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["federation"]["resumed"] is True
    rows = json.loads((run_dir / "federation" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for site in range(3):  # one DP-SGD release per round, none charged twice
        ledger = PrivacyLedger.read(run_dir / "sites" / f"site_{site}" / "ledger.sqlite")
        assert [r["round"] for r in ledger.records()] == [1, 2, 3]
        assert ledger.epsilon() <= 4.0


def test_resume_errors_are_one_line(tmp_path):
    empty = subprocess.run([sys.executable, "-m", "fedens", "run", f"resume={tmp_path}"],
                           capture_output=True, text=True)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (f"fedens: resume={tmp_path}: no {tmp_path}/.hydra/config.yaml; "
                                    "expected a fedens run directory")
    extra = subprocess.run([sys.executable, "-m", "fedens", "run", f"resume={tmp_path}", "seed=3"],
                           capture_output=True, text=True)
    assert extra.returncode == 2 and "resume takes no other overrides (got seed=3)" in extra.stderr
