import sqlite3

import pytest

from fedens.privacy import BudgetExceeded, PrivacyLedger, dpsgd_event, epsilon_from_events
from fedens.privacy.ledger import event_from_json, event_to_json


def test_events_survive_a_reopen(tmp_path):
    path = tmp_path / "site_3.sqlite"
    ledger = PrivacyLedger(path, site="3", budget_epsilon=8.0, delta=1e-5)
    events = [dpsgd_event(1.2, 0.1, 30), dpsgd_event(1.2, 0.1, 30)]
    for r, e in enumerate(events, 1):
        ledger.charge(e, mechanism="dpsgd", round=r, params={"steps": 30})
    spent = ledger.epsilon()
    ledger.close()

    reopened = PrivacyLedger.open_existing(path)
    assert reopened.site == "3" and reopened.budget_epsilon == 8.0 and reopened.delta == 1e-5
    assert reopened.events() == events
    assert reopened.epsilon() == pytest.approx(epsilon_from_events(events, 1e-5), rel=1e-12)
    assert reopened.epsilon() == spent
    assert [r["round"] for r in reopened.records()] == [1, 2]


def test_release_past_budget_is_refused_recorded_and_not_charged(tmp_path):
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=1.0, delta=1e-5)
    ledger.charge(dpsgd_event(5.0, 0.05, 10), mechanism="dpsgd", round=1)
    before = ledger.epsilon()
    with pytest.raises(BudgetExceeded, match="budget 1"):
        ledger.charge(dpsgd_event(0.6, 0.5, 500), mechanism="dpsgd", round=2)
    assert ledger.epsilon() == before
    assert len(ledger.events()) == 1
    assert ledger.refusals() == 1


def test_events_serialise_through_dp_accountings_named_tuples():
    event = dpsgd_event(1.5, 0.04, 2250)
    assert event_from_json(event_to_json(event)) == event


def test_ledger_file_is_sqlite_in_wal_mode(tmp_path):
    PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=1.0, delta=1e-5).close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("budget, delta, match", [(0, 1e-5, "budget_epsilon"), (1, 0, "delta")])
def test_bad_budget_is_named(tmp_path, budget, delta, match):
    with pytest.raises(ValueError, match=match):
        PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=budget, delta=delta)


def test_release_records_exactly_what_the_mechanism_spent(tmp_path):
    import numpy as np

    from fedens.privacy import ConfidentGNMax

    mech = ConfidentGNMax(threshold=20, sigma1=5.0, sigma2=4.0)
    votes = np.array([[30, 0, 0], [10, 10, 10], [29, 1, 0]])
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=50.0, delta=1e-5)
    released = ledger.release(mech, votes, np.random.default_rng(0), round=1)
    assert ledger.events() == [mech.event(released)]
    assert ledger.epsilon() == pytest.approx(epsilon_from_events(mech.events(released), 1e-5))
    record = ledger.records()[0]
    assert record["params"]["queries"] == 3 and record["params"]["answered"] == released.num_answered


def test_release_is_refused_on_its_worst_case_not_its_outcome(tmp_path):
    import numpy as np

    from fedens.privacy import ConfidentGNMax

    mech = ConfidentGNMax(threshold=1000, sigma1=50.0, sigma2=2.0)  # flat votes: never answers
    votes = np.full((5, 3), 3)
    checks_only = epsilon_from_events(mech.worst_case_events(5)[:1], 1e-5)
    worst = epsilon_from_events(mech.worst_case_events(5), 1e-5)
    assert checks_only < worst
    # the outcome (5 abstentions) would fit this budget, the worst case does not: refused,
    # so that a refusal never reveals anything about the noisy outcome
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=(checks_only + worst) / 2,
                           delta=1e-5)
    with pytest.raises(BudgetExceeded):
        ledger.release(mech, votes, np.random.default_rng(0), round=1)
    assert ledger.events() == [] and ledger.refusals() == 1 and ledger.queries_refused() == 5


def test_a_release_that_fails_records_nothing(tmp_path):
    import numpy as np

    from fedens.privacy import GNMax

    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=50.0, delta=1e-5)
    with pytest.raises(ValueError):
        ledger.release(GNMax(sigma=1.0), np.array([[1.0, np.nan]]), np.random.default_rng(0))
    assert ledger.events() == [] and ledger.refusals() == 0


def test_budget_guards_the_worst_case_and_both_epsilons_are_kept(tmp_path):
    import dp_accounting
    import numpy as np

    from fedens.privacy import ConfidentGNMax

    mech = ConfidentGNMax(threshold=1000, sigma1=20.0, sigma2=10.0)  # flat votes: never answers
    votes = np.full((4, 3), 3)
    one_batch_worst = epsilon_from_events(mech.worst_case_events(4), 1e-5)
    two_batches_worst = epsilon_from_events(mech.worst_case_events(8), 1e-5)
    two_batches_real = epsilon_from_events(mech.worst_case_events(8)[:1], 1e-5)  # checks only
    assert two_batches_real < one_batch_worst < two_batches_worst
    budget = (one_batch_worst + two_batches_worst) / 2
    ledger = PrivacyLedger(tmp_path / "s.sqlite", site="0", budget_epsilon=budget, delta=1e-5)
    first = ledger.release(mech, votes, np.random.default_rng(0), round=1)
    assert first.num_answered == 0
    assert ledger.epsilon() < ledger.epsilon_worst_case() == pytest.approx(one_batch_worst)
    # what was spent (checks only) would leave room for a second batch; its worst case does not
    with pytest.raises(BudgetExceeded):
        ledger.release(mech, votes, np.random.default_rng(1), round=2)
    assert ledger.worst_case_events() == [dp_accounting.ComposedDpEvent(mech.worst_case_events(4))]
    summary = ledger.summary()
    assert summary["remaining"] == pytest.approx(summary["budget"] - one_batch_worst)


def test_a_repeated_release_key_is_paid_once(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.sqlite", site="0", budget_epsilon=8.0, delta=1e-5)
    event = dpsgd_event(1.0, 0.1, 20)
    first = ledger.charge(event, mechanism="dpsgd", round=1, release_key="round-1/abc")
    again = ledger.charge(event, mechanism="dpsgd", round=1, release_key="round-1/abc")
    other = ledger.charge(event, mechanism="dpsgd", round=1, release_key="round-1/def")
    assert first == again < other
    assert other == pytest.approx(epsilon_from_events([event, event], 1e-5))
    assert [r["release_key"] for r in ledger.records()] == ["round-1/abc", "round-1/def"]
    ledger.close()


def test_a_ledger_written_before_release_keys_opens_and_gains_the_column(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before release keys existed
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, round INTEGER,"
            " mechanism TEXT NOT NULL, params TEXT NOT NULL, event TEXT NOT NULL, worst_case TEXT NOT NULL);"
        )
        text = event_to_json(dpsgd_event(1.0, 0.1, 20))
        db.execute("INSERT INTO events (time, round, mechanism, params, event, worst_case) "
                   "VALUES (0, 1, 'dpsgd', '{}', ?, ?)", (text, text))
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("site", "0"), ("budget_epsilon", "8.0"),
                                                          ("delta", "1e-05")])
    ledger = PrivacyLedger.open_existing(path)
    assert ledger.records()[0]["release_key"] is None
    ledger.charge(dpsgd_event(1.0, 0.1, 20), mechanism="dpsgd", round=2, release_key="k")
    assert len(ledger.events()) == 2
    ledger.close()
