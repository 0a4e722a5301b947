"""The private-ICL table from runs' results.json: one row per run, with its ε and baselines.

    .venv/bin/python experiments/private_icl/table.py outputs/private_icl/*/results.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HEADER = ["teachers calibrated", "mechanism", "ε per site", "DP answers [95% CI]", "balanced",
          "student: prompt / classifier", "prompt, coin labels", "zero-shot", "mean / best teacher",
          "non-private vote", "majority"]


def f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def row(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    d, m, b, p = r["data"], r["metrics"], r["baselines"], r["privacy"]
    lo, hi = m["test_accuracy_interval"]
    prior = d.get("prior")
    students = f"{f(m['prompt_student_accuracy'])} / {f(m['classifier_student_accuracy'])}"
    return [d["calibrate"] + (f" {prior['great']:g}/{prior['other']:g}" if prior else ""),
            re.sub(r"\d+\.\d{4,}", lambda x: f"{float(x.group()):.4g}", p["mechanism"].split(", every")[0]),
            f(p["epsilon_max"]),
            f"{f(m['test_accuracy'])} [{lo:.3f}, {hi:.3f}]",
            f(m["balanced_accuracy"]), students, f(b["public_prompt_random_labels_accuracy"]),
            f(b["zero_shot_accuracy"]),
            f"{f(b['mean_teacher_accuracy'])} / {f(b['best_teacher_accuracy'])}",
            f(b["nonprivate_vote_accuracy"]), f(b["majority_class_accuracy"])]


def main() -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("| --- | --- |" + " ---: |" * (len(HEADER) - 2))
    for name in sys.argv[1:]:
        print("| " + " | ".join(row(Path(name))) + " |")


if __name__ == "__main__":
    main()
