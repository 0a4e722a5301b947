"""The pilot across hosts on one machine, ``scripts/pilot 3 --netns``: the coordinator and each site
in its own network namespace (10.77.0.1, 10.77.0.10-12 on a bridge) and as its own Unix user, each
party's folder readable by it alone; TLS naming 10.77.0.1, SuperNode authentication, the shrunk
quickstart with the shared files forced into ``query.ship`` messages; compared with the Simulation
Engine. Needs root and ``ip netns``: without them these tests fail, they do not skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
from test_deployment import SHRINK, SITES

from fedens.files import sha256_file
from fedens.privacy import PrivacyLedger

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
PILOT = [str(ROOT / "scripts" / "pilot"), str(SITES), "--netns", "--ship-inline-bytes", "0"]
OVERRIDES = [o for o in SHRINK if not o.startswith("federation.num_sites=")]  # the pilot sets N
USERS = ["fedens-coordinator", *(f"fedens-site-{i}" for i in range(SITES))]
TIMEOUT = 1200  # seconds; the rehearsal took 4 min at load average 5


def as_user(user: str, *cmd: str) -> tuple[int, str]:
    """``cmd`` as ``user``: its exit code and what it said on stderr (stdout, maybe binary, dropped)."""
    done = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *cmd],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return done.returncode, done.stderr.decode(errors="replace")


def who_reads_what(hosts: Path) -> dict[str, tuple[int, str]]:
    """While the run goes on: each site reading the coordinator's run directory, the next site's
    data and its own (the control: it can); the coordinator reading its experts (it can) and a
    site's data."""
    run, data = hosts / "coordinator" / "run", lambda i: str(hosts / f"site_{i}" / "data.npz")
    attempts = {"coordinator reads its own experts": as_user(USERS[0], "cat", str(run / "experts.skops")),
                "coordinator reads site_0's data": as_user(USERS[0], "cat", data(0))}
    for i in range(SITES):
        user, other = USERS[1 + i], (i + 1) % SITES
        attempts[f"site_{i} lists the coordinator's run"] = as_user(user, "ls", str(run))
        attempts[f"site_{i} reads the coordinator's experts"] = as_user(user, "cat",
                                                                        str(run / "experts.skops"))
        attempts[f"site_{i} reads site_{other}'s data"] = as_user(user, "cat", data(other))
        attempts[f"site_{i} reads its own data"] = as_user(user, "cat", data(i))
    return attempts


def modes_up_to(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


@pytest.fixture(scope="module")
def rehearsal():
    """The rehearsal, run once in a folder of its own (removed afterwards)."""
    assert os.geteuid() == 0 and shutil.which("ip"), (
        f"the rehearsal across hosts needs root and `ip netns` (uid {os.geteuid()}, ip at "
        f"{shutil.which('ip')}): run the suite as root, as CI does")
    # not under pytest's basetemp: a pytest session starting meanwhile makes its root 0700 again
    base = Path(tempfile.mkdtemp(prefix="fedens-pilot-netns-"))
    try:
        yield run_rehearsal(base)
    finally:
        shutil.rmtree(base)


def run_rehearsal(base: Path) -> dict:
    """``scripts/pilot --netns`` with its output; while its parties exist, reads across their folders."""
    before = {**modes_up_to(base), **modes_up_to(Path(sys.base_prefix)), **modes_up_to(ROOT)}
    proc = subprocess.Popen([*PILOT, *OVERRIDES, "federation.run_timeout=900"], cwd=ROOT, text=True,
                            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PILOT_DIR": str(base)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(TIMEOUT, proc.send_signal, [signal.SIGTERM])  # its trap cleans up
    watchdog.start()
    lines, attempts, hosts = [], {}, None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if online := re.search(r"SuperNodes online .*; logs in (\S+)/logs$", line.strip()):
                hosts = Path(online.group(1))
            elif line.startswith("deployment  run ") and hosts:  # the run directory is ready
                attempts = who_reads_what(hosts)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # this fixture failed: let the script clean up
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    output = "".join(lines)
    assert proc.returncode == 0, f"scripts/pilot --netns exited {proc.returncode}:\n{output[-4000:]}"
    run_dir = Path(re.search(r"results in (\S+)/results\.json", output).group(1))
    return {"output": output, "hosts": hosts, "run_dir": run_dir, "attempts": attempts,
            "modes_before": before, "base": base}


def test_rehearsal_across_hosts_matches_simulation(rehearsal, simulated_shrunk_quickstart):
    hosts, run_dir = rehearsal["hosts"], rehearsal["run_dir"]
    assert run_dir == hosts / "coordinator" / "run"
    # the sites reached the SuperLink at a non-loopback address that its certificate names
    assert "SuperLink on 10.77.0.1:8000" in rehearsal["output"]
    cert = rehearsal["base"] / "keys" / "server.crt"
    named = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-checkip", "10.77.0.1"],
                           capture_output=True, text=True, check=True)
    assert "does match" in named.stdout
    deployed = json.loads((run_dir / "results.json").read_text())
    simulated = simulated_shrunk_quickstart
    one_query = 1 / 450  # the tolerance of test_deployment.py: one test query flipping on a float tie
    for key in ("test_accuracy", "router_topk_accuracy", "weights_accuracy"):
        assert deployed["metrics"][key] == pytest.approx(simulated["metrics"][key], abs=one_query), key
    for key in ("test_nll", "weights_nll"):
        assert deployed["metrics"][key] == pytest.approx(simulated["metrics"][key], rel=1e-5), key
    shipped = {sha256_file(run_dir / name) for name in ("experts.skops", "initial_combiner.pt")}
    for i in range(SITES):
        site = hosts / f"site_{i}"
        # its ledger is in its own folder: the report carries the ε the site sent
        ledger = PrivacyLedger.read(site / "ledger.sqlite")
        assert [r["round"] for r in ledger.records()] == [1, 2]
        epsilon = ledger.summary()["epsilon"]
        ledger.close()
        entry = deployed["privacy"]["per_site"][str(i)]
        assert entry["source"] == "reported by the site"
        assert entry["epsilon"] == pytest.approx(epsilon, rel=1e-9)
        assert epsilon == pytest.approx(simulated["privacy"]["per_site"][str(i)]["epsilon"], rel=1e-9)
        # the records it holds are the simulation's site i; the shared files came in query.ship
        assert sha256_file(site / "data.npz") == sha256_file(run_dir / "sites" / f"site_{i}" / "data.npz")
        assert {p.name for p in (site / "cache" / "shared").iterdir()} == shipped
        log = (hosts / "logs" / f"site_{i}.log").read_text(errors="replace")
        assert f"site {i} stored experts-path, initial-combiner-path from a query.ship message" in log


def test_no_party_can_read_another_partys_folder(rehearsal):
    hosts, attempts = rehearsal["hosts"], rehearsal["attempts"]
    assert attempts, "the rehearsal ended before its run started"
    for what, (code, said) in attempts.items():
        if " its own " in what:
            assert code == 0, f"{what}: {said}"
        else:
            assert code != 0 and "Permission denied" in said, f"{what}: exit {code}, {said!r}"
    owners = {p.name: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in hosts.iterdir()}
    assert {name: mode for name, (_, mode) in owners.items()} == {
        "coordinator": 0o700, "logs": 0o700, **{f"site_{i}": 0o700 for i in range(SITES)}}
    assert len({uid for name, (uid, _) in owners.items() if name != "logs"}) == SITES + 1


def test_rehearsal_leaves_nothing_behind(rehearsal):
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "fedens-" not in netns
    for user in USERS:
        assert subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0, user
    uids = {p.stat().st_uid for p in rehearsal["hosts"].iterdir()} - {0}
    left = [p.info for p in psutil.process_iter(["pid", "uids", "cmdline"]) if p.info["uids"].real in uids]
    assert not left
    after = {**modes_up_to(rehearsal["base"]), **modes_up_to(Path(sys.base_prefix)), **modes_up_to(ROOT)}
    assert after == rehearsal["modes_before"]  # the o+x (and o+r) it added are gone


def test_bad_input_is_one_line_and_exit_2():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # where user nobody may read the scripts
        scripts = Path(tmp) / "scripts"
        scripts.mkdir()
        for name in ("pilot", "pilot-netns.sh"):
            shutil.copy(ROOT / "scripts" / name, scripts / name)
        os.chmod(tmp, 0o755)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        nobody = nobody if os.geteuid() == 0 else []
        netns = PILOT[:3]
        for cmd, said in (([*nobody, str(scripts / "pilot"), *netns[1:]], "--netns needs root"),
                          ([*netns, "--ship-inline-bytes", "4M"], "--ship-inline-bytes needs a whole number"),
                          ([*netns, "--resume", str(ROOT)], "--resume needs a pilot run directory")):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1, done
