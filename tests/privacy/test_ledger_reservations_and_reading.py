"""Reservations (a release made elsewhere: reserved at its worst case before the site answers,
settled to what it spent), recorded outputs, and reading a ledger without writing to it."""

import hashlib
import shutil
import sqlite3

import pytest
from dp_accounting.rdp import RdpAccountant

from fedens.privacy import (
    BudgetExceeded,
    ConfidentGNMax,
    LedgerUnreadable,
    PrivacyLedger,
    UnknownReservation,
    dpsgd_event,
)

DELTA = 1e-5


def rdp_epsilon(events):
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(DELTA)


def test_a_reservation_holds_the_worst_case_until_it_is_settled(tmp_path):
    mech = ConfidentGNMax(threshold=20, sigma1=5.0, sigma2=4.0)
    worst = mech.worst_case_events(3)
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=50.0, delta=DELTA)
    reached = ledger.reserve(worst, mechanism=mech.name, release_key="batch-0", round=0, queries=3)
    assert reached == pytest.approx(rdp_epsilon(worst), rel=1e-9)
    assert ledger.epsilon() == ledger.epsilon_worst_case() == reached  # spent counts the worst case
    assert ledger.records()[0]["state"] == "reserved" and ledger.summary()["reserved"] == 1
    # the same contribution again (a retried message) is reserved once
    assert ledger.reserve(worst, mechanism=mech.name, release_key="batch-0") == reached
    assert len(ledger.events()) == 1

    import numpy as np

    release = mech.release(np.array([[30, 0, 0], [10, 10, 10], [29, 1, 0]]), np.random.default_rng(0))
    spent = ledger.settle("batch-0", mech.event(release), mechanism=mech.name)
    assert spent == pytest.approx(rdp_epsilon([mech.event(release)]), rel=1e-9)
    assert spent <= reached and ledger.epsilon_worst_case() == reached  # the budget still guards it
    assert ledger.records()[0]["state"] == "settled" and ledger.summary()["reserved"] == 0
    assert ledger.settle("batch-0", mech.event(release), mechanism=mech.name) == spent  # idempotent
    ledger.close()


def test_a_reservation_past_the_budget_is_refused_and_nothing_can_slip_in_between(tmp_path):
    mech = ConfidentGNMax(threshold=20, sigma1=5.0, sigma2=4.0)
    one = rdp_epsilon(mech.worst_case_events(4))
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=1.01 * one, delta=DELTA)
    ledger.reserve(mech.worst_case_events(4), mechanism=mech.name, release_key="a")
    # another writer cannot spend the reserved room before the settlement
    with pytest.raises(BudgetExceeded):
        ledger.charge(dpsgd_event(1.0, 0.5, 20), mechanism="dpsgd", round=1)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(mech.worst_case_events(4), mechanism=mech.name, release_key="b")
    assert not ledger.has_release("b") and ledger.refusals() == 2
    ledger.close()


@pytest.mark.parametrize("key, mechanism", [("nowhere", "confident_gnmax"), ("a", "gnmax"), ("c", "dpsgd")])
def test_settling_what_was_not_reserved_is_refused(tmp_path, key, mechanism):
    mech = ConfidentGNMax(threshold=20, sigma1=5.0, sigma2=4.0)
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=50.0, delta=DELTA)
    ledger.reserve(mech.worst_case_events(2), mechanism=mech.name, release_key="a")
    ledger.charge(dpsgd_event(1.0, 0.1, 5), mechanism="dpsgd", release_key="c")  # charged, not reserved
    before = ledger.records()
    with pytest.raises(UnknownReservation):
        ledger.settle(key, mech.worst_case_events(1)[0], mechanism=mechanism)
    assert ledger.records() == before
    ledger.close()


def test_an_output_is_recorded_once_under_its_key(tmp_path):
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=8.0, delta=DELTA)
    ledger.charge(dpsgd_event(1.0, 0.1, 5), mechanism="dpsgd", release_key="k")
    assert ledger.recorded_output("k") is None and ledger.recorded_output("other") is None
    ledger.record_output("k", "ab" * 32)
    ledger.record_output("k", "ab" * 32)
    assert ledger.recorded_output("k") == "ab" * 32
    with pytest.raises(UnknownReservation, match="already sent"):
        ledger.record_output("k", "cd" * 32)
    with pytest.raises(UnknownReservation, match="no release"):
        ledger.record_output("other", "cd" * 32)
    ledger.close()


def snapshot(folder):
    """Every file in ``folder``: name -> (sha256, mtime)."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def written_ledger(path, charges=3):
    ledger = PrivacyLedger(path, site="4", budget_epsilon=8.0, delta=DELTA)
    for r in range(charges):
        ledger.charge(dpsgd_event(2.0, 0.1, 10), mechanism="dpsgd", round=r)
    return ledger


def test_reading_a_closed_ledger_writes_nothing(tmp_path):
    path = tmp_path / "ledger.sqlite"
    written_ledger(path).close()
    before = snapshot(tmp_path)
    assert list(before) == ["ledger.sqlite"]  # a clean close leaves no log behind
    reader = PrivacyLedger.read(path)
    assert reader.site == "4" and reader.budget_epsilon == 8.0 and len(reader.events()) == 3
    assert reader.summary()["epsilon"] == pytest.approx(rdp_epsilon([dpsgd_event(2.0, 0.1, 10)] * 3))
    with pytest.raises(RuntimeError, match="read-only"):
        reader.charge(dpsgd_event(2.0, 0.1, 10), mechanism="dpsgd")
    reader.close()
    assert snapshot(tmp_path) == before


def test_reading_a_ledger_a_writer_holds_open_sees_its_committed_events(tmp_path):
    path = tmp_path / "ledger.sqlite"
    writer = written_ledger(path)
    reader = PrivacyLedger.read(path)
    assert len(reader.events()) == 3
    reader.close()
    writer.close()


def test_a_read_only_archive_of_an_unclosed_ledger_is_read_from_a_copy(tmp_path, monkeypatch):
    """A ledger archived while its writer was open (its log not yet merged) in a folder the
    reader cannot write: the reader works on a private copy and leaves the archive as it is.
    (The tests run as root, for whom no folder is read-only, so the folder's mode is simulated.)"""
    live = tmp_path / "live"
    live.mkdir()
    writer = written_ledger(live / "ledger.sqlite")
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        shutil.copyfile(live / name, archive / name)
    writer.close()
    before = snapshot(archive)
    real_access = __import__("os").access
    monkeypatch.setattr("fedens.privacy.ledger.os.access",
                        lambda p, mode: False if str(p) == str(archive) else real_access(p, mode))
    reader = PrivacyLedger.read(archive / "ledger.sqlite")
    assert len(reader.events()) == 3  # the events in the unmerged log are there
    reader.close()
    assert snapshot(archive) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_database", "empty"])
def test_a_damaged_ledger_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "ledger.sqlite"
    written_ledger(path).close()
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:700])
    elif damage == "garbage":
        path.write_bytes(b"not a database at all " * 100)
    elif damage == "other_database":
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (x)")
    else:
        path.write_bytes(b"")
    with pytest.raises(LedgerUnreadable) as raised:
        PrivacyLedger.read(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not a readable privacy ledger") and "\n" not in message
