"""No process of a run outlives it: what a killed run leaves behind is killed by its reaper."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# A run that starts a child which ignores SIGTERM (as Ray's agents do) and a grandchild.
RUN = textwrap.dedent("""
    import subprocess, sys, time
    from fedens.federation.reaper import watching
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {stubborn!r}])"
    with watching():
        children = [subprocess.Popen([sys.executable, "-c", code]) for code in (stubborn, parent)]
        print(" ".join(str(c.pid) for c in children), flush=True)
        time.sleep(600)
""")


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def names(pid: int) -> dict[int, str]:
    """``pid``'s descendants by pid, with their names; those that end while being read are left
    out (Ray starts and ends short-lived workers all the time)."""
    found = {}
    for p in descendants(pid):
        try:
            found[p.pid] = p.name()
        except psutil.NoSuchProcess:
            pass
    return found


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_what_a_killed_run_leaves_is_killed_even_if_it_ignores_sigterm():
    run = subprocess.Popen([sys.executable, "-c", RUN], stdout=subprocess.PIPE, text=True)
    try:
        run.stdout.readline()
        deadline = time.monotonic() + 30
        while len(descendants(run.pid)) < 4 and time.monotonic() < deadline:  # reaper, 2 children, 1 more
            time.sleep(0.1)
        left = [p.pid for p in descendants(run.pid)]
        assert len(left) >= 4
        time.sleep(1.0)  # the reaper has seen the whole tree
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert wait_gone(left, 10) == []
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()


def test_a_run_that_ends_normally_stops_its_reaper():
    from fedens.federation.reaper import watching

    with watching() as reaper:
        assert reaper.poll() is None
    assert reaper.returncode is not None


@pytest.mark.slow
def test_a_simulation_killed_with_sigkill_leaves_no_ray_process(tmp_path):
    """Without the reaper, Ray's DashboardAgent and RuntimeEnvAgent outlive a killed run and
    ignore SIGTERM (measured: both still there 25 s after, and after a SIGTERM)."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    run = subprocess.Popen([sys.executable, "-m", "fedens", "run", "federation.num_sites=2",
                            "federation.num_rounds=50", f"hydra.run.dir={tmp_path / 'run'}"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(
                "ClientAppActor" in name for name in names(run.pid).values()):
            assert run.poll() is None, "the run ended before its simulation started"
            time.sleep(0.5)
        time.sleep(1.0)
        tree = names(run.pid)
        assert {"raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(tree.values()), tree
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert [tree[p] for p in wait_gone(list(tree), 20)] == []
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
