"""Which BIG-bench tasks the offline language models answer above chance, measured on a held-out
split: each task's examples (options shuffled, ``fedens.data.bigbench``) in a seeded order, the
first ``--select`` of them to choose the prompt form (the options listed in the prompt, where the
task lists them, or not) and the option normalisation (summed or mean log-likelihood), the next
``--heldout`` to report. A task counts as above chance for a model when the held-out
accuracy's 95% bootstrap interval lies wholly above both chance and the majority answer.
Calibrated (tasks whose questions all offer the same answers, e.g. yes / no): a per-answer bias
that gives the selection split its own share of each right answer, applied to the held-out split.

    .venv/bin/python experiments/lm_tasks/measure.py [--select 40] [--heldout 120] [--models ...]

Prompts are BIG-bench's own (task prefix, input and output prefixes, choices where the task
appends them), zero-shot, with each option scored as the prompt's continuation. Scores are kept
in a score cache (``--cache``), so a second run reads them back; results go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from fedens.data.bigbench import TASKS, bigbench_task
from fedens.experts import OFFLINE_MODELS, CausalLMExpert
from fedens.experts.prompted_teachers import prior_bias
from fedens.files import write_atomic
from fedens.runs.intervals import accuracy_interval


def option_scores(expert: CausalLMExpert, questions: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each question's (summed log-likelihoods, token counts), scored in groups of one option count."""
    out: list = [None] * len(questions)
    for count in sorted({len(q.options) for q in questions}):
        idx = [i for i, q in enumerate(questions) if len(q.options) == count]
        loglik, lengths = expert.option_log_likelihoods([questions[i] for i in idx])
        for k, i in enumerate(idx):
            out[i] = (loglik[k], lengths[k])
    return out


def answers(scores: list, normalisation: str) -> np.ndarray:
    return np.array([int(np.argmax(ll / n if normalisation == "mean" else ll)) for ll, n in scores])


def calibrated_answers(questions: list, labels: np.ndarray, scores: list, normalisation: str,
                       select: slice, heldout: slice) -> np.ndarray | None:
    """Held-out answers after a per-answer bias that gives the selection split's questions its own
    share of each right answer (``prior_bias``); None for a task whose questions offer different
    answers (the bias is per answer text)."""
    answer_set = sorted(questions[0].options)
    if any(sorted(q.options) != answer_set for q in questions):
        return None
    def matrix(part: slice) -> np.ndarray:  # rows over answer_set, softmax of the normalised scores
        rows = []
        for q, (ll, n) in zip(questions[part], scores[part], strict=True):
            z = ll / n if normalisation == "mean" else ll
            z = np.exp(z - z.max())
            rows.append([z[q.options.index(a)] / z.sum() for a in answer_set])
        return np.asarray(rows)
    right = [answer_set.index(q.options[y]) for q, y in zip(questions[select], labels[select], strict=True)]
    share = (np.bincount(right, minlength=len(answer_set)) + 1) / (len(right) + len(answer_set))
    bias = prior_bias(matrix(select), share)
    chosen = (np.log(np.clip(matrix(heldout), 1e-12, None)) + bias).argmax(axis=1)
    return np.array([q.options.index(answer_set[c]) for q, c in zip(questions[heldout], chosen, strict=True)])


def majority_accuracy(questions: list, labels: np.ndarray, select: slice, heldout: slice) -> float:
    """Accuracy of always answering the right option most common on the selection split (by its
    text), where a held-out question offers it; chance otherwise."""
    right = Counter(q.options[y] for q, y in zip(questions[select], labels[select], strict=True))
    common = right.most_common(1)[0][0]
    hits = [(1.0 if q.options[y] == common else 0.0) if common in q.options else 1 / len(q.options)
            for q, y in zip(questions[heldout], labels[heldout], strict=True)]
    return float(np.mean(hits))


def measure(expert: CausalLMExpert, name: str, n_select: int, n_heldout: int) -> dict:
    """One task's row: the prompt form and normalisation chosen on the selection split, the
    held-out accuracy raw and calibrated, chance and the majority answer."""
    listed = bigbench_task(name)
    forms = [listed] + ([bigbench_task(name, list_choices=False)] if listed.choices_listed else [])
    order = np.random.default_rng(0).permutation(len(listed.questions))
    select = slice(0, min(n_select, len(order) // 3))
    heldout = slice(select.stop, min(select.stop + n_heldout, len(order)))
    labels = listed.labels[order[: heldout.stop]]  # the same in every form
    candidates = []  # (selection accuracy, earlier first, form, normalisation)
    for task in forms:
        picked = option_scores(expert, [task.questions[i] for i in order[select]])
        for norm in ("sum", "mean"):
            accuracy = (answers(picked, norm) == labels[select]).mean()
            candidates.append((accuracy, -len(candidates), task, norm))
    _, _, task, chosen = max(candidates, key=lambda c: c[:2])
    questions = [task.questions[i] for i in order[: heldout.stop]]
    scores = option_scores(expert, questions)
    correct = answers(scores[heldout], chosen) == labels[heldout]
    chance = float(np.mean([1 / len(q.options) for q in questions[heldout]]))
    majority = majority_accuracy(questions, labels, select, heldout)
    row = {"model": expert.name, "task": name, "normalisation": chosen,
           "form": "listed" if task.choices_listed else "unlisted", "heldout": int(correct.size),
           "chance": chance, "majority": majority, **scored("raw", correct, chance, majority)}
    calibrated = calibrated_answers(questions, labels, scores, chosen, select, heldout)
    if calibrated is not None:
        row.update(scored("calibrated", calibrated == labels[heldout], chance, majority))
    return row


def scored(kind: str, correct: np.ndarray, chance: float, majority: float) -> dict:
    interval = accuracy_interval(correct)
    return {f"{kind}_accuracy": float(correct.mean()), f"{kind}_interval": interval,
            f"{kind}_above_chance": bool(interval[0] > max(chance, majority))}


def markdown(rows: list[dict], models: list[str]) -> str:
    """One row per task: chance, majority and each model's held-out accuracy, raw / calibrated."""
    def cell(row: dict, kind: str) -> str:
        if f"{kind}_accuracy" not in row:
            return "–"
        lo, hi = row[f"{kind}_interval"]
        mark = "**" if row[f"{kind}_above_chance"] else ""
        how = f" ({row['form']}, {row['normalisation']})" if kind == "raw" else ""
        return f"{mark}{row[f'{kind}_accuracy']:.3f}{mark} [{lo:.2f}, {hi:.2f}]{how}"
    columns = " | ".join(f"{m} raw | {m} calibrated" for m in models)
    head = f"| task | n | chance | majority | {columns} |"
    lines = [head, "| --- " * (4 + 2 * len(models)) + "|"]
    by = {(r["model"], r["task"]): r for r in rows}
    for task in dict.fromkeys(r["task"] for r in rows):
        first = next(r for r in rows if r["task"] == task)
        cells = [cell(by[(m, task)], k) for m in models if (m, task) in by for k in ("raw", "calibrated")]
        lines.append(f"| {task} | {first['heldout']} | {first['chance']:.3f} | {first['majority']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", type=int, default=40, help="examples per task to choose on")
    parser.add_argument("--heldout", type=int, default=120, help="examples per task to report on (at most)")
    parser.add_argument("--models", nargs="+", default=sorted(OFFLINE_MODELS), choices=sorted(OFFLINE_MODELS))
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    parser.add_argument("--cache", default="outputs/lm_tasks/scores.sqlite")
    parser.add_argument("--out", default="outputs/lm_tasks/results.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)

    rows, speed = [], {}
    for model in args.models:
        expert = CausalLMExpert(model_path=model, name=model, prompt_format="raw", cache_path=args.cache)
        expert.load()
        seconds = 0.0
        for name in args.tasks:
            start, before = time.perf_counter(), expert.scored
            rows.append(measure(expert, name, args.select, args.heldout))
            seconds += time.perf_counter() - start if expert.scored > before else 0.0
            r = rows[-1]
            print(f"{model:22s} {name:34s} {r['normalisation']:4s} {r['form']:8s} n={r['heldout']:3d} "
                  f"raw {r['raw_accuracy']:.3f} calibrated {r.get('calibrated_accuracy', float('nan')):.3f} "
                  f"chance {r['chance']:.3f} majority {r['majority']:.3f}", flush=True)
        if expert.scored:
            speed[model] = {"questions_scored": expert.scored, "seconds": seconds,
                            "questions_per_minute": 60 * expert.scored / seconds}
    write_atomic(args.out, json.dumps({"rows": rows, "speed": speed, "select": args.select,
                                       "heldout": args.heldout}, indent=1))
    print(markdown(rows, args.models))
    for model, s in speed.items():
        print(f"{model}: {s['questions_scored']} questions scored in {s['seconds']:.0f} s "
              f"({s['questions_per_minute']:.0f} / min)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
