"""OpenAIChatExpert against a loopback OpenAI-compatible server started by the tests."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest

from fedens.experts import MultipleChoiceQuestion, OpenAIChatExpert
from fedens.experts.openai_endpoint import letter_of, parse_answer_letter

QUESTIONS = [
    MultipleChoiceQuestion("Which planet do we live on?", ["Mars", "Earth", "Venus", "Jupiter"], 1),
    MultipleChoiceQuestion("What is frozen water called?", ["Steam", "Sand", "Ice", "Glass"], 2),
]


def expert(server, model, **kwargs):
    kwargs = {"timeout": 5.0, "max_retries": 0, "name": f"loopback-{model}", **kwargs}
    return OpenAIChatExpert(base_url=server.url, model=model, **kwargs)


def test_top_logprobs_give_the_distribution_over_letters(chat_server):
    P = expert(chat_server, "logprobs", smoothing=0.0).predict_proba(QUESTIONS)
    # independent reference: add the probabilities of tokens naming each letter, renormalise
    mass = {"A": 0.0, "B": 0.0, "C": 0.0, "D": 0.0}
    for token, p in chat_server.top_logprobs:
        letter = token.strip().lstrip("(")
        if letter in mass:
            mass[letter] += p
    want = np.array(list(mass.values())) / sum(mass.values())
    np.testing.assert_allclose(P, np.tile(want, (2, 1)), rtol=1e-12)
    request = chat_server.requests[-1]
    assert (request["logprobs"], request["top_logprobs"], request["temperature"]) == (True, 20, 0)
    prompt = "What is frozen water called?\nA. Steam\nB. Sand\nC. Ice\nD. Glass"
    assert prompt in request["messages"][-1]["content"]


def test_smoothing_mixes_in_the_uniform_distribution(chat_server):
    raw = expert(chat_server, "logprobs", smoothing=0.0).predict_proba(QUESTIONS)
    smooth = expert(chat_server, "logprobs", smoothing=0.2).predict_proba(QUESTIONS)
    np.testing.assert_allclose(smooth, 0.8 * raw + 0.2 / 4, rtol=1e-12)
    assert smooth.min() > 0


def test_logprobs_are_read_at_the_first_letter_token(chat_server):
    P = expert(chat_server, "verbose-logprobs", smoothing=0.0).predict_proba(QUESTIONS[:1])
    np.testing.assert_allclose(P, [[0.0, 0.7 / 0.9, 0.0, 0.2 / 0.9]], rtol=1e-12)


def test_the_chosen_token_counts_when_the_server_omits_it_from_the_alternatives(chat_server):
    P = expert(chat_server, "partial-logprobs", smoothing=0.0).predict_proba(QUESTIONS[:1])
    np.testing.assert_allclose(P, [[0.2 / 0.9, 0.6 / 0.9, 0.1 / 0.9, 0.0]], rtol=1e-12)


def test_without_logprobs_the_parsed_letter_is_one_hot(chat_server):
    P = expert(chat_server, "letter", smoothing=0.0).predict_proba(QUESTIONS)
    np.testing.assert_array_equal(P, [[0, 0, 1, 0], [0, 0, 1, 0]])
    P = expert(chat_server, "logprobs", logprobs=False).predict_proba(QUESTIONS[:1])  # server answers "B"
    np.testing.assert_allclose(P, [[0.0025, 0.9925, 0.0025, 0.0025]], rtol=1e-12)
    assert "logprobs" not in chat_server.requests[-1]


def test_a_reply_naming_no_option_is_uniform_with_a_warning(chat_server):
    with pytest.warns(UserWarning, match="'loopback-mute': reply 'I would rather not say.' names no option"):
        P = expert(chat_server, "mute").predict_proba(QUESTIONS[:1])
    np.testing.assert_allclose(P, [[0.25] * 4])


def test_server_errors_are_retried_with_backoff(chat_server):
    before = chat_server.calls.get("flaky", 0)
    P = expert(chat_server, "flaky", max_retries=2, smoothing=0.0).predict_proba(QUESTIONS[:1])
    assert chat_server.calls["flaky"] - before == 2  # one 503, then the answer
    assert P.argmax() == 1


def test_an_error_status_is_one_line_naming_the_url(chat_server):
    with pytest.raises(RuntimeError) as info:
        expert(chat_server, "broken").predict_proba(QUESTIONS[:1])
    message = str(info.value)
    assert chat_server.url in message and "HTTP 500" in message and "\n" not in message


def test_an_unreachable_endpoint_is_one_line_naming_the_url():
    with socket.socket() as closed:  # bound but not listening: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        nowhere = OpenAIChatExpert(base_url=url, model="m", name="nowhere", timeout=2.0, max_retries=0)
        with pytest.raises(ConnectionError) as info:
            nowhere.predict_proba(QUESTIONS[:1])
    message = str(info.value)
    assert f"expert 'nowhere': OpenAI-compatible endpoint {url} is unreachable" in message
    assert "\n" not in message


def test_pickles_without_its_http_client(chat_server):
    original = expert(chat_server, "logprobs")
    P = original.predict_proba(QUESTIONS)
    copy = pickle.loads(pickle.dumps(original))
    assert copy._client is None
    np.testing.assert_array_equal(copy.predict_proba(QUESTIONS), P)


def test_letters_are_read_from_tokens_and_replies():
    assert [letter_of(t, "ABCD") for t in ["B", " B", "(C", "D.", "a", "E", "Hello", ""]] == [
        "B", "B", "C", "D", None, None, None, None,
    ]
    assert parse_answer_letter("A good guess: the answer is (c).", "ABCD") == "C"
    assert parse_answer_letter("B) Paris", "ABCD") == "B"
    assert parse_answer_letter("I cannot tell", "ABCD") is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"timeout": 0}, "timeout"), ({"max_retries": -1}, "max_retries"), ({"smoothing": 1.0}, "smoothing")],
)
def test_bad_client_options_are_named(kwargs, fragment):
    with pytest.raises(ValueError, match=f"'api'.*{fragment}"):
        OpenAIChatExpert(base_url="http://127.0.0.1:9/v1", model="m", name="api", **kwargs)
