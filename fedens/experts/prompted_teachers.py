"""Private in-context teachers (PromptPATE, Duan et al. 2023; DP-ICL, Wu et al. 2024): a language
model prompted with a small set of one site's labelled examples per teacher, the sets disjoint,
so that one record changes one teacher's prompt and so at most one vote.

A teacher's prompt is its examples, each ``Review: <text>\\nSentiment: <answer>``, then the query
in the same form without the answer (inside the language model's prompt format: by default
``Question: ...\\nAnswer:``); its vote is the answer the model finds likeliest. Small
models favour one answer word whatever the text, so each teacher is calibrated, from its own
prompt and public inputs only (its vote still depends on its examples alone):

* ``"prior"``: the per-class bias that makes the teacher's mean distribution on the public
  ``calibration_texts`` equal ``prior`` (uniform if None), found by prior matching;
* ``"content_free"``: its distribution divided by its distribution on a content-free query
  (``N/A``; Zhao et al. 2021, "Calibrate before use");
* ``"none"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    calibrate: Literal["prior", "content_free", "none"] = "content_free"
    calibration_texts: Sequence[str] = ()
    prior: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"calibrate must be one of {list(CALIBRATIONS)}, got {self.calibrate!r}")
        if not self.examples:
            raise ValueError("PromptedTeachers needs at least one teacher")
        if self.calibrate == "prior" and not len(self.calibration_texts):
            raise ValueError("calibrate='prior' needs public calibration_texts")
        self._bias: dict[int, np.ndarray] = {}

    @classmethod
    def from_prompt(cls, lm: Any, examples: Sequence[Sequence[tuple[str, int]]],
                    prompt: Mapping[str, Any]) -> PromptedTeachers:
        """The teachers a run's prompt settings describe (``answers``, ``max_chars``, ``calibrate``,
        ``calibration_texts``, ``prior``: JSON, as the sites get them)."""
        return cls(lm, examples, tuple(prompt["answers"]), max_chars=prompt.get("max_chars"),
                   calibrate=prompt.get("calibrate", "content_free"),
                   calibration_texts=tuple(prompt.get("calibration_texts") or ()), prior=prompt.get("prior"))

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
        if self.calibrate == "prior":
            if teacher not in self._bias:
                public = self.lm.predict_proba(self.questions(teacher, list(self.calibration_texts)))
                self._bias[teacher] = prior_bias(np.asarray(public), self.prior)
            P = _softmax(np.log(np.clip(P, 1e-12, None)) + self._bias[teacher])
        elif self.calibrate == "content_free":
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


CALIBRATIONS = ("prior", "content_free", "none")


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def prior_bias(P: np.ndarray, prior: Sequence[float] | None = None, steps: int = 100) -> np.ndarray:
    """The log-space bias ``b`` with ``mean(softmax(log P + b)) == prior`` (uniform if None) on
    the rows of ``P``: each step moves ``b`` by log(prior) - log(current mean)."""
    target = np.full(P.shape[1], 1 / P.shape[1]) if prior is None else np.asarray(prior, dtype=np.float64)
    logp, b = np.log(np.clip(P, 1e-12, None)), np.zeros(P.shape[1])
    for _ in range(steps):
        b += np.log(target) - np.log(_softmax(logp + b).mean(axis=0))
    return b - b.mean()


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


def teacher_examples(texts: Sequence[str], labels: np.ndarray, num_teachers: int, shots: int,
                     seed: int) -> list[list[tuple[str, int]]]:
    """Each teacher's (text, class) examples from one site's records (:func:`disjoint_examples`)."""
    return [[(str(texts[i]), int(labels[i])) for i in shard]
            for shard in disjoint_examples(labels, num_teachers, shots, seed)]
