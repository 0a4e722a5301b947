"""Flower's Deployment Engine on loopback: a SuperLink with TLS and SuperNode authentication and a
SuperNode per site; what is refused and how a failure is said. The quickstart itself runs in
deployment in ``test_deployment_faults.py`` (loopback, under faults) and in
``test_deployment_netns.py`` (across hosts, compared with the Simulation Engine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from fedens.federation import layout as L
from fedens.federation.deployment import DeploymentError, run_in_deployment

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = 2
# Each message to a SuperNode starts a ClientApp process (~12 s for 3 sites on 2 cores), so the
# personalisation step is off here; scripts/pilot runs it in deployment.
SHRINK = (f"federation.num_sites={SITES}", "federation.num_rounds=2", "combiner.central_epochs=5",
          "experts.num_experts=4", "experts.families=[logreg,naive_bayes]",
          "privacy.epsilon=4", "federation.personalization.holdout=0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the SuperLink exited: {log.read_text()[-2000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s: {log}")


def flower_env(home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def started_by(pid: int) -> list[psutil.Process]:
    """The processes ``pid`` started: its children, and the SuperExec that Flower starts in a
    session of its own (``--parent-pid pid``), which can outlive it, with theirs."""
    found = []
    for p in psutil.process_iter(["ppid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        parent = cmd[cmd.index("--parent-pid") + 1] if "--parent-pid" in cmd[:-1] else None
        if p.info["ppid"] == pid or parent == str(pid):
            try:
                found += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return found


def stop(*procs: subprocess.Popen) -> None:
    """Terminate ``procs`` and every process they started; kill what is left after 15 s."""
    tree = [p for proc in procs for p in started_by(proc.pid)]
    for proc in procs:
        if proc.poll() is None:
            tree.append(psutil.Process(proc.pid))
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in procs:
        proc.wait(timeout=5)


def supernode_args(keys: Path, address: str, key: str, node_config: str) -> list[str]:
    return [str(BIN / "flower-supernode"), "--superlink", address, "--root-certificates",
            str(keys / "ca.crt"), "--auth-supernode-private-key", str(keys / key),
            "--port", str(free_port()), "--node-config", node_config]


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """SuperLink (TLS, SuperNode auth, state in a database) and one SuperNode per site."""
    base = tmp_path_factory.mktemp("pilot")
    keys, home, run_dir = base / "keys", base / "flwr", base / "run"
    subprocess.run([str(ROOT / "scripts" / "certs"), str(keys), str(SITES + 1)], check=True,
                   capture_output=True)  # site_<SITES>'s key is never registered
    port = free_port()
    address = f"127.0.0.1:{port}"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "pilot"\n\n[superlink.pilot]\naddress = "{address}"\n'
        f'root-certificates = "{keys / "ca.crt"}"\n\n'
        f'[superlink.nowhere]\naddress = "127.0.0.1:{free_port()}"\n'
        f'root-certificates = "{keys / "ca.crt"}"\n')
    procs: list[subprocess.Popen] = []

    def launch(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        procs.append(start(args, log, env))
        return procs[-1]

    try:
        link_log = base / "superlink.log"
        link = launch([str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
                      "--database", str(base / "superlink.db"),
                      "--ssl-ca-certfile", str(keys / "ca.crt"), "--ssl-certfile", str(keys / "server.crt"),
                      "--ssl-keyfile", str(keys / "server.key"), "--enable-supernode-auth",
                      "--disable-runtime-dependency-installation"], link_log, flower_env(home))
        wait_for_port(port, link, link_log)
        for site in range(SITES):
            subprocess.run([str(BIN / "flwr"), "supernode", "register", str(keys / f"site_{site}.pub"),
                            "pilot"], check=True, capture_output=True, env=flower_env(home), timeout=120)
            folder = L.site_dir(run_dir, site)
            node_config = (f'partition-id={site} data-path="{folder / "data.npz"}" '
                           f'ledger-path="{folder / "ledger.sqlite"}" budget-epsilon=4.0')
            launch(supernode_args(keys, address, f"site_{site}", node_config), base / f"site_{site}.log",
                  flower_env(base / f"site_{site}_flwr"))
        yield SimpleNamespace(base=base, keys=keys, home=home, address=address, run_dir=run_dir)
    finally:
        stop(*procs)


def test_every_run_setting_is_declared_for_flwr_run(compose, tmp_path):
    """``flwr run`` only accepts run-config keys the app declares in pyproject.toml."""
    from fedens.federation import layout as L
    from fedens.federation.deployment import APP_DIR, app_config_keys
    from fedens.pipelines.ensemble import federation_settings

    L.task_schema_path(tmp_path).parent.mkdir(parents=True)
    L.task_schema_path(tmp_path).write_text('{"num_features": 64, "num_classes": 10}')
    settings = federation_settings(compose(*SHRINK), tmp_path)
    assert set(settings) <= app_config_keys(APP_DIR), set(settings) - app_config_keys(APP_DIR)


def test_supernode_with_unregistered_key_is_refused(pilot):
    log = pilot.base / "unregistered.log"
    proc = start(supernode_args(pilot.keys, pilot.address, f"site_{SITES}", f"partition-id={SITES}"),
                 log, flower_env(pilot.base / "unregistered_flwr"))
    try:
        returncode = proc.wait(timeout=120)
    finally:
        stop(proc)  # its SuperExec outlives it
    assert returncode != 0
    assert "Failed to activate SuperNode" in log.read_text()


def test_unreachable_superlink_is_one_line_error(pilot, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(pilot.home))
    with pytest.raises(DeploymentError) as error:
        run_in_deployment({L.RUN_DIR: str(tmp_path)}, superlink="nowhere")
    message = str(error.value)
    assert "starting the run on SuperLink 'nowhere' failed" in message
    assert "unavailable" in message and "\n" not in message
    with pytest.raises(DeploymentError, match=r"run settings \['no-such-key'\] are not declared"):
        run_in_deployment({L.RUN_DIR: str(tmp_path), "no-such-key": 1}, superlink="pilot")



def test_failed_run_is_one_line_error(pilot, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(pilot.home))
    empty = tmp_path / "empty"  # no coordinator split, no experts: the ServerApp raises
    with pytest.raises(DeploymentError, match=r"ended finished:failed: ServerApp failed") as error:
        run_in_deployment({L.RUN_DIR: str(empty), L.NUM_SITES: SITES, L.MIN_SITES: SITES},
                          superlink="pilot", timeout=300)
    assert "\n" not in str(error.value)
    assert not (empty / "federation" / "rounds.json").exists()
