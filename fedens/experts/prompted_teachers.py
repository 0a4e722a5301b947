"""Private in-context teachers (PromptPATE, Duan et al. 2023; DP-ICL, Wu et al. 2024): a language
model prompted with a small set of one site's labelled examples per teacher, the sets disjoint,
so that one record changes one teacher's prompt and so at most one vote.

A teacher's prompt is its examples, each ``Review: <text>\\nSentiment: <answer>``, then the query
in the same form without the answer; its vote is the answer the model finds likeliest.
``calibrate="content_free"`` divides each teacher's distribution by its distribution on a
content-free query (``N/A``; Zhao et al. 2021, "Calibrate before use"), which uses no label and
no other record, so the vote still depends on that teacher's examples alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedens.experts.multiple_choice import MultipleChoiceQuestion

CONTENT_FREE = "N/A"


def clip(text: str, limit: int | None) -> str:
    """``text`` cut at a word boundary to about ``limit`` characters (None: whole)."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


@dataclass(eq=False)
class PromptedTeachers:
    """One teacher per entry of ``examples`` (its (text, class) pairs), all asking ``lm``
    (a :class:`~fedens.experts.CausalLMExpert`) to choose among ``answers``, one per class."""

    lm: Any
    examples: Sequence[Sequence[tuple[str, int]]]
    answers: tuple[str, ...]
    field: str = "Review"
    answer_field: str = "Sentiment"
    max_chars: int | None = 400
    calibrate: Literal["content_free", "none"] = "content_free"

    def __post_init__(self) -> None:
        if self.calibrate not in ("content_free", "none"):
            raise ValueError(f"calibrate must be 'content_free' or 'none', got {self.calibrate!r}")
        if not self.examples:
            raise ValueError("PromptedTeachers needs at least one teacher")

    @property
    def num_teachers(self) -> int:
        return len(self.examples)

    def prefix(self, teacher: int) -> str:
        return "".join(self.shown(text) + f" {self.answers[c]}\n\n" for text, c in self.examples[teacher])

    def shown(self, text: str) -> str:
        """A text as a prompt shows it, up to its answer."""
        return f"{self.field}: {clip(text, self.max_chars)}\n{self.answer_field}:"

    def questions(self, teacher: int, texts: Sequence[str]) -> list[MultipleChoiceQuestion]:
        prefix = self.prefix(teacher)
        return [MultipleChoiceQuestion(prefix + self.shown(t), self.answers) for t in texts]

    def proba(self, teacher: int, texts: Sequence[str]) -> np.ndarray:
        """Teacher ``teacher``'s distribution over the answers for each text, calibrated."""
        P = np.asarray(self.lm.predict_proba(self.questions(teacher, texts)), dtype=np.float64)
        if self.calibrate == "content_free":
            base = np.asarray(self.lm.predict_proba(self.questions(teacher, [CONTENT_FREE])))[0]
            P = P / np.clip(base, 1e-12, None)
            P /= P.sum(axis=1, keepdims=True)
        return P

    def votes(self, texts: Sequence[str], num_classes: int | None = None) -> np.ndarray:
        """Vote histogram (n, C): how many teachers answer each class for each text."""
        counts = np.zeros((len(texts), num_classes or len(self.answers)), dtype=np.int64)
        for teacher in range(self.num_teachers):
            counts[np.arange(len(texts)), self.proba(teacher, texts).argmax(axis=1)] += 1
        return counts


def disjoint_examples(labels: np.ndarray, num_teachers: int, shots: int, seed: int) -> list[np.ndarray]:
    """Record indices of each teacher's ``shots`` examples: disjoint, drawn by ``seed``; as
    balanced over the classes as the records allow (round robin over a shuffled order per class)."""
    rng = np.random.default_rng(seed)
    if num_teachers * shots > len(labels):
        raise ValueError(f"{num_teachers} teachers x {shots} examples need {num_teachers * shots} records, "
                         f"the site has {len(labels)}")
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    order: list[int] = []
    while any(pools):  # interleave the classes, so that consecutive examples alternate
        for pool in pools:
            if pool:
                order.append(int(pool.pop()))
    picked = np.array(order[: num_teachers * shots])
    return [rng.permutation(picked[t * shots:(t + 1) * shots]) for t in range(num_teachers)]
