"""A question-answering expert (a causal LM, an OpenAI-compatible endpoint) on a table's text
columns: each record becomes one multiple-choice question, ``prompt`` filled in with the record's
text, whose options are ``answers``, one per label of the task in its label order.

``calibrate=True`` (default) fits a per-class bias on the coordinator's public records, which it
holds anyway, so that the expert's log-likelihood of their labels is highest: small LMs favour
some answer words whatever the text, and this is their cheapest fix (one vector, no retraining).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedens.data.rows import TextRows
from fedens.experts.multiple_choice import MultipleChoiceQuestion
from fedens.experts.prompted_teachers import clip
from fedens.experts.registry import EXPERTS, register_expert
from fedens.experts.validation import check_cost, check_probabilities


def prompt_fields(prompt: str) -> list[str]:
    """The ``{column}`` placeholders of a prompt template, in order."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None]
    except ValueError as error:
        raise ValueError(f"prompt {prompt!r} is not a template ({error}): expected text with "
                         "{column} placeholders") from None


@register_expert("prompted")
@dataclass(eq=False)
class PromptedExpert:
    """``inner`` (an adapter answering :class:`MultipleChoiceQuestion`) on a table's text.

    Examples
    --------
    >>> import numpy as np
    >>> from fedens.data.rows import TextRows
    >>> from fedens.experts import CallableExpert
    >>> says_a = CallableExpert(lambda qs: np.tile([0.9, 0.1], (len(qs), 1)), num_classes=2, name="a")
    >>> e = PromptedExpert(says_a, "Review: {review}", ("great", "other"), name="lm", calibrate=False)
    >>> e.predict_proba(TextRows(np.zeros((1, 0)), {"review": np.array(["tasty"])})).round(2)
    array([[0.9, 0.1]])
    """

    inner: Any
    prompt: str
    answers: tuple[str, ...]
    name: str = "prompted"
    calibrate: bool = True
    max_chars: int | None = None  # each text cut at a word to about this many characters (None: whole)
    bias: tuple[float, ...] | None = None  # log-space, per class; fitted by fit_bias
    cost: float = 1.0
    site: str | None = None
    reads_text = True
    fields: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.answers = tuple(str(a) for a in self.answers)
        self.fields = prompt_fields(self.prompt)
        if not self.fields:
            raise ValueError(f"expert {self.name!r}: prompt {self.prompt!r} names no text column: expected "
                             "{column} placeholders")
        if len(self.answers) < 2 or len(set(self.answers)) < len(self.answers):
            raise ValueError(f"expert {self.name!r}: answers {list(self.answers)} must be 2 or more distinct "
                             "options, one per label")
        if self.bias is not None and len(self.bias) != len(self.answers):
            raise ValueError(f"expert {self.name!r}: bias has {len(self.bias)} entries for "
                             f"{len(self.answers)} answers")
        self.cost = check_cost(self.cost, self.name)

    def questions(self, rows: TextRows) -> list[MultipleChoiceQuestion]:
        if not isinstance(rows, TextRows):
            raise TypeError(f"expert {self.name!r} reads text columns {self.fields}: got a "
                            f"{type(rows).__name__}, expected a table task with data.text set")
        if missing := [f for f in self.fields if f not in rows.text]:
            raise ValueError(f"expert {self.name!r}: prompt names column {missing[0]!r}, which is not a text "
                             f"column of the task: expected one of {sorted(rows.text)} (data.text)")
        return [MultipleChoiceQuestion(self.prompt.format(**{f: clip(rows.text[f][i], self.max_chars)
                                                             for f in self.fields}),
                                       self.answers) for i in range(len(rows))]

    def raw_proba(self, rows: TextRows) -> np.ndarray:
        """The inner expert's distribution over the answers, before the bias."""
        return check_probabilities(np.asarray(self.inner.predict_proba(self.questions(rows))), self.name,
                                   len(rows), len(self.answers))

    def predict_proba(self, rows: TextRows) -> np.ndarray:
        P = self.raw_proba(rows)
        if self.bias is not None:
            P = np.exp(np.log(np.clip(P, 1e-12, None)) + np.asarray(self.bias))
            P /= P.sum(axis=1, keepdims=True)
        return check_probabilities(P, self.name, len(rows), len(self.answers))

    def fit_bias(self, rows: TextRows, y: np.ndarray) -> PromptedExpert:
        """Fit :attr:`bias` on labelled public ``rows``: the per-class offset of log p maximising
        the log-likelihood of ``y`` (a concave problem; scipy's L-BFGS)."""
        from scipy.optimize import minimize

        logp = np.log(np.clip(self.raw_proba(rows), 1e-12, None))
        onehot = np.eye(len(self.answers))[y]

        def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
            z = logp + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            nll = -float(np.sum(onehot * np.log(np.clip(p, 1e-12, None)))) / len(y)
            return nll, (p - onehot).mean(axis=0)

        b = minimize(loss, np.zeros(len(self.answers)), jac=True, method="L-BFGS-B").x
        self.bias = tuple(float(v - b.mean()) for v in b)
        return self

    def sends_records_to(self) -> str | None:
        """Where the records this expert reads go: an endpoint's URL, or None (this machine)."""
        return self.inner.sends_records_to() if hasattr(self.inner, "sends_records_to") else None

    def to_record(self) -> dict[str, Any]:
        inner = next((n for n, cls in EXPERTS.items() if type(self.inner) is cls), None)
        if inner is None or not hasattr(self.inner, "to_record"):
            raise TypeError(f"expert {self.name!r}: its {type(self.inner).__name__} has no code-free record: "
                            "use a causal_lm or openai_chat expert")
        return {"name": self.name, "cost": float(self.cost), "site": self.site, "prompt": self.prompt,
                "answers": list(self.answers), "calibrate": self.calibrate, "max_chars": self.max_chars,
                "bias": None if self.bias is None else list(self.bias),
                "inner": {"adapter": inner, **self.inner.to_record()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PromptedExpert:
        inner = dict(record["inner"])
        adapter = EXPERTS.get(inner.pop("adapter"))
        if not hasattr(adapter, "from_record"):
            raise ValueError(f"expert {record['name']!r} asks an adapter this fedens does not load")
        return cls(adapter.from_record(inner), record["prompt"], tuple(record["answers"]),
                   name=record["name"], calibrate=record["calibrate"], max_chars=record.get("max_chars"),
                   bias=None if record["bias"] is None else tuple(record["bias"]), cost=record["cost"],
                   site=record["site"])

