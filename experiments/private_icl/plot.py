"""Accuracy of the private ensemble's answers against ε, from runs' results.json (one per ε, the
same records and teachers), with their bootstrap intervals and the runs' baselines as lines.

    .venv/bin/python experiments/private_icl/plot.py OUT.png outputs/private_icl/*/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedens.files import write_atomic
from fedens.runs.plots import new_figure, png_bytes

BASELINES = {"nonprivate_vote_accuracy": ("non-private vote", "-"),
             "mean_teacher_accuracy": ("mean teacher", "--"),
             "public_prompt_random_labels_accuracy": ("prompt student, coin labels", (0, (1, 4))),
             "zero_shot_accuracy": ("zero-shot", ":"), "majority_class_accuracy": ("majority class", "-.")}


def main(out: str, paths: list[str]) -> None:
    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["privacy"]["epsilon_max"])
    if not runs:
        sys.exit("plot.py: no results.json given")
    eps = [r["privacy"]["epsilon_max"] for r in runs]
    fig, ax = new_figure()
    acc = [r["metrics"]["test_accuracy"] for r in runs]
    lo = [a - r["metrics"]["test_accuracy_interval"][0] for a, r in zip(acc, runs, strict=True)]
    hi = [r["metrics"]["test_accuracy_interval"][1] - a for a, r in zip(acc, runs, strict=True)]
    ax.errorbar(eps, acc, yerr=[lo, hi], marker="o", capsize=3, label="DP answers (95% CI)")
    ax.plot(eps, [r["metrics"]["balanced_accuracy"] for r in runs], marker="s", label="DP answers, balanced")
    ax.plot(eps, [r["metrics"]["prompt_student_accuracy"] for r in runs], marker="^",
            label="prompt student (no further ε)")
    for key, (label, style) in BASELINES.items():
        ax.axhline(runs[0]["baselines"][key], linestyle=style, color="grey", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.set_ylim(0.2, 0.8)
    ax.set_title("private_icl: fine-food reviews, 5 sites x 4 SmolLM2 teachers", fontsize=10)
    write_atomic(out, png_bytes(fig, ax, "ε per site (δ = 1e-5, dp-accounting RDP)", "test accuracy",
                                legend="lower right"))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
