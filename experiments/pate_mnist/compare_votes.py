"""Non-private diagnostic of a pate_mnist run: how other ways for the teachers to vote
would label the first queries, noise-free and under GNMax noise (mean of 20 draws).

Like diagnose_teachers.py it opens every site's teachers and shards at once, which no
party of a deployment can do: it is for choosing a method on this machine, and only
its conclusions go into a configuration.

    .venv/bin/python experiments/pate_mnist/compare_votes.py outputs/pate_dirichlet [queries]

Schemes: ``hard`` (the pipeline's votes), ``soft`` (sum of softmax vectors),
``abstain<τ`` (a teacher less sure than τ does not vote), ``prior τ`` (logit
adjustment by the shard's label prior, ``experts.prior_correction=τ``).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fedens.data.mnist import load_mnist
from fedens.experts.teachers import TeacherCNNs, label_prior_shift
from fedens.federation.votes.sites import teacher_seed, teacher_shards

run = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 640
cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
teacher_dir = Path(cfg.experts.cache_dir) if cfg.experts.cache_dir else run / "sites"
torch.set_num_threads(2)
_, _, X_test, y_test = load_mnist()
queries, truth = X_test[:n], y_test[:n]  # query_selection=first
logits, shards = [], []
for site in range(cfg.federation.num_sites):
    teachers = TeacherCNNs.load(teacher_dir / f"site_{site}" / "teachers.pt")
    y = np.load(run / "sites" / f"site_{site}" / "data.npz")["y"]
    shards += [y[p] for p in teacher_shards(len(y), teachers.num_teachers, teacher_seed(cfg.seed, site))]
    with torch.no_grad():
        logits.append(teachers.logits(queries).numpy())
logits = np.concatenate(logits)  # (T, n, C)
T, C = len(logits), logits.shape[-1]
probs = torch.softmax(torch.as_tensor(logits), -1).numpy()


def histogram(labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    votes = np.zeros((n, C))
    for t in range(T):
        np.add.at(votes, (np.arange(n), labels[t]), 1.0 if weights is None else weights[t])
    return votes


schemes = {"hard": histogram(logits.argmax(-1)), "soft": probs.sum(0)}
for tau in (0.5, 0.7, 0.9):
    schemes[f"abstain<{tau:g}"] = histogram(logits.argmax(-1), probs.max(-1) >= tau)
for strength in (0.5, 1.0, 1.5):
    shift = label_prior_shift(shards, C, strength)[:, None]
    schemes[f"prior {strength:g}"] = histogram((logits + shift).argmax(-1))
rng = np.random.default_rng(0)
print(f"{T} teachers, {n} queries; label accuracy (answering every query)")
SIGMAS = (20, 40, 60)
print(f"{'scheme':12s} {'noise-free':>10s} {'mean top':>9s}" + "".join(f"{f'σ={s}':>8s}" for s in SIGMAS))
for name, votes in schemes.items():
    noisy = [np.mean([((votes + rng.normal(0, s, votes.shape)).argmax(1) == truth).mean() for _ in range(20)])
             for s in SIGMAS]
    print(f"{name:12s} {(votes.argmax(1) == truth).mean():10.3f} {votes.max(1).mean():9.1f}"
          + "".join(f"{a:8.3f}" for a in noisy))
