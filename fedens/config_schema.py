"""Config schemas: the rules a composed config must pass before anything is written or spent.

A :class:`Schema` is data: a list of :class:`Rule`, each naming a key, a test of its value and
what is expected. The run frame checks the frame's schema, each pipeline's and each component's
(a combiner class declares its own keys) in one pass; the first rule that fails raises
:class:`ConfigError` with one line naming the key, the value and what is allowed. This module
is a bottom layer: it imports nothing from fedens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, value and what is allowed."""


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool, not nan or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


Test = Callable[[Any, DictConfig], bool]
Text = str | Callable[[DictConfig], str]


@dataclass(frozen=True)
class Rule:
    """``key``'s value must pass ``ok(value, cfg)``; ``expected`` says what passes (text, or a
    function of the config for bounds that are other keys); ``when`` limits the rule to some
    configs (another key's choice)."""

    key: str
    ok: Test
    expected: Text
    when: Callable[[DictConfig], bool] | None = None

    def check(self, cfg: DictConfig) -> None:
        if self.when is not None and not self.when(cfg):
            return
        value = OmegaConf.select(cfg, self.key)
        try:
            good = bool(self.ok(value, cfg))
        except (TypeError, ValueError, KeyError, AttributeError):
            good = False
        if not good:
            expected = self.expected(cfg) if callable(self.expected) else self.expected
            raise ConfigError(f"invalid {self.key}={value!r}: expected {expected}")


class Schema(tuple):  # type: ignore[type-arg]
    """Rules checked in order: ``Schema(rules).check(cfg)``; schemas add up with ``+``."""

    def __new__(cls, rules: Iterable[Rule] = ()) -> Schema:
        return super().__new__(cls, tuple(rules))

    def __add__(self, other: Iterable[Rule]) -> Schema:  # type: ignore[override]
        return Schema((*self, *other))

    def check(self, cfg: DictConfig) -> None:
        for rule in self:
            rule.check(cfg)


# --- the usual rules -------------------------------------------------------------------------


Bound = int | str | Callable[[DictConfig], int]


def integer(key: str, lo: Bound = 1, hi: Bound | None = None, *, note: str = "",
            when: Callable[[DictConfig], bool] | None = None) -> Rule:
    """An integer >= ``lo`` (and <= ``hi``); a bound given as a string is that key's value, one
    given as a function is its value for the config (a count read from the data)."""

    def bound(b: Bound | None, cfg: DictConfig) -> Any:
        if callable(b):
            return b(cfg)
        return OmegaConf.select(cfg, b) if isinstance(b, str) else b

    def described(b: Bound, cfg: DictConfig) -> str:
        return f"{b}={bound(b, cfg)}" if isinstance(b, str) else str(bound(b, cfg))

    def ok(v: Any, cfg: DictConfig) -> bool:
        return is_int(v) and v >= bound(lo, cfg) and (hi is None or v <= bound(hi, cfg))

    def expected(cfg: DictConfig) -> str:
        text = (f"an integer >= {described(lo, cfg)}" if hi is None
                else f"an integer in [{described(lo, cfg)}, {described(hi, cfg)}]")
        return text + (f" ({note})" if note else "")

    return Rule(key, ok, expected, when)


def positive(key: str, what: str = "a number > 0", *,
             when: Callable[[DictConfig], bool] | None = None) -> Rule:
    """A finite number > 0."""
    return Rule(key, lambda v, cfg: is_num(v) and v > 0, what, when)


def fraction(key: str, lo_open: bool = True, hi_open: bool = True, note: str = "", *,
             when: Callable[[DictConfig], bool] | None = None) -> Rule:
    """A number in (0, 1), [0, 1), (0, 1] or [0, 1]."""
    lo_ok = (lambda v: v > 0) if lo_open else (lambda v: v >= 0)
    hi_ok = (lambda v: v < 1) if hi_open else (lambda v: v <= 1)
    text = (f"a {'number' if lo_open else 'fraction'} in {'(' if lo_open else '['}0, 1"
            f"{')' if hi_open else ']'}" + (f" ({note})" if note else ""))
    return Rule(key, lambda v, cfg: is_num(v) and lo_ok(v) and hi_ok(v), text, when)


def one_of(key: str, options: Iterable[Any], *, when: Callable[[DictConfig], bool] | None = None,
           show: Callable[[list[Any]], str] | None = None) -> Rule:
    """One of ``options`` (read when checked: a registry filled later is seen whole)."""

    def expected(cfg: DictConfig) -> str:
        listed = list(options)
        return show(listed) if show else f"one of {listed}"

    return Rule(key, lambda v, cfg: v in list(options), expected, when)


def bounded(key: str, lo: float, hi: float, note: str = "", *,
            when: Callable[[DictConfig], bool] | None = None) -> Rule:
    """A finite number in [``lo``, ``hi``]."""
    return Rule(key, lambda v, cfg: is_num(v) and lo <= v <= hi,
                f"a number in [{lo:g}, {hi:g}]" + (f" ({note})" if note else ""), when)


def checked(key: str, problem: Callable[[DictConfig], str], expected: str = "", *,
            when: Callable[[DictConfig], bool] | None = None) -> Rule:
    """``problem(cfg)`` is "" when ``key`` is fine, else what is wrong with it (a check another
    module owns: a strategy's parameters, the sites a data set can fill); the message gives
    ``expected`` and then the problem."""
    return Rule(key, lambda v, cfg: not problem(cfg),
                lambda cfg: f"{expected}: {problem(cfg)}" if expected else problem(cfg), when)
