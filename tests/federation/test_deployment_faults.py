"""A pilot drill on Flower's Deployment Engine on loopback (TLS, SuperNode authentication): each
site's node id bound to its registered key (``federation.site_nodes``), a third registered node
that claims site 0, the coordinator killed with SIGKILL while the sites train round 2 and
resumed (round 2 runs twice), then site 1's SuperNode killed while it trains round 2 again.
Canaries are planted in every site's data; every SuperNode keeps an outbox of what it sends; the
sites hold only their data and ledger and get the shared files over the wire. The run goes on
with the others; the report names the lost site and the impostor; no canary and no private
record crossed; each ledger holds each release once."""

from __future__ import annotations

import json
import re
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
from fedens.federation.checkpoint import checkpointed_round
from fedens.federation.outbox import read_outbox
from fedens.files import sha256_file
from fedens.privacy import PrivacyLedger

pytestmark = pytest.mark.deployment

SITES, LOST, CLAIMED = 2, 1, 0  # site 1's SuperNode is killed; the impostor claims site 0
IMPOSTOR_KEY = f"site_{SITES}"  # registered, but bound to no site
# A lost node is reported by the SuperLink ("Node Unavailable") once it misses two heartbeats
# (Flower 1.41: 2 x 30 s); the round timeout is longer, so a healthy site on this shared 2-core
# machine has all of it to start its ClientApp and train.
OVERRIDES = [f"federation.num_sites={SITES}", "federation.num_rounds=2", "combiner.central_epochs=5",
             "experts.num_experts=4", "experts.families=[logreg,naive_bayes]",
             "privacy.epsilon=4", "federation.personalization.holdout=0", "federation.round_timeout=150"]


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


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything it started (a SuperNode's ClientApp, a run's children)."""
    for p in [*started_by(proc.pid), psutil.Process(proc.pid)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def test_a_pilot_survives_a_killed_coordinator_a_killed_supernode_and_an_impostor(tmp_path):
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
    lost_log = tmp_path / f"site_{LOST}.log"

    def coordinator(*args: str, log: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-m", "fedens", "run", *args], env=env,
                                      stdout=(tmp_path / log).open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    try:
        tls = ["--ssl-ca-certfile", str(keys / "ca.crt"), "--ssl-certfile", str(keys / "server.crt"),
               "--ssl-keyfile", str(keys / "server.key")]
        procs.append(start([str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), *tls,
                            "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
                           tmp_path / "superlink.log", env))
        wait_for_port(port, procs[0], tmp_path / "superlink.log")
        nodes = [register(keys, f"site_{site}", env) for site in range(SITES)]
        impostor_node = register(keys, IMPOSTOR_KEY, env)
        first = coordinator(*OVERRIDES, "federation=deployment", "federation.superlink=link",
                            f"federation.site_nodes=[{','.join(map(str, nodes))}]",
                            f"hydra.run.dir={run_dir}", log="coordinator.log")
        wait_until(lambda: all(p.is_file() for p in data), 300, "the site files were written", first)
        records = [plant_canaries(path) for path in data]  # before any SuperNode reads its data
        for site in range(SITES):
            procs.append(start(supernode_args(keys, address, f"site_{site}", node_config(site, data[site],
                                                                                        folders[site])),
                               tmp_path / f"site_{site}.log", flower_env(tmp_path / f"s{site}")))
        lost = procs[2 + LOST]
        impostor.mkdir()
        procs.append(start(supernode_args(keys, address, IMPOSTOR_KEY,
                                          node_config(CLAIMED, data[CLAIMED], impostor)),
                           tmp_path / "impostor.log", flower_env(impostor)))

        # 1. the coordinator killed once round 1 is checkpointed and the sites have round 2's train
        # messages (they may release round 2 to a dead run), its run stopped at the SuperLink
        wait_until(lambda: checkpointed_round(run_dir) >= 1, 600, "round 1 was checkpointed", first)
        wait_until(lambda: min(trains_received(tmp_path / f"site_{site}.log") for site in range(SITES)) >= 2,
                   300, "the sites received round 2", first)
        kill(first)
        run_id = re.search(r"Successfully started run (\d+)",
                           (L.federation_dir(run_dir) / "flwr.log").read_text()).group(1)
        subprocess.run([str(BIN / "flwr"), "stop", run_id, "link"], env=env, check=True, capture_output=True,
                       timeout=120)
        assert checkpointed_round(run_dir) == 1 and not (run_dir / "results.json").exists()
        # 2. resumed; site 1's SuperNode killed with its ClientApp as soon as it gets round 2 again
        trained = trains_received(lost_log)
        resumed = coordinator(f"resume={run_dir}", log="resumed.log")
        wait_until(lambda: trains_received(lost_log) > trained, 600, f"site {LOST} received round 2", resumed)
        kill(lost)
        resumed.wait(timeout=900)
        said = (tmp_path / "resumed.log").read_text()
        assert resumed.returncode == 0, said[-3000:]
    finally:
        stop(*procs)

    results = json.loads((run_dir / "results.json").read_text())
    failures = results["federation"]["failures"]
    rounds = json.loads((L.federation_dir(run_dir) / "rounds.json").read_text())
    assert results["federation"]["resumed"] is True and f"resuming {run_dir}" in said
    assert [r["round"] for r in rounds["rounds"]] == [0, 1, 2]
    # the impostor is refused at each run's roll call by the binding of the site it claims
    refusals = [f for fs in failures.values() for f in fs if f["kind"] == "wrong-site"]
    assert len(refusals) == 2 and {(f["node"], f["site"]) for f in refusals} == {(impostor_node, CLAIMED)}
    assert all(f"the run binds site {CLAIMED} to node {nodes[CLAIMED]}" in f["reason"] for f in refusals)
    assert [e["message_type"] for e in read_outbox(impostor / "outbox")] == ["query.site"] * 2
    assert not (impostor / "ledger.sqlite").exists()  # it was never asked to train
    # round 1 had every site; round 2 went on without the killed one, and the report names it
    everyone = {str(site) for site in range(SITES)}
    assert set(rounds["sites"]["1"]) == everyone, failures
    assert set(rounds["sites"]["2"]) == everyone - {str(LOST)}, failures
    (loss,) = [f for f in failures["2"] if f["kind"] != "wrong-site"]
    assert loss["site"] == LOST and loss["kind"] == "error" and "Node Unavailable" in loss["reason"], loss
    assert f"site {LOST} failed" in said
    # each ledger holds each release once, though round 2 ran twice: the resumed run's round 2 has
    # the key of the dead run's (same records, parameters, shared files, seed), so it costs nothing
    # more; the killed site paid for round 2 only if it got that far before it died
    for site in range(SITES):
        ledger = PrivacyLedger.read(folders[site] / "ledger.sqlite")
        charged = [r["round"] for r in ledger.records()]
        ledger.close()
        assert charged in (([1], [1, 2]) if site == LOST else ([1, 2],)), (site, charged)
        # its node config names no shared file: it holds the shipped copies, named by sha256
        shipped = {sha256_file(run_dir / name) for name in (L.experts_path(".").name, "initial_combiner.pt")}
        assert {p.name for p in (folders[site] / "cache" / "shared").iterdir()} == shipped
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
