"""The Flower-native path: ``flwr run .`` with no run directory, on Flower's local SuperLink in
simulation mode (which ``flwr run`` starts itself), runs the quickstart into ``outputs/`` of the
folder it was started in, as ``fedens run`` does; a run the app cannot serve is refused saying why."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fedens.federation import layout as L
from fedens.privacy import PrivacyLedger

ROOT = Path(__file__).resolve().parents[2]
SHRINK = ("federation.num_rounds=2 combiner.central_epochs=2 combiner.pretrain_epochs=1 "
          "federation.personalization.holdout=0 experts.num_experts=4 experts.families=[logreg,naive_bayes]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_superlink(tmp_path):
    """The environment of a ``flwr`` whose local SuperLink has its own home and ports; every
    process of that SuperLink is killed afterwards (``flwr run`` leaves it running)."""
    port = free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "flwr-home"),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # no `uv sync` of the app's dependencies
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    yield env
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "flower-superlink" in " ".join(command[:2]) and str(port) in command:
            for p in [*process.children(recursive=True), process]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass


def flwr_run(folder: Path, env: dict[str, str], overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["flwr", "run", str(ROOT), "--stream", "--run-config", f'overrides="{overrides}"'],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_flwr_run_alone_runs_the_quickstart_where_fedens_run_puts_it(tmp_path, local_superlink):
    done = flwr_run(tmp_path, local_superlink, SHRINK)
    assert "Exit Code" not in done.stdout, done.stdout[-3000:]
    (results_path,) = (tmp_path / "outputs" / "quickstart").glob("*/results.json")
    results = json.loads(results_path.read_text())
    run_dir = results_path.parent
    assert results["data"]["num_sites"] == 2  # Flower's local simulation: 2 SuperNodes by default
    assert results["federation"]["rounds_aggregated"] == 2
    for site in ("0", "1"):  # the sites trained on what the coordinator prepared, and were charged
        ledger = PrivacyLedger.read(run_dir / "sites" / f"site_{site}" / "ledger.sqlite")
        assert len(ledger.events()) == 2
        assert results["privacy"]["per_site"][site]["epsilon"] == pytest.approx(ledger.epsilon())
    assert f"results  {results_path}" in done.stdout.replace("\n", "")
    assert not list(L.published_settings_path(0).parent.glob("*.json"))  # withdrawn after the run


class TwoNodes:
    """A grid whose run has two nodes (what the ServerApp asks of it before it prepares a run)."""

    def get_node_ids(self):
        return [11, 12]


@pytest.mark.parametrize("overrides, refusal", [
    ("federation.num_sites=5", "overrides set federation.num_sites=5, but the run has 2 nodes: leave it out"),
    ("experiment=pate_mnist", "experiment 'pate_mnist' runs the pate pipeline, whose apps this Flower App"),
])
def test_an_unprepared_run_the_app_cannot_serve_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                                       overrides, refusal):
    from types import SimpleNamespace

    from fedens import flower_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flower_app.time, "sleep", lambda seconds: None)
    context = SimpleNamespace(run_id=7, run_config={L.OVERRIDES: overrides})
    with pytest.raises(ValueError, match=f"^{refusal}"):
        flower_app.run_unprepared(TwoNodes(), context)
    assert list(tmp_path.iterdir()) == []
