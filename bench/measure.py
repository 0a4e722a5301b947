"""Interleaved repeats, medians and ratios: the one way every section of the benchmark times."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Time every case ``repeats`` times, one round of all cases after another (a change in the
    machine's load hits every case alike); per case the median seconds, the repeats and the
    load average before each round."""
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    loads = []
    for _ in range(repeats):
        loads.append(os.getloadavg()[0])
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            seconds[name].append(time.perf_counter() - started)
    return {name: {"median_s": statistics.median(s), "repeats_s": [round(x, 6) for x in s],
                   "load_1min": [round(x, 2) for x in loads]} for name, s in seconds.items()}


def rate(timing: dict[str, Any], items: int) -> float:
    """Items per second at the median time."""
    return items / timing["median_s"]


def verdict(value: float, target: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = value >= target if higher_is_better else value <= target
    return {"value": value, "target": target, "met": bool(met),
            "direction": ">=" if higher_is_better else "<="}


def say(line: str) -> None:
    print(line, flush=True)
