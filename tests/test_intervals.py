"""Bootstrap intervals of accuracies and of paired differences (fedens.runs.intervals)."""

import numpy as np
import pytest

from fedens.runs.intervals import accuracy_interval, difference_interval


def test_an_accuracy_interval_holds_the_accuracy_and_narrows_with_more_queries():
    rng = np.random.default_rng(1)
    few, many = rng.random(100) < 0.8, rng.random(4000) < 0.8
    low, high = accuracy_interval(few)
    assert low < few.mean() < high
    # the normal approximation's half width, 1.96 * sqrt(p(1-p)/n), within 25%
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(few.mean() * (1 - few.mean()) / 100), rel=0.25)
    low_many, high_many = accuracy_interval(many)
    assert high_many - low_many < (high - low) / 4
    assert accuracy_interval(np.ones(50, bool)) == [1.0, 1.0]


def test_a_paired_difference_sees_what_unpaired_intervals_hide():
    rng = np.random.default_rng(2)
    a = rng.random(400) < 0.7
    b = a.copy()
    b[np.flatnonzero(a)[:12]] = False  # b loses 12 of a's correct queries, gains none: 3 points
    low, high = difference_interval(a, b)
    assert 0 < low < 0.03 < high  # paired: the difference is clearly positive
    a_low, a_high = accuracy_interval(a)
    b_low, b_high = accuracy_interval(b)
    assert b_high > a_low  # while the two accuracies' own intervals overlap
    assert difference_interval(a, a) == [0.0, 0.0]


@pytest.mark.parametrize("bad, match", [(np.array([0.5, 0.5]), "bool"), (np.array([True]), ">= 2"),
                                        (np.ones((2, 2), bool), "1-D")])
def test_intervals_refuse_what_is_not_per_query_correctness(bad, match):
    with pytest.raises(ValueError, match=match):
        accuracy_interval(bad)
    with pytest.raises(ValueError, match="one shape"):
        difference_interval(np.ones(3, bool), np.ones(4, bool))
