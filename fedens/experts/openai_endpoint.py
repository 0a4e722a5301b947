"""An OpenAI-compatible chat endpoint answering multiple-choice questions."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedens.experts.multiple_choice import MultipleChoiceQuestion, as_questions
from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_int, check_positive, check_probabilities

DEFAULT_SYSTEM_PROMPT = "Answer the multiple-choice question with the letter of the correct option only."
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE)
_LETTER = re.compile(r"\b([A-Z])\b")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def letter_of(token: str, letters: str) -> str | None:
    """The option letter a generated token stands for (``" B"``, ``"(B"``, ``"B."``), else None."""
    core = token.strip().strip("()[].:*")
    return core if len(core) == 1 and core in letters else None


def parse_answer_letter(text: str, letters: str) -> str | None:
    """The option letter in a free-text reply: after "answer is", else the first lone letter."""
    for match in _ANSWER_IS.finditer(text):
        if match.group(1).upper() in letters:
            return match.group(1).upper()
    return next((m.group(1) for m in _LETTER.finditer(text) if m.group(1) in letters), None)


@register_expert("openai_chat")
@dataclass(eq=False)
class OpenAIChatExpert:
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint, as an expert.

    Each question is sent with its lettered options (one request per question,
    temperature 0). The distribution over the letters comes from

    1. ``top_logprobs`` of the first generated token that is an option letter,
       when ``logprobs=True`` and the server returns them: the probabilities of
       tokens naming the same letter (``"B"``, ``" B"``, ``"(B"``) are added
       and renormalised over the letters (mass on other tokens is dropped);
    2. otherwise the letter parsed from the reply, one-hot; a reply naming no
       letter gives the uniform distribution, with a warning.

    Either is then mixed with the uniform distribution by ``smoothing``
    (``p = (1 - smoothing) * p + smoothing / C``; default 0.01) so that one
    reply never makes an option impossible for log-linear pools and NLL.
    ``timeout`` (seconds per request) and ``max_retries`` go to the ``openai``
    client, which retries connection errors, 408, 409, 429 and 5xx with
    exponential backoff (0.5 s doubling to 8 s, with jitter). An unreachable
    endpoint raises ``ConnectionError`` naming its URL. The API key is
    ``api_key``, else the variable ``api_key_env`` (``$OPENAI_API_KEY``), else a
    placeholder for local servers. Its record (what a site gets) never holds the key.

    Examples
    --------
    >>> e = OpenAIChatExpert(base_url="http://127.0.0.1:8000/v1", model="qwen", name="qwen")  # doctest: +SKIP
    >>> e.predict_proba([MultipleChoiceQuestion("2 + 2 =", ["3", "4"])])  # doctest: +SKIP
    array([[0.005, 0.995]])
    """

    base_url: str
    model: str
    name: str = "openai-chat"
    api_key: str | None = None
    timeout: float = 30.0
    max_retries: int = 2
    logprobs: bool = True
    top_logprobs: int = 20
    max_tokens: int = 8
    smoothing: float = 0.01
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    cost: float = 1.0
    site: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key where the expert runs

    def __post_init__(self) -> None:
        self.cost = check_cost(self.cost, self.name)
        self.timeout = check_positive(self.timeout, "timeout", self.name)
        self.max_retries = check_int(self.max_retries, "max_retries", self.name, minimum=0)
        self.top_logprobs = check_int(self.top_logprobs, "top_logprobs", self.name)
        self.max_tokens = check_int(self.max_tokens, "max_tokens", self.name)
        if not (isinstance(self.smoothing, (int, float)) and 0.0 <= self.smoothing < 1.0):
            raise ValueError(f"expert {self.name!r}: smoothing must be in [0, 1), got {self.smoothing!r}")
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # the HTTP client is rebuilt on first use

    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client, built on first use."""
        if self._client is None:
            try:
                import openai
            except ImportError as exc:  # pragma: no cover - a fedens dependency
                raise ImportError("OpenAIChatExpert needs the openai package: pip install openai") from exc
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=self.api_key or os.environ.get(self.api_key_env) or "not-needed",
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._client

    def _complete(self, question: MultipleChoiceQuestion) -> Any:
        import openai

        options: dict[str, Any] = {"temperature": 0, "max_tokens": self.max_tokens}
        if self.logprobs:
            options.update(logprobs=True, top_logprobs=self.top_logprobs)
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": f"{question.prompt()}\nAnswer:"},
        ]
        try:
            return self.client.chat.completions.create(model=self.model, messages=messages, **options)
        except openai.APIConnectionError as exc:  # includes timeouts
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise ConnectionError(
                f"expert {self.name!r}: OpenAI-compatible endpoint {self.base_url} is unreachable "
                + _one_line(f"({type(exc).__name__}{cause}; {1 + self.max_retries} attempts, "
                            f"timeout {self.timeout:g} s)")
            ) from exc
        except openai.APIStatusError as exc:
            raise RuntimeError(
                f"expert {self.name!r}: endpoint {self.base_url} answered HTTP {exc.status_code}: "
                + _one_line(str(exc))[:200]
            ) from exc

    def _distribution(self, completion: Any, letters: str) -> np.ndarray:
        choice = completion.choices[0]
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        for position in content or []:
            if letter_of(position.token, letters) is None:
                continue
            alternatives = {alt.token: alt.logprob for alt in position.top_logprobs or []}
            alternatives.setdefault(position.token, position.logprob)  # servers may omit the chosen token
            p = np.zeros(len(letters))
            for token, logprob in alternatives.items():
                letter = letter_of(token, letters)
                if letter is not None:
                    p[letters.index(letter)] += math.exp(logprob)
            return p / p.sum()
        letter = parse_answer_letter(choice.message.content or "", letters)
        if letter is None:
            warnings.warn(
                f"expert {self.name!r}: reply {choice.message.content!r} names no option of {letters}; "
                "using the uniform distribution",
                stacklevel=3,
            )
            return np.full(len(letters), 1.0 / len(letters))
        return np.eye(len(letters))[letters.index(letter)]

    def sends_records_to(self) -> str:
        """Where the inputs this expert answers go: its endpoint (a site must allow it)."""
        return self.base_url

    def to_record(self) -> dict[str, Any]:
        """What the experts file holds: the endpoint and the request settings, never the key."""
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> OpenAIChatExpert:
        return cls(**{name: record[name] for name in _RECORD_FIELDS})

    def predict_proba(self, X: Sequence[Any]) -> np.ndarray:
        questions = as_questions(X, self.name)
        rows = []
        for question in questions:
            p = self._distribution(self._complete(question), question.letters)
            rows.append((1.0 - self.smoothing) * p + self.smoothing / len(p))
        return check_probabilities(np.array(rows).reshape(len(questions), -1), self.name, len(questions))


_RECORD_FIELDS = ("base_url", "model", "name", "timeout", "max_retries", "logprobs", "top_logprobs",
                  "max_tokens", "smoothing", "system_prompt", "cost", "site", "api_key_env")
