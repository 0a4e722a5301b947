"""scripts/bench lm [REPEATS] [MODEL ...]: language-model experts' questions per minute on 4-option
questions, for each offline model (default: all of ``OFFLINE_MODELS``: SmolLM2-135M-Instruct and
Gemma 3 270M) on this machine, as ratios to the per-option path measured in the same run
(interleaved repeats, medians; the load average beside them).

Rows: ``per_option`` (each option re-encodes the prompt: the baseline), ``shared_prefix`` (the
prompt once, its key/value cache reused by every option), the same with lettered options (single
tokens: one forward pass per batch of questions), and a warm output cache (the scores read back
from SQLite). Each on zero-shot prompts and on 3-shot prompts (three worked questions first).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedens.experts import OFFLINE_MODELS, CausalLMExpert, MultipleChoiceQuestion

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
            ("China", "Beijing"), ("India", "New Delhi"), ("Turkey", "Ankara"), ("Hungary", "Budapest"),
            ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Iran", "Tehran"),
            ("Iraq", "Baghdad"), ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"),
            ("South Korea", "Seoul")]
SHOTS = ("Question: What is the capital of Australia?\nAnswer: Canberra\n\n"
         "Question: What is the capital of Brazil?\nAnswer: Brasilia\n\n"
         "Question: What is the capital of Morocco?\nAnswer: Rabat\n\n")


def questions(prefix: str) -> list[MultipleChoiceQuestion]:
    out = []
    for i, (country, capital) in enumerate(CAPITALS):
        others = [CAPITALS[(i + k) % len(CAPITALS)][1] for k in (5, 11, 17)]
        options = [*others[: i % 4], capital, *others[i % 4:]]
        out.append(MultipleChoiceQuestion(f"{prefix}What is the capital of {country}?", options, i % 4))
    return out


def lettered(qs: list[MultipleChoiceQuestion]) -> list[MultipleChoiceQuestion]:
    return [dataclasses.replace(q, question=q.prompt(), options=("A", "B", "C", "D")) for q in qs]


def bench(model: str, repeats: int) -> None:
    base = CausalLMExpert(model_path=model, name=model).load()
    cache = Path(tempfile.mkdtemp(prefix="fedens-bench-lm-")) / "scores.sqlite"
    sets = {"0-shot": questions(""), "3-shot": questions(SHOTS)}
    warm = dataclasses.replace(base, cache_path=cache)
    for qs in sets.values():
        warm.option_log_likelihoods(qs)  # fills the cache
    rows = {
        "per_option (baseline)": lambda qs: dataclasses.replace(base, scoring="per_option"),
        "shared_prefix": lambda qs: dataclasses.replace(base),
        "shared_prefix, lettered options": lambda qs: dataclasses.replace(base),
        "warm output cache": lambda qs: warm,
    }
    times = {(s, r): [] for s in sets for r in rows}
    for _ in range(repeats):  # interleaved: load changes affect every row alike
        for s, qs in sets.items():
            for r, make in rows.items():
                expert, items = make(qs), (lettered(qs) if "lettered" in r else qs)
                started = time.perf_counter()
                expert.option_log_likelihoods(items)
                times[(s, r)].append(time.perf_counter() - started)
    print(f"scripts/bench lm: {model}, {len(CAPITALS)} questions x 4 options, median of "
          f"{repeats}; ratios to per_option in the same run ({os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()})")
    for s in sets:
        baseline = statistics.median(times[(s, "per_option (baseline)")])
        for r in rows:
            median = statistics.median(times[(s, r)])
            print(f"  {s}  {r:32s} {len(CAPITALS) * 60 / median:9.0f} questions/min  "
                  f"{baseline / median:6.1f} x")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(repeats: int, models: list[str]) -> None:
    for model in models:
        if model not in OFFLINE_MODELS:
            sys.exit(f"scripts/bench lm: unknown model {model!r}; expected one of {sorted(OFFLINE_MODELS)}")
    for model in models:
        bench(model, repeats)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, sys.argv[2:] or sorted(OFFLINE_MODELS, reverse=True))
