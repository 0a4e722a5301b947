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
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dp_accounting
import numpy as np

from fedens.privacy.accounting import ACCOUNTING_METHOD, epsilon_from_events

if TYPE_CHECKING:
    from fedens.privacy.mechanism_base import Mechanism, Release

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, round INTEGER,
    mechanism TEXT NOT NULL, params TEXT NOT NULL, event TEXT NOT NULL,
    worst_case TEXT NOT NULL, release_key TEXT);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, round INTEGER,
    mechanism TEXT NOT NULL, epsilon_if_released REAL NOT NULL,
    queries INTEGER NOT NULL DEFAULT 0);
"""


class BudgetExceeded(RuntimeError):
    """A release was refused because it would take the site past its budget."""


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
        if budget_epsilon <= 0:
            raise ValueError(f"budget_epsilon must be > 0, got {budget_epsilon}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "release_key" not in columns:  # a ledger written before release keys existed
            self._db.execute("ALTER TABLE events ADD COLUMN release_key TEXT")
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
        """Reopen a ledger with the budget it was written with."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no privacy ledger at {path}")
        with sqlite3.connect(path) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        return cls(path, meta["site"], float(meta["budget_epsilon"]), float(meta["delta"]))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def events(self) -> list[dp_accounting.DpEvent]:
        """What each release spent (an abstaining Confident-GNMax query: its check only)."""
        rows = self._db.execute("SELECT event FROM events ORDER BY id").fetchall()
        return [event_from_json(text) for (text,) in rows]

    def worst_case_events(self) -> list[dp_accounting.DpEvent]:
        """What each release could have spent at most, fixed by public parameters alone."""
        rows = self._db.execute("SELECT worst_case FROM events ORDER BY id").fetchall()
        return [event_from_json(text) for (text,) in rows]

    def records(self) -> list[dict[str, Any]]:
        """Every event with time, round, mechanism, parameters and its named tuple."""
        rows = self._db.execute(
            "SELECT time, round, mechanism, params, event, release_key FROM events ORDER BY id"
        ).fetchall()
        return [
            {"time": t, "round": r, "mechanism": m, "params": json.loads(p), "event": json.loads(e),
             "release_key": k}
            for t, r, m, p, e, k in rows
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

    def refusals(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM refusals").fetchone()[0])

    def queries_refused(self) -> int:
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
                round: int | None, params: dict[str, Any] | None, release_key: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO events (time, round, mechanism, params, event, worst_case, release_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), round, mechanism, json.dumps(params or {}), event_to_json(event),
             event_to_json(worst_case), release_key),
        )

    def has_release(self, release_key: str) -> bool:
        """Whether a release recorded under ``release_key`` is already paid for."""
        row = self._db.execute("SELECT 1 FROM events WHERE release_key = ?", (release_key,)).fetchone()
        return row is not None

    def check_budget(
        self,
        worst_case: list[dp_accounting.DpEvent],
        *,
        mechanism: str,
        round: int | None = None,
        queries: int = 0,
    ) -> float:
        """Raise :class:`BudgetExceeded` (recording the refusal) unless ``worst_case``
        fits the budget; return the epsilon it would reach.

        For releases made elsewhere (the coordinator adds the noise): the site
        checks the worst case before it contributes, then :meth:`charge` s what
        the release actually spent, which can then never be refused.
        """
        refusal = None
        with self._transaction():
            eps = self._would_reach(worst_case)
            if eps > self.budget_epsilon:
                refusal = self._refuse(mechanism, round, eps, queries)
        if refusal is not None:
            raise refusal
        return eps

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

    def summary(self) -> dict[str, Any]:
        worst = self.epsilon_worst_case()
        return {
            "site": self.site,
            "epsilon": self.epsilon(),
            "epsilon_worst_case": worst,
            "budget": self.budget_epsilon,
            "remaining": self.budget_epsilon - worst,
            "delta": self.delta,
            "events": len(self.events()),
            "refusals": self.refusals(),
            "queries_refused": self.queries_refused(),
            "accounting": ACCOUNTING_METHOD,
        }

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
