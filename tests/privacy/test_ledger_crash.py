"""The ledger after a real ``kill -9`` of the process writing it: nothing lost, nothing doubled."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import dp_accounting
import pytest

from fedens.privacy import PrivacyLedger, dpsgd_event, epsilon_from_events

WRITER = textwrap.dedent(
    """
    import sys
    import dp_accounting
    from fedens.privacy import PrivacyLedger
    ledger = PrivacyLedger(sys.argv[1], site="0", budget_epsilon=1e9, delta=1e-5)
    for i in range(100000):  # Gaussian events: closed-form RDP, so every charge is fast
        ledger.charge(dp_accounting.GaussianDpEvent(1.0 + i / 1000), mechanism="gnmax", round=i)
        print(i + 1, flush=True)  # acknowledged only after the transaction committed
    """
)


@pytest.mark.parametrize("kill_after", [1, 7, 23])
def test_kill_9_mid_stream_loses_and_doubles_nothing(tmp_path, kill_after):
    path = tmp_path / "ledger.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    acknowledged = 0
    deadline = time.monotonic() + 60
    while acknowledged < kill_after and time.monotonic() < deadline:
        acknowledged = int(writer.stdout.readline())
    time.sleep(0.003 * kill_after)  # land the kill at different points of a transaction
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acknowledged = max([acknowledged, *map(int, writer.stdout.read().split())])
    assert acknowledged >= kill_after

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ledger = PrivacyLedger.open_existing(path)
    events = ledger.events()
    # every acknowledged event is there; at most one more (committed, not yet printed)
    assert acknowledged <= len(events) <= acknowledged + 1
    # each event once, in order: event i has noise multiplier 1 + i/1000
    assert [e.noise_multiplier for e in events] == [
        1.0 + i / 1000 for i in range(len(events))
    ]
    assert ledger.epsilon() == epsilon_from_events(
        [dp_accounting.GaussianDpEvent(1.0 + i / 1000) for i in range(len(events))], 1e-5
    )
    # and the reopened ledger keeps working
    ledger.charge(dpsgd_event(2.0, 0.01, 5), mechanism="dpsgd", round=-1)
    assert len(ledger.events()) == len(events) + 1
