"""Multiple-choice questions: the input type of the language-model experts."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class MultipleChoiceQuestion:
    """A question with 2 to 26 answer options, labelled A, B, C, ... in prompts.

    ``answer`` is the index of the correct option when known (for evaluation);
    experts never see it.

    Examples
    --------
    >>> q = MultipleChoiceQuestion("2 + 2 =", ["3", "4"], answer=1)
    >>> print(q.prompt())
    2 + 2 =
    A. 3
    B. 4
    """

    question: str
    options: tuple[str, ...]
    answer: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"question must be a non-empty string, got {self.question!r}")
        if not 2 <= len(self.options) <= len(LETTERS):
            raise ValueError(f"a question needs 2 to 26 options, got {len(self.options)}: {self.question!r}")
        if not all(isinstance(o, str) and o.strip() for o in self.options):
            raise ValueError(f"options must be non-empty strings, got {self.options!r}")
        if self.answer is not None and not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer must index one of {len(self.options)} options, got {self.answer!r}")

    @property
    def letters(self) -> str:
        """The option labels, ``"ABCD"`` for four options."""
        return LETTERS[: len(self.options)]

    def prompt(self) -> str:
        """The question followed by one ``"A. option"`` line per option."""
        lines = [f"{letter}. {option}" for letter, option in zip(self.letters, self.options, strict=True)]
        return "\n".join([self.question.strip(), *lines])


def as_questions(X: Sequence[Any], expert: str) -> list[MultipleChoiceQuestion]:
    """Coerce ``X`` (questions or mappings with keys question/options[/answer]) to questions.

    All questions must have the same number of options, so that the expert's
    output is an array (n, C).
    """
    if isinstance(X, (str, bytes, Mapping, MultipleChoiceQuestion)):
        raise TypeError(f"expert {expert!r} takes a sequence of questions, got one {type(X).__name__}")
    questions = []
    for i, item in enumerate(X):
        if isinstance(item, MultipleChoiceQuestion):
            questions.append(item)
        elif isinstance(item, Mapping):
            questions.append(MultipleChoiceQuestion(**item))
        else:
            raise TypeError(
                f"expert {expert!r}: input {i} must be a MultipleChoiceQuestion or a mapping with keys "
                f"question/options, got {type(item).__name__}"
            )
    if not questions:
        raise ValueError(f"expert {expert!r}: got no questions")
    counts = sorted({len(q.options) for q in questions})
    if len(counts) > 1:
        raise ValueError(f"expert {expert!r}: questions must all have one number of options, got {counts}")
    return questions
