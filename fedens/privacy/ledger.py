"""One durable privacy ledger per site (SQLite, WAL, one transaction per release).

Every release charged to a site is stored as a dp-accounting ``DpEvent`` in its
own serialisable form (``DpEvent.to_named_tuple()``), so anyone can recompute
the site's epsilon from the file with dp-accounting alone. The budget is
checked inside the same transaction that records the event: a release that
would exceed it is refused and the refusal recorded instead.

Each release is stored twice: what it spent (``event``: a Confident-GNMax
query that abstained costs only its threshold check, as in Papernot et al.
2018) and what it could have spent at most (``worst_case``: every query
answered). The worst case depends only on public parameters (the mechanism
and the number of queries), so the budget guards the composition of worst
cases: that bound holds without any argument about adaptively chosen costs.
The realised epsilon is reported beside it as the tighter, Papernot-style
figure.

A release made elsewhere (the coordinator adds the noise to the sites' votes)
is *reserved* at its worst case in the transaction that lets the site answer,
and *settled* to what it spent once the coordinator says: a site never answers
without the worst case already recorded. A release a site makes itself can
record the sha256 of its output under its release key, so a re-run that gives
another output is known to be a new release (:meth:`PrivacyLedger.recorded_output`).

Readers open a ledger read-only (:meth:`PrivacyLedger.read`): nothing is
written to the file or beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dp_accounting
import numpy as np

from fedens.privacy.accounting import ACCOUNTING_METHOD, epsilon_from_events
from fedens.privacy.errors import BudgetExceeded, LedgerUnreadable, UnknownReservation

if TYPE_CHECKING:
    from fedens.privacy.mechanism_base import Mechanism, Release

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, round INTEGER,
    mechanism TEXT NOT NULL, params TEXT NOT NULL, event TEXT NOT NULL,
    worst_case TEXT NOT NULL, release_key TEXT, state TEXT NOT NULL DEFAULT 'charged',
    output_sha256 TEXT);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, round INTEGER,
    mechanism TEXT NOT NULL, epsilon_if_released REAL NOT NULL,
    queries INTEGER NOT NULL DEFAULT 0);
"""


#: columns added after the first ledgers were written: (name, its SQL type and default)
_LATER_COLUMNS = (("release_key", "TEXT"), ("state", "TEXT NOT NULL DEFAULT 'charged'"),
                  ("output_sha256", "TEXT"))
CHARGED, RESERVED, SETTLED = "charged", "reserved", "settled"  # an event's state



def event_to_json(event: dp_accounting.DpEvent) -> str:
    """Serialise a DpEvent through ``to_named_tuple()`` as nested JSON objects."""

    def plain(value: Any) -> Any:
        if hasattr(value, "_asdict"):
            return {k: plain(v) for k, v in value._asdict().items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(event.to_named_tuple()))


def event_from_json(text: str) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_json`, through ``DpEvent.from_named_tuple``."""

    def tupled(value: Any) -> Any:
        if isinstance(value, dict):
            fields = {k: tupled(v) for k, v in value.items()}
            return namedtuple(f"_{fields['class_name']}", list(fields))(**fields)
        if isinstance(value, list):
            return [tupled(v) for v in value]
        return value

    return dp_accounting.DpEvent.from_named_tuple(tupled(json.loads(text)))


class PrivacyLedger:
    """The record of every DP event charged to one site, and its budget.

    Parameters
    ----------
    path : SQLite file; created if missing, reopened (with its events) if present.
    site : the site's name.
    budget_epsilon, delta : the site's budget: epsilon at delta.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from fedens.privacy.accounting import dpsgd_event
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "site.sqlite"
    >>> ledger = PrivacyLedger(path, site="0", budget_epsilon=8.0, delta=1e-5)
    >>> eps = ledger.charge(dpsgd_event(1.0, 0.1, 10), mechanism="dpsgd", round=1)
    >>> 0 < ledger.epsilon() == eps <= 8.0
    True
    """

    def __init__(self, path: Path | str, site: str, budget_epsilon: float, delta: float) -> None:
        if not (0 < budget_epsilon < float("inf")):
            raise ValueError(f"budget_epsilon must be finite and > 0, got {budget_epsilon}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.path, self.read_only, self._copy = Path(path), False, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        for name, kind in _LATER_COLUMNS:  # a ledger written before the column existed
            if name not in columns:
                self._db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
        self._columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_release_key ON events(release_key) "
                         "WHERE release_key IS NOT NULL")
        self.site, self.budget_epsilon, self.delta = site, float(budget_epsilon), float(delta)
        with self._transaction():
            for key, value in (
                ("site", site),
                ("budget_epsilon", repr(self.budget_epsilon)),
                ("delta", repr(self.delta)),
                ("accounting", ACCOUNTING_METHOD),
            ):
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @classmethod
    def open_existing(cls, path: Path | str) -> PrivacyLedger:
        """Reopen a ledger for writing, with the budget it was written with."""
        reader = cls.read(path)
        site, budget, delta = reader.site, reader.budget_epsilon, reader.delta
        reader.close()
        return cls(path, site, budget, delta)

    @classmethod
    def read(cls, path: Path | str) -> PrivacyLedger:
        """Open a ledger read-only: nothing is written to the file or beside it.

        A ledger whose last writer closed it cleanly has no write-ahead log and is read as an
        immutable file. One with a log (a writer may be live) is read through SQLite's shared
        memory when its folder is writable, else from a private copy of the file and its log
        (an archive that was not closed cleanly).

        Raises
        ------
        FileNotFoundError
            if there is no file at ``path``.
        LedgerUnreadable
            if the file is not a privacy ledger (truncated, garbage, another database).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no privacy ledger at {path}")
        self = cls.__new__(cls)
        self.path, self.read_only, self._copy = path, True, None
        wal = path.with_name(path.name + "-wal")
        try:
            if not wal.is_file():
                source = f"file:{_uri_path(path)}?immutable=1"
            elif os.access(path.parent, os.W_OK):
                source = f"file:{_uri_path(path)}?mode=ro"
            else:
                self._copy = Path(tempfile.mkdtemp(prefix="fedens-ledger-"))
                for file in (path, wal):
                    shutil.copyfile(file, self._copy / file.name)
                source = f"file:{_uri_path(self._copy / path.name)}?mode=ro"
            self._db = sqlite3.connect(source, uri=True, isolation_level=None, timeout=30)
            if (check := self._db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(check)
            self._columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            self.site, self.budget_epsilon = meta["site"], float(meta["budget_epsilon"])
            self.delta = float(meta["delta"])
            if not {"event", "worst_case", "mechanism"} <= self._columns:
                raise KeyError("events table")
        except (sqlite3.Error, KeyError, ValueError, OSError) as error:
            self.close()
            reason = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise LedgerUnreadable(f"{path}: not a readable privacy ledger ({reason})") from None
        return self

    def _transaction(self) -> _Transaction:
        if self.read_only:
            raise RuntimeError(f"{self.path} was opened read-only (PrivacyLedger.read)")
        return _Transaction(self._db)

    def _column(self, name: str, default: str = "NULL") -> str:
        """``name`` if the events table has it (an older ledger may not), else ``default``."""
        return name if name in self._columns else default

    def events(self) -> list[dp_accounting.DpEvent]:
        """What each release spent (an abstaining Confident-GNMax query: its check only)."""
        rows = self._db.execute("SELECT event FROM events ORDER BY id").fetchall()
        return [event_from_json(text) for (text,) in rows]

    def worst_case_events(self) -> list[dp_accounting.DpEvent]:
        """What each release could have spent at most, fixed by public parameters alone."""
        rows = self._db.execute("SELECT worst_case FROM events ORDER BY id").fetchall()
        return [event_from_json(text) for (text,) in rows]

    def records(self) -> list[dict[str, Any]]:
        """Every event with time, round, mechanism, parameters, its named tuple, its release key
        and state (charged; or reserved at its worst case, then settled)."""
        rows = self._db.execute(
            f"SELECT time, round, mechanism, params, event, {self._column('release_key')}, "
            f"{self._column('state', repr(CHARGED))} FROM events ORDER BY id"
        ).fetchall()
        return [
            {"time": t, "round": r, "mechanism": m, "params": json.loads(p), "event": json.loads(e),
             "release_key": k, "state": state}
            for t, r, m, p, e, k, state in rows
        ]

    def epsilon(self) -> float:
        """Epsilon spent so far at the ledger's delta, from what each release spent
        (0.0 when nothing was released)."""
        events = self.events()
        return epsilon_from_events(events, self.delta) if events else 0.0

    def epsilon_worst_case(self) -> float:
        """Epsilon of the releases' worst cases: the quantity the budget guards."""
        events = self.worst_case_events()
        return epsilon_from_events(events, self.delta) if events else 0.0

    def _would_reach(self, worst_case: list[dp_accounting.DpEvent]) -> float:
        return epsilon_from_events([*self.worst_case_events(), *worst_case], self.delta)

    def _has_refusals_table(self) -> bool:  # a ledger from before refusals were kept has none
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'refusals'").fetchone() is not None

    def refusals(self) -> int:
        if not self._has_refusals_table():
            return 0
        return int(self._db.execute("SELECT COUNT(*) FROM refusals").fetchone()[0])

    def queries_refused(self) -> int:
        if not self._has_refusals_table():
            return 0
        return int(self._db.execute("SELECT COALESCE(SUM(queries), 0) FROM refusals").fetchone()[0])

    def _refuse(self, mechanism: str, round: int | None, eps: float, queries: int = 0) -> BudgetExceeded:
        self._db.execute(
            "INSERT INTO refusals (time, round, mechanism, epsilon_if_released, queries) "
            "VALUES (?, ?, ?, ?, ?)",
            (time.time(), round, mechanism, eps, queries),
        )
        return BudgetExceeded(
            f"site {self.site}: {mechanism} in round {round} would spend epsilon={eps:.3f} "
            f"> budget {self.budget_epsilon:g} at delta={self.delta:g}; refused"
        )

    def _record(self, event: dp_accounting.DpEvent, worst_case: dp_accounting.DpEvent, mechanism: str,
                round: int | None, params: dict[str, Any] | None, release_key: str | None = None,
                state: str = CHARGED) -> None:
        self._db.execute(
            "INSERT INTO events (time, round, mechanism, params, event, worst_case, release_key, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), round, mechanism, json.dumps(params or {}), event_to_json(event),
             event_to_json(worst_case), release_key, state),
        )

    def has_release(self, release_key: str) -> bool:
        """Whether a release recorded under ``release_key`` is already paid for."""
        row = self._db.execute("SELECT 1 FROM events WHERE release_key = ?", (release_key,)).fetchone()
        return row is not None

    def recorded_output(self, release_key: str) -> str | None:
        """The sha256 of the output released under ``release_key`` (None: none recorded)."""
        row = self._db.execute(f"SELECT {self._column('output_sha256')} FROM events WHERE release_key = ?",
                               (release_key,)).fetchone()
        return None if row is None else row[0]

    def record_output(self, release_key: str, output_sha256: str) -> None:
        """Record the sha256 of what the release under ``release_key`` sends, before it is sent.

        A re-run with the same key whose output differs is then a new release, to be charged
        (a key names the inputs; this names the output, whatever made it differ).

        Raises
        ------
        UnknownReservation
            if no release is recorded under the key, or another output already is.
        """
        with self._transaction():
            row = self._db.execute("SELECT output_sha256 FROM events WHERE release_key = ?",
                                   (release_key,)).fetchone()
            if row is None:
                raise UnknownReservation(f"site {self.site}: no release recorded under {release_key!r}")
            if row[0] not in (None, output_sha256):
                raise UnknownReservation(f"site {self.site}: release {release_key!r} already sent output "
                                         f"{row[0][:16]}..., not {output_sha256[:16]}...")
            self._db.execute("UPDATE events SET output_sha256 = ? WHERE release_key = ?",
                             (output_sha256, release_key))

    def release(
        self,
        mechanism: Mechanism,
        inputs: np.ndarray,
        rng: np.random.Generator,
        *,
        round: int | None = None,
    ) -> Release:
        """Release ``mechanism`` on ``inputs`` only if its worst case fits the budget.

        In one transaction: the budget is checked against what the release could
        spend at most (``mechanism.worst_case_events``), so whether a release is
        refused never depends on its own noisy outcome; then the mechanism runs
        and exactly what it spent (``mechanism.event(release)``) is recorded.

        Raises
        ------
        BudgetExceeded
            if even the worst case does not fit; nothing is released, the refusal
            and its number of queries are recorded.
        """
        num_queries = len(inputs)
        worst_case = mechanism.worst_case_events(num_queries)
        refusal = None
        with self._transaction():
            worst = self._would_reach(worst_case)
            if worst > self.budget_epsilon:
                refusal = self._refuse(mechanism.name, round, worst, num_queries)
            else:
                released = mechanism.release(inputs, rng)
                self._record(mechanism.event(released), dp_accounting.ComposedDpEvent(worst_case),
                             mechanism.name, round, {**mechanism.params(), "queries": num_queries,
                                                     "answered": released.num_answered})
        if refusal is not None:
            raise refusal
        return released

    def charge(
        self,
        event: dp_accounting.DpEvent,
        *,
        mechanism: str,
        round: int | None = None,
        params: dict[str, Any] | None = None,
        worst_case: dp_accounting.DpEvent | None = None,
        release_key: str | None = None,
    ) -> float:
        """Record ``event`` (with its ``worst_case``, default ``event`` itself) if the
        budget allows the worst case; return the epsilon spent after it.

        ``release_key`` names a release that is a deterministic function of the key
        (same inputs, same seed, hence the very same output). Sending that output
        again is post-processing of the first release and costs nothing, so a key
        already in the ledger is not charged twice: a round re-run after a crash
        (``resume=``) leaves the ledger as an uninterrupted run would.

        Raises
        ------
        BudgetExceeded
            if the worst case would exceed the budget; the refusal is recorded and
            no event is.
        """
        worst_case = event if worst_case is None else worst_case
        refusal = None
        with self._transaction():
            if release_key is not None and self.has_release(release_key):
                pass  # already paid for: this is the same output again
            elif (worst := self._would_reach([worst_case])) > self.budget_epsilon:
                refusal = self._refuse(mechanism, round, worst)
            else:
                self._record(event, worst_case, mechanism, round, params, release_key)
        if refusal is not None:
            raise refusal
        return self.epsilon()

    def reserve(
        self,
        worst_case: list[dp_accounting.DpEvent],
        *,
        mechanism: str,
        release_key: str,
        round: int | None = None,
        params: dict[str, Any] | None = None,
        queries: int = 0,
    ) -> float:
        """Record a release made elsewhere at its worst case, before the site contributes to it;
        return the epsilon (worst case) it reaches. The same key again is the same contribution,
        reserved once. :meth:`settle` later records what it actually spent.

        Raises
        ------
        BudgetExceeded
            if the worst case does not fit the budget; the refusal is recorded.
        """
        refusal, composed = None, dp_accounting.ComposedDpEvent(list(worst_case))
        with self._transaction():
            if not self.has_release(release_key):
                if (worst := self._would_reach(list(worst_case))) > self.budget_epsilon:
                    refusal = self._refuse(mechanism, round, worst, queries)
                else:
                    self._record(composed, composed, mechanism, round, params, release_key, RESERVED)
        if refusal is not None:
            raise refusal
        return self.epsilon_worst_case()

    def settle(self, release_key: str, event: dp_accounting.DpEvent, *, mechanism: str,
               params: dict[str, Any] | None = None) -> float:
        """Replace a reservation's worst case by what the release spent (its worst case stays, and
        the budget keeps guarding it); return the epsilon spent. Settling twice with the same
        event is a no-op.

        Raises
        ------
        UnknownReservation
            if ``release_key`` names no reservation of ``mechanism`` in this ledger.
        """
        text = event_to_json(event)
        with self._transaction():
            row = self._db.execute("SELECT mechanism, state, event FROM events WHERE release_key = ?",
                                   (release_key,)).fetchone()
            if row is None or row[0] != mechanism or row[1] == CHARGED or (
                    row[1] == SETTLED and row[2] != text):
                raise UnknownReservation(f"site {self.site}: no open {mechanism} reservation "
                                         f"{release_key!r} to settle")
            update = "UPDATE events SET event = ?, state = ?" + (", params = ?" if params else "")
            self._db.execute(update + " WHERE release_key = ?",
                             (text, SETTLED, *([json.dumps(params)] if params else []), release_key))
        return self.epsilon()

    def summary(self) -> dict[str, Any]:
        worst = self.epsilon_worst_case()
        states = [r["state"] for r in self.records()]
        return {
            "site": self.site,
            "epsilon": self.epsilon(),
            "epsilon_worst_case": worst,
            "budget": self.budget_epsilon,
            "remaining": self.budget_epsilon - worst,
            "delta": self.delta,
            "events": len(states),
            "reserved": states.count(RESERVED),  # made elsewhere, not yet settled: at worst case
            "refusals": self.refusals(),
            "queries_refused": self.queries_refused(),
            "accounting": ACCOUNTING_METHOD,
        }

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]
        if getattr(self, "_copy", None) is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None


def _uri_path(path: Path) -> str:
    """``path`` for an SQLite ``file:`` URI (absolute, with ``?`` and ``#`` escaped)."""
    from urllib.parse import quote

    return quote(str(path.resolve()))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
