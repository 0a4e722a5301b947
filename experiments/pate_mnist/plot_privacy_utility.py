"""Privacy-utility plot of a pate_mnist sweep, with the papers' points marked.

    .venv/bin/python experiments/pate_mnist/plot_privacy_utility.py multirun/pate_sigma2 [out.png]

Reads every results.json under the sweep folder; x is epsilon at delta=1e-5
(data-dependent, filled; data-independent guarantee, hollow), y the student's
test accuracy.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedens.pate import ANCHORS  # noqa: E402

sweep = Path(sys.argv[1])
out = Path(sys.argv[2]) if len(sys.argv) > 2 else sweep / "privacy_utility.png"
points = []
for path in sorted(sweep.glob("**/results.json")):
    r = json.loads(path.read_text())
    if r["metrics"]["test_accuracy"] is None:
        continue
    dd = r["privacy"]["data_dependent"]
    sigma2 = r["privacy"]["mechanism"].split("'sigma2': ")[1].split("}")[0]
    points.append((float(sigma2), dd["epsilon_data_dependent"], r["privacy"]["epsilon_max"],
                   r["metrics"]["test_accuracy"], r["metrics"]["queries_answered"]))
if not points:
    sys.exit(f"no finished pate_mnist runs under {sweep}")
points.sort()
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.plot([p[1] for p in points], [p[3] for p in points], "o", color="C0",
        label="fedens: ε data-dependent")
ax.plot([p[2] for p in points], [p[3] for p in points], "o", color="C0", mfc="none",
        label="fedens: ε data-independent (guarantee)")
for sigma2, dd, di, acc, _ in points:  # one grey line joins the two epsilons of a run
    ax.plot([dd, di], [acc, acc], color="0.7", lw=0.8, zorder=0)
    ax.annotate(f"σ2={sigma2:g}", (di, acc), textcoords="offset points", xytext=(5, -3), fontsize=7)
for key, marker in (("scalable_pate_2018", "*"), ("pate_2017", "s")):
    a = ANCHORS[key]
    ax.plot([a["epsilon"]], [a["student_accuracy"]], marker, color="C3", markersize=11,
            label=f"{key.replace('_', ' ')} (published, data-dependent)")
ax.axhline(ANCHORS["non_private"]["student_accuracy"], color="k", lw=0.8, ls=":",
           label="non-private (published)")
ax.set_xlabel("ε at δ = 1e-5")
ax.set_ylabel("student test accuracy")
ax.set_title("PATE on MNIST across 10 sites (Confident-GNMax, T=200, σ1=150)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"{len(points)} runs -> {out}")
for sigma2, dd, di, acc, answered in points:
    print(f"sigma2={sigma2:g}  answered {answered}/640  eps_dd {dd:.2f}  eps_di {di:.2f}  student {acc:.3f}")
