"""Non-private diagnostic of a pate_mnist run: reads every site's cached teachers
and the released labels, and prints how the noise-free votes relate to them.

It opens all sites' files at once, which no party of a real deployment can do:
it is for studying the method on this machine, never part of the pipeline.

    .venv/bin/python experiments/pate_mnist/diagnose_teachers.py outputs/pate_mnist/<date_time>
"""

import sys
from pathlib import Path

import numpy as np
import torch

from fedens.data.mnist import load_mnist
from fedens.experts.teachers import TeacherCNNs

run = Path(sys.argv[1])
torch.set_num_threads(2)
released = np.load(run / "federation" / "released_labels.npz")
labels, answered = released["labels"], released["answered"]
_, _, X_test, y_test = load_mnist()
queries, truth = X_test[: len(labels)], y_test[: len(labels)]
votes = sum(TeacherCNNs.load(p).votes(queries) for p in sorted(run.glob("sites/site_*/teachers.pt")))
teachers = int(votes[0].sum())
plurality, top = votes.argmax(axis=1), votes.max(axis=1)
strong = top >= 0.8 * teachers
print(f"teachers {teachers}, queries {len(labels)}, answered {answered.sum()}")
print(f"noise-free plurality accuracy: all queries {(plurality == truth).mean():.3f}, "
      f"answered {(plurality == truth)[answered].mean():.3f}, "
      f"top count >= 80% of teachers ({strong.sum()} queries) {(plurality == truth)[strong].mean():.3f}")
print(f"released label accuracy {(labels == truth)[answered].mean():.3f}; "
      f"released label = noise-free plurality on {(labels == plurality)[answered].mean():.3f} of answered")
print(f"median top-vote share: all queries {np.median(top) / teachers:.3f}, "
      f"answered {np.median(top[answered]) / teachers:.3f}")
