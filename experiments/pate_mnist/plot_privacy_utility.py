"""Privacy-utility plot of a pate_mnist sweep, with the papers' points marked.

    .venv/bin/python experiments/pate_mnist/plot_privacy_utility.py multirun/pate_sigma2 \
        --out experiments/pate_mnist/privacy_utility.png --extra outputs/pate_frugal

Reads every results.json under the sweep folder (and under each --extra run,
drawn in another colour); x is epsilon at delta=1e-5, y the student's test
accuracy. Each run has up to three epsilons, joined by a grey line: the
guarantee each site's budget holds (worst case, every query answered: cross),
the data-independent epsilon of the answered queries (Papernot-style: hollow)
and the data-dependent one (filled; Confident-GNMax only).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedens.pipelines.pate import ANCHORS  # noqa: E402


def load_runs(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("**/results.json")):
        r = json.loads(path.read_text())
        if r["metrics"]["test_accuracy"] is None:
            continue
        p = r["privacy"]
        sigma = re.search(r"'sigma2?': ([0-9.]+)", p["mechanism"])
        runs.append({"sigma": float(sigma.group(1)), "mechanism": p["mechanism"].split()[0],
                     "worst": p["epsilon_worst_case_max"], "answered_di": p["epsilon_max"],
                     "dd": (p.get("data_dependent") or {}).get("epsilon_data_dependent"),
                     "accuracy": r["metrics"]["test_accuracy"], "answered": r["metrics"]["queries_answered"],
                     "queries": r["metrics"]["queries"]})
    return sorted(runs, key=lambda run: run["sigma"])


def draw(ax, runs: list[dict], color: str, name: str) -> None:
    for i, run in enumerate(runs):
        def label(what: str, first: bool = i == 0) -> str | None:  # one legend entry per kind
            return f"{name}: {what}" if first else None
        ax.plot([run["worst"]], [run["accuracy"]], "x", color=color, label=label("ε guarantee (worst case)"))
        if run["answered"] < run["queries"]:  # else it equals the worst case
            ax.plot([run["answered_di"]], [run["accuracy"]], "o", mfc="none", color=color,
                    label=label("ε data-independent, answered queries"))
        if run["dd"] is not None:
            ax.plot([run["dd"]], [run["accuracy"]], "o", color=color, label=label("ε data-dependent"))
        xs = [x for x in (run["dd"], run["answered_di"], run["worst"]) if x is not None]
        ax.plot([min(xs), max(xs)], [run["accuracy"]] * 2, color="0.75", lw=0.8, zorder=0)
        ax.annotate(f"σ={run['sigma']:g}", (run["worst"], run["accuracy"]), textcoords="offset points",
                    xytext=(5, -3), fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, help="default: <sweep>/privacy_utility.png")
    parser.add_argument("--extra", type=Path, nargs="*", default=[], help="more run folders to mark")
    args = parser.parse_args()
    sweep = load_runs(args.sweep)
    if not sweep:
        sys.exit(f"no finished pate_mnist runs under {args.sweep}")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    draw(ax, sweep, "C0", "σ2 sweep (Confident-GNMax)" if sweep[0]["mechanism"] == "confident_gnmax"
         else "sweep")
    extras = []
    for i, folder in enumerate(args.extra):
        runs = load_runs(folder)
        if not runs:
            sys.exit(f"no finished pate_mnist run under {folder}")
        draw(ax, runs, f"C{i + 2}", folder.name)
        extras += [(folder.name, run) for run in runs]
    for key, marker in (("scalable_pate_2018", "*"), ("pate_2017", "s")):
        a = ANCHORS[key]
        ax.plot([a["epsilon"]], [a["student_accuracy"]], marker, color="C3", markersize=11,
                label=f"{key.replace('_', ' ')} (published, data-dependent)")
    ax.axhline(ANCHORS["non_private"]["student_accuracy"], color="k", lw=0.8, ls=":",
               label="non-private (published)")
    ax.set_xlabel("ε at δ = 1e-5")
    ax.set_ylabel("student test accuracy")
    ax.set_title("PATE on MNIST across 10 sites")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    out = args.out or args.sweep / "privacy_utility.png"
    fig.savefig(out, dpi=120)
    print(f"{len(sweep) + len(extras)} runs -> {out}")
    for name, run in [("sweep", run) for run in sweep] + extras:
        dd = "-" if run["dd"] is None else f"{run['dd']:.2f}"
        print(f"{name}  {run['mechanism']} σ={run['sigma']:g}  answered {run['answered']}/{run['queries']}  "
              f"ε worst case {run['worst']:.2f}  ε answered {run['answered_di']:.2f}  ε data-dependent {dd}  "
              f"student {run['accuracy']:.3f}")


if __name__ == "__main__":
    main()
