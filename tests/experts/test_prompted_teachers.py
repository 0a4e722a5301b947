"""Prompted in-context teachers: disjoint example sets (one record changes one teacher), one vote
per teacher per query, calibration by a content-free query."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_lm import tiny_lm

from fedens.experts import CausalLMExpert
from fedens.experts.prompted_teachers import PromptedTeachers, clip, disjoint_examples

SKEWED, THREE = np.array([0] * 30 + [1] * 10), np.random.default_rng(3).integers(0, 3, 50)


@pytest.mark.parametrize("labels", [SKEWED, THREE])
def test_each_record_is_an_example_of_one_teacher_at_most(labels):
    sets = disjoint_examples(labels, num_teachers=7, shots=4, seed=0)
    used = np.concatenate(sets)
    assert [len(s) for s in sets] == [4] * 7 and len(set(used.tolist())) == len(used) == 28
    first = sets[0]  # balanced while both classes last: two of each label
    if len(np.unique(labels)) == 2:
        assert sorted(labels[first].tolist()) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="7 teachers x 8 examples need 56 records, the site has"):
        disjoint_examples(labels[:40], num_teachers=7, shots=8, seed=0)


def test_votes_count_one_answer_per_teacher_and_calibration_divides_by_the_content_free_answer(tmp_path):
    lm = CausalLMExpert(model_path=tiny_lm(tmp_path / "lm"), name="tiny")
    examples = [[("tasty fresh", 0), ("stale bland", 1)], [("lovely crisp", 0), ("soggy late", 1)],
                [("perfect", 0), ("awful", 1)]]
    texts = ["delicious snack", "broken box", "the kids and it was fresh"]
    raw = PromptedTeachers(lm, examples, ("positive", "negative"), calibrate="none")
    calibrated = PromptedTeachers(lm, examples, ("positive", "negative"))
    votes = calibrated.votes(texts)
    assert votes.shape == (3, 2) and (votes.sum(axis=1) == 3).all()
    base = raw.proba(1, ["N/A"])[0]
    expected = raw.proba(1, texts) / base
    np.testing.assert_allclose(calibrated.proba(1, texts), expected / expected.sum(axis=1, keepdims=True))
    assert "tasty fresh\nSentiment: positive\n\n" in raw.questions(0, texts)[0].question
    assert raw.questions(2, texts)[2].question.endswith("Review: the kids and it was fresh\nSentiment:")


def test_a_long_text_is_cut_at_a_word():
    assert clip("one two three four", 9) == "one two ..." and clip("short", None) == "short"


@pytest.mark.parametrize("prior", [None, [0.7, 0.3], [0.2, 0.5, 0.3]])
def test_prior_matching_gives_the_public_queries_the_prior_as_their_mean_answer(prior):
    from fedens.experts.prompted_teachers import _softmax, prior_bias

    k = 2 if prior is None else len(prior)
    P = _softmax(np.random.default_rng(0).normal(size=(200, k)) + np.arange(k) * 2.0)  # skewed to the last
    mean = _softmax(np.log(P) + prior_bias(P, prior)).mean(axis=0)
    np.testing.assert_allclose(mean, np.full(k, 1 / k) if prior is None else prior, atol=1e-6)


def test_prior_calibration_is_fitted_per_teacher_on_public_texts_only(tmp_path):
    lm = CausalLMExpert(model_path=tiny_lm(tmp_path / "lm"), name="tiny")
    examples = [[("tasty fresh", 0), ("stale bland", 1)], [("perfect", 0), ("awful", 1)]]
    public = ["delicious snack", "broken box", "the kids and it was fresh", "late", "crisp", "soggy"]
    teachers = PromptedTeachers(lm, examples, ("positive", "negative"), calibrate="prior",
                                calibration_texts=public, prior=[0.6, 0.4])
    for t in (0, 1):
        np.testing.assert_allclose(teachers.proba(t, public).mean(axis=0), [0.6, 0.4], atol=1e-6)
    with pytest.raises(ValueError, match="needs public calibration_texts"):
        PromptedTeachers(lm, examples, ("positive", "negative"), calibrate="prior")
