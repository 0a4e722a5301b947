"""``fedens summarize DIR``: the runs under a directory (a multirun sweep, or ``outputs/``) as one
table, their mean ± sd over seeds, and accuracy against ε with the baselines beside it.

Reads only the runs' ``results.json`` and Hydra's ``.hydra/overrides.yaml``; computes nothing a
run did not report, except means and standard deviations over seeds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: a run's columns: (title, how to read it from results.json)
COLUMNS: dict[str, str] = {
    "DP": "metrics.test_accuracy",
    "public only": "private_data.public_only_accuracy",
    "no DP": "private_data.federated_nonprivate_accuracy",
    "DP - public only": "private_data.gain_over_public_only",
    "top-k": "metrics.router_topk_accuracy",
    "weights": "metrics.weights_accuracy",
    "uniform": "baselines.uniform_mean_accuracy",
    "best single": "baselines.best_single_expert_accuracy",
    "personalised": "personalization.chosen_mean_gain",
    "eps_max": "privacy.epsilon_max",
    "wall s": "timing.wall_s",
}
_SEED = re.compile(r"^seed=")


def _get(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    lines = (line.lstrip("- ").strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("hydra.")]


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per ``results.json`` under ``root``: its overrides, seed, ε and the columns, sorted by
    ε, setting and seed."""
    rows = []
    for path in sorted(root.glob("**/results.json"), key=lambda p: str(p)):
        results = json.loads(path.read_text())
        overrides = _overrides(path.parent)
        row = {"run": " ".join(overrides) or path.parent.name,
               "setting": " ".join(o for o in overrides if not _SEED.match(o)) or "(defaults)",
               "seed": results.get("seed"),
               "epsilon": _get(results, "privacy.epsilon_target"),
               "gain_ci95": _get(results, "private_data.gain_over_public_only_ci95")}
        row.update({title: _get(results, key) for title, key in COLUMNS.items()})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["epsilon"] is None, r["epsilon"] or 0, r["setting"],
                                       r["seed"] if isinstance(r["seed"], int) else -1, r["run"]))


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def _table(head: list[str], lines: Iterable[list[Any]]) -> str:
    """Plain text columns: the first left-aligned, the rest right-aligned."""
    cells = [head, *([_text(v) for v in line] for line in lines)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in cells)


def runs_table(rows: list[dict[str, Any]]) -> str:
    """Every run: the columns, the gain with its bootstrap interval."""
    def gain(row: dict[str, Any]) -> Any:
        value, ci = row["DP - public only"], row["gain_ci95"]
        if value is None or not ci:
            return value
        return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return _table(["run", *COLUMNS], ([r["run"], *(gain(r) if c == "DP - public only" else r[c]
                                                   for c in COLUMNS)] for r in rows))


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting (the overrides but the seed): n, and mean and sd (ddof=1) over its seeds of
    each column that every one of its runs reported."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    summary = []
    for setting, members in groups.items():
        entry: dict[str, Any] = {"setting": setting, "epsilon": members[0]["epsilon"], "n": len(members)}
        for column in COLUMNS:
            values = [m[column] for m in members]
            if all(isinstance(v, (int, float)) for v in values):
                entry[column] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1
                                 else None)
        summary.append(entry)
    return sorted(summary, key=lambda e: (e["epsilon"] is None, e["epsilon"] or 0, e["setting"]))


def seeds_table(summary: list[dict[str, Any]]) -> str:
    shown = [c for c in COLUMNS if c not in ("eps_max", "wall s")]

    def pm(value: Any) -> str:
        if value is None:
            return "-"
        mean, sd = value
        return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"
    return _table(["setting", "n", *shown],
                  ([e["setting"], e["n"], *(pm(e.get(c)) for c in shown)] for e in summary))


#: the plot's lines: (column, label, matplotlib style)
PLOT_LINES = (("DP", "router (dense), federated DP", "o-"), ("top-k", "router top-k, federated DP", "s--"),
              ("public only", "public only (ε = 0)", "m--"), ("no DP", "federated, no DP (ε = ∞)", "c--"),
              ("uniform", "uniform mean", "b:"), ("best single", "best single expert", "r:"))


def plottable(summary: list[dict[str, Any]]) -> bool:
    """The settings differ only in ε (and seed), with at least two ε: a plot against ε."""
    epsilons = [e["epsilon"] for e in summary]
    return None not in epsilons and len(set(epsilons)) == len(epsilons) >= 2


def plot_against_epsilon(summary: list[dict[str, Any]]) -> bytes:
    """PNG: mean ± sd over seeds of each line against ε (one setting per ε)."""
    from fedens.runs.plots import new_figure, png_bytes

    epsilons = [e["epsilon"] for e in summary]
    if not plottable(summary):
        raise ValueError("a plot against ε needs runs that differ only in privacy.epsilon and seed, "
                         f"with at least two ε; got settings {[e['setting'] for e in summary]}")
    fig, ax = new_figure()
    for column, label, style in PLOT_LINES:
        points = [(e["epsilon"], *e[column]) for e in summary if e.get(column)]
        if not points:
            continue
        x, mean, sd = zip(*points, strict=True)
        ax.errorbar(x, mean, yerr=[s or 0.0 for s in sd], fmt=style, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    return png_bytes(fig, ax, "ε per site (δ = 1e-5)", "test accuracy (mean ± sd over seeds)")
