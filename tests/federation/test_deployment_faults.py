"""Flower's Deployment Engine on loopback (TLS, SuperNode authentication) under faults: each site's
node id bound to its registered key (``federation.site_nodes``), a fourth registered node that
claims site 1, and site 2's SuperNode killed with SIGKILL while it trains round 2. Canaries are
planted in every site's data and every SuperNode keeps an outbox of what it sends. The run goes
on with the others; the report names the lost site and the impostor; no canary and no private
record crossed; each ledger holds each release once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from leak_check import CANARY, leaks, plant_canaries
from test_deployment import (
    BIN,
    ROOT,
    flower_env,
    free_port,
    start,
    started_by,
    stop,
    supernode_args,
    wait_for_port,
)

from fedens.combiners.state import combiner_from_state
from fedens.federation import layout as L
from fedens.federation.outbox import read_outbox
from fedens.privacy import PrivacyLedger

pytestmark = pytest.mark.deployment

SITES, LOST, IMPOSTOR_KEY = 3, 2, "site_3"
OVERRIDES = [f"federation.num_sites={SITES}", "federation.num_rounds=2", "combiner.central_epochs=5",
             "privacy.epsilon=4", "federation.personalization.holdout=0", "federation.round_timeout=40"]


def register(keys, key: str, env) -> int:
    """Register ``key`` at the SuperLink: the node id Flower gives it."""
    done = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(keys / f"{key}.pub"), "link",
                           "--format", "json"], check=True, capture_output=True, text=True, env=env,
                          timeout=120)
    return int(json.loads(done.stdout)["node-id"])


def node_config(site: int, data, folder) -> str:
    return (f'partition-id={site} data-path="{data}" ledger-path="{folder / "ledger.sqlite"}" '
            f'budget-epsilon=4.0 outbox-path="{folder / "outbox"}"')


def wait_until(condition, seconds: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the coordinator exited (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.2)


def trains_received(log) -> int:
    return log.read_text().count("Receiving: train message") if log.exists() else 0


def test_a_killed_supernode_and_an_impostor_leave_the_run_going_and_nothing_private_crosses(tmp_path):
    keys, home, run_dir = tmp_path / "keys", tmp_path / "flwr", tmp_path / "run"
    subprocess.run([str(ROOT / "scripts" / "certs"), str(keys), str(SITES + 1)], check=True,
                   capture_output=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "link"\n\n[superlink.link]\naddress = '
                                      f'"{address}"\nroot-certificates = "{keys / "ca.crt"}"\n')
    env, procs = flower_env(home), []
    data = [L.site_dir(run_dir, site) / "data.npz" for site in range(SITES)]
    folders = [path.parent for path in data]
    impostor = tmp_path / "impostor"
    try:
        tls = ["--ssl-ca-certfile", str(keys / "ca.crt"), "--ssl-certfile", str(keys / "server.crt"),
               "--ssl-keyfile", str(keys / "server.key")]
        procs.append(start([str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), *tls,
                            "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
                           tmp_path / "superlink.log", env))
        wait_for_port(port, procs[0], tmp_path / "superlink.log")
        nodes = [register(keys, f"site_{site}", env) for site in range(SITES)]
        impostor_node = register(keys, IMPOSTOR_KEY, env)
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "fedens", "run", *OVERRIDES, "federation=deployment",
             "federation.superlink=link", f"federation.site_nodes=[{','.join(map(str, nodes))}]",
             f"hydra.run.dir={run_dir}"],
            env=env, stdout=(tmp_path / "coordinator.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(coordinator)
        wait_until(lambda: all(p.is_file() for p in data), 300, "the site files were written", coordinator)
        records = [plant_canaries(path) for path in data]  # before any SuperNode reads its data
        for site in range(SITES):
            procs.append(start(supernode_args(keys, address, f"site_{site}", node_config(site, data[site],
                                                                                        folders[site])),
                               tmp_path / f"site_{site}.log", flower_env(tmp_path / f"s{site}")))
        lost = procs[2 + LOST]
        impostor.mkdir()
        procs.append(start(supernode_args(keys, address, IMPOSTOR_KEY, node_config(1, data[1], impostor)),
                           tmp_path / "impostor.log", flower_env(impostor)))

        wait_until(lambda: trains_received(tmp_path / f"site_{LOST}.log") >= 2, 600,
                   f"site {LOST} received round 2", coordinator)
        for p in [*started_by(lost.pid), psutil.Process(lost.pid)]:  # the SuperNode and its ClientApp
            p.send_signal(signal.SIGKILL)
        lost.wait(timeout=30)
        coordinator.wait(timeout=900)
        said = (tmp_path / "coordinator.log").read_text()
        assert coordinator.returncode == 0, said[-3000:]
    finally:
        stop(*procs)

    results = json.loads((run_dir / "results.json").read_text())
    failures = results["federation"]["failures"]
    rounds = json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())
    # the impostor is refused at the roll call, once, by the binding of site 1 to site 1's node
    (refusal,) = [f for fs in failures.values() for f in fs if f["kind"] == "wrong-site"]
    assert refusal["node"] == impostor_node and refusal["site"] == 1
    assert f"the run binds site 1 to node {nodes[1]}" in refusal["reason"]
    assert [e["message_type"] for e in read_outbox(impostor / "outbox")] == ["query.site"]
    assert not (impostor / "ledger.sqlite").exists()  # it was never asked to train
    # round 1 had every site; round 2 went on without the killed one, and the report names it
    assert set(rounds["sites"]["1"]) == {"0", "1", "2"} and set(rounds["sites"]["2"]) == {"0", "1"}
    (loss,) = [f for f in failures["2"] if f["kind"] != "wrong-site"]
    assert loss["site"] == LOST and loss["kind"] in ("timeout", "error"), loss
    assert f"site {LOST} failed" in said
    # each ledger holds each release it made once; the killed site paid for round 1, and for
    # round 2 at most what it reserved before it died
    for site in range(SITES):
        ledger = PrivacyLedger.read(data[site].parent / "ledger.sqlite")
        charged = [r["round"] for r in ledger.records()]
        ledger.close()
        assert charged in (([1], [1, 2]) if site == LOST else ([1, 2],)), (site, charged)
    # no secret in any log: no line of any private key (the CA's, the server's, the sites')
    secrets = {line for key in [*keys.glob("*.key"), *keys.glob("site_?")]
               for line in key.read_text().splitlines() if len(line) > 20 and "PRIVATE KEY" not in line}
    logs = [*tmp_path.glob("*.log"), L.federation_dir(run_dir) / "flwr.log"]
    assert len(secrets) >= 5 and len(logs) == 7
    assert not [(log.name, s[:8]) for log in logs for s in secrets if s in log.read_text()]
    # nothing private crossed: every reply each SuperNode sent, as it left
    initial = combiner_from_state(torch.load(run_dir / "initial_combiner.pt", weights_only=True))
    for site in range(SITES):
        assert (records[site] == CANARY).all(axis=1).sum() == 3  # the canaries were there to find
        assert leaks(folders[site] / "outbox", records[site], set(initial.trainable_state())) == [], site
