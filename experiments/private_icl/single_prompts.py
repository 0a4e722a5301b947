"""Single-prompt baselines on Amazon fine-food reviews (great / other): SmolLM2-135M-Instruct
zero-shot and with k labelled examples in its prompt (what one teacher of a private in-context
ensemble is), each raw and calibrated, and the non-private vote of the k-shot prompts.
Calibration sets the decision threshold on the margin log p(positive) - log p(negative) so that
a public calibration set of training reviews (disjoint from the demonstrations) gets its own
share of "great"; it uses public labels only.

    .venv/bin/python experiments/private_icl/single_prompts.py [--test 500] [--shots 4] [--seeds 3]

Scores are kept in a score cache (``--cache``), so a second run reads them back.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from fedens.data.fine_foods import fine_food_reviews
from fedens.experts import CausalLMExpert, MultipleChoiceQuestion
from fedens.runs.intervals import accuracy_interval

WORD = {"great": "positive", "other": "negative"}


def clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def demonstrations(train: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """k short training reviews, half of each label, in a shuffled order."""
    short = train[train["review"].str.len() < 160]
    picked = [short[short["score"] == s].sample(k // 2, random_state=seed) for s in WORD]
    return pd.concat(picked).sample(frac=1, random_state=seed) if k else short.iloc[:0]


def margins(expert: CausalLMExpert, shots: pd.DataFrame, reviews: pd.Series) -> np.ndarray:
    pairs = zip(shots["review"], shots["score"], strict=True)
    prefix = "".join(f"Review: {r}\nSentiment: {WORD[s]}\n\n" for r, s in pairs)
    questions = [MultipleChoiceQuestion(f"{prefix}Review: {clip(r)}\nSentiment:", ["positive", "negative"])
                 for r in reviews]
    loglik, _ = expert.option_log_likelihoods(questions)
    return loglik[:, 0] - loglik[:, 1]


def scores(predicted_great: np.ndarray, great: np.ndarray) -> tuple[float, list[float], float]:
    correct = predicted_great == great
    balanced = 0.5 * (predicted_great[great].mean() + (~predicted_great[~great]).mean())
    return float(correct.mean()), accuracy_interval(correct), float(balanced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=500, help="test reviews scored (of 1,000)")
    parser.add_argument("--calibration", type=int, default=200,
                        help="public training reviews to calibrate on")
    parser.add_argument("--shots", type=int, default=4, help="labelled examples in a k-shot prompt (even)")
    parser.add_argument("--seeds", type=int, default=3, help="k-shot prompts, each with other examples")
    parser.add_argument("--cache", default="outputs/private_icl/scores.sqlite", help="the score cache")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    train, test = fine_food_reviews()
    test = test.iloc[:args.test]
    great = (test["score"] == "great").to_numpy()
    expert = CausalLMExpert(name="smollm2", cache_path=args.cache).load()
    print(f"fine-food reviews: {len(test)} test, {great.mean():.3f} great; SmolLM2-135M-Instruct")
    print(f"{'prompt':22s} {'raw acc':>8s} {'calibrated acc [95% CI]':>26s} {'balanced':>9s}")
    acc, interval, balanced = scores(np.ones_like(great), great)
    row = f"{acc:8.3f} [{interval[0]:.3f}, {interval[1]:.3f}]      {balanced:9.3f}"
    print(f"{'majority class':22s} {'':8s} {row}")
    votes = []  # each k-shot prompt's calibrated answers
    for k, seed in [(0, 0)] + [(args.shots, s) for s in range(args.seeds)]:
        shots = demonstrations(train, k, seed)
        rest = train.drop(shots.index)
        calibration = rest.sample(args.calibration, random_state=100 + seed)
        started = time.perf_counter()
        m_cal, m_test = margins(expert, shots, calibration["review"]), margins(expert, shots, test["review"])
        seconds = time.perf_counter() - started
        threshold = np.quantile(m_cal, 1 - (calibration["score"] == "great").mean())
        raw, _, _ = scores(m_test > 0, great)
        acc, interval, balanced = scores(m_test > threshold, great)
        name = "zero-shot" if k == 0 else f"{k}-shot, examples {seed}"
        print(f"{name:22s} {raw:8.3f} {acc:8.3f} [{interval[0]:.3f}, {interval[1]:.3f}]      {balanced:9.3f}"
              f"   ({seconds:.0f} s)", flush=True)
        if k:
            votes.append(m_test > threshold)
    if len(votes) > 1:  # the non-private vote of the k-shot prompts: the ceiling of a DP vote over them
        acc, interval, balanced = scores(np.mean(votes, axis=0) > 0.5, great)
        name = f"vote of {len(votes)} prompts"
        print(f"{name:22s} {'':8s} {acc:8.3f} [{interval[0]:.3f}, {interval[1]:.3f}]      {balanced:9.3f}")
    print(f"score cache: {expert.scored} prompts scored, {expert.cached} read back ({args.cache})")


if __name__ == "__main__":
    main()
