"""No process of a simulated run outlives it: a watcher that kills what a dead run left behind.

When the process running Flower's Simulation Engine dies without shutting Ray down (``kill -9``,
the OOM killer), Ray's gcs_server, raylet and workers follow it, but its DashboardAgent and
RuntimeEnvAgent stay, and ignore SIGTERM (measured here with Ray 2.x under Flower 1.41). So
:func:`watching` starts this module as a process of its own session: it notes the run's process
tree every half second and, once the run's process is gone, sends SIGKILL to every process of
the last tree still alive (the same pid and start time). Written by hand: Ray has no option
that makes its agents share the driver's fate.

    python fedens/federation/reaper.py PID    (run as a file: it imports psutil only)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

POLL_SECONDS = 0.5


def _tree(root: psutil.Process) -> dict[int, float]:
    """``{pid: start time}`` of ``root``'s descendants."""
    found = {}
    for p in root.children(recursive=True):
        try:
            found[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            pass
    return found


def reap_after(pid: int) -> list[int]:
    """Wait for process ``pid`` to end, then SIGKILL what is left of its tree; the pids killed."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, float] = {}
    while True:
        try:
            if root.status() == psutil.STATUS_ZOMBIE:
                break
            seen.update(_tree(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    seen.pop(os.getpid(), None)  # the reaper is a child of the run too
    killed = []
    for child, started in seen.items():
        try:
            p = psutil.Process(child)
            if p.create_time() == started:
                p.send_signal(signal.SIGKILL)
                killed.append(child)
        except psutil.NoSuchProcess:
            pass
    return killed


@contextmanager
def watching(pid: int | None = None) -> Iterator[subprocess.Popen]:
    """While the block runs, a reaper watches process ``pid`` (this one by default). It ends by
    itself after ``pid`` does; a block that ends normally stops it at once."""
    reaper = subprocess.Popen([sys.executable, __file__, str(pid or os.getpid())],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    try:
        yield reaper
    finally:
        reaper.terminate()
        reaper.wait(timeout=10)


if __name__ == "__main__":
    reap_after(int(sys.argv[1]))
