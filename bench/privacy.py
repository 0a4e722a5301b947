"""Noisy aggregation, its accounting and DP-SGD, each against a baseline in the same run.

- ``gnmax``: GNMax / Confident-GNMax releases over 250 teachers x 10 classes, in queries per
  second, beside the bare numpy noisy argmax (no checks, no Release) as the baseline.
- ``pate_analysis``: the data-dependent analysis (``analyze_pate``, vectorised over queries,
  keeping the sum as the loop does, not every query's cost) against a per-query loop of the
  same analysis (``gnmax_rdp_data_dependent`` per row, summed, converted once); both give the
  same epsilon, which is checked.
- ``dpsgd``: Opacus DP-SGD against non-private training of the same router (the quickstart's
  initial combiner) on the same records, per epoch.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import interleaved, rate, say, verdict

TEACHERS, CLASSES, SIGMA, DELTA = 250, 10, 40.0, 1e-5


def _votes(n: int, seed: int = 0) -> np.ndarray:
    """Vote histograms of 250 teachers over 10 classes, agreement from unanimous to split."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(TEACHERS, rng.dirichlet(np.full(CLASSES, 0.3), size=n))


def gnmax(quick: bool, repeats: int) -> dict[str, Any]:
    from fedens.privacy import ConfidentGNMax, GNMax

    n = 200_000 if quick else 1_000_000
    votes, rng = _votes(n), np.random.default_rng(1)
    plain, confident = GNMax(sigma=SIGMA), ConfidentGNMax(threshold=150.0, sigma1=100.0, sigma2=SIGMA)
    times = interleaved({
        "numpy noisy argmax (baseline)": lambda: (votes + rng.normal(0.0, SIGMA, votes.shape)).argmax(axis=1),
        "GNMax.release": lambda: plain.release(votes, rng),
        "ConfidentGNMax.release": lambda: confident.release(votes, rng),
    }, repeats)
    base = rate(times["numpy noisy argmax (baseline)"], n)
    rows = {name: {"queries_per_s": rate(t, n), "ratio_to_baseline": rate(t, n) / base, **t}
            for name, t in times.items()}
    out = {"queries": n, "teachers": TEACHERS, "classes": CLASSES, "rows": rows,
           "target": verdict(rows["GNMax.release"]["queries_per_s"], 5_000_000)}
    for name, row in rows.items():
        say(f"  gnmax  {name:32s} {row['queries_per_s']:12,.0f} queries/s  {row['ratio_to_baseline']:5.2f} x")
    return out


def _loop_analysis(votes: np.ndarray, sigma: float, threshold: float | None = None,
                   sigma1: float | None = None, answered: np.ndarray | None = None) -> float:
    """The same data-dependent analysis one query at a time (what a reference implementation
    does): per-query RDP summed over queries, converted to epsilon once."""
    from fedens.privacy.pate_analysis import (
        DEFAULT_ORDERS,
        confident_gnmax_rdp_data_dependent,
        gnmax_rdp_data_dependent,
        rdp_to_epsilon,
    )

    total = np.zeros_like(DEFAULT_ORDERS)
    for i, row in enumerate(votes):
        if threshold is None:
            total += gnmax_rdp_data_dependent(row, sigma)
        else:
            total += confident_gnmax_rdp_data_dependent(row, threshold, sigma1, sigma, bool(answered[i]))
    return rdp_to_epsilon(total, DEFAULT_ORDERS, DELTA)[0]


def pate_analysis(quick: bool, repeats: int) -> dict[str, Any]:
    from fedens.privacy import ConfidentGNMax
    from fedens.privacy.pate_analysis import DEFAULT_ORDERS, analyze_pate

    n_vec, n_loop = (20_000, 2_000) if quick else (100_000, 10_000)
    votes = _votes(n_vec, seed=2)
    threshold, sigma1 = 150.0, 100.0
    answered = ConfidentGNMax(threshold=threshold, sigma1=sigma1, sigma2=SIGMA).release(
        votes, np.random.default_rng(3)).answered
    few, few_answered = votes[:n_loop], answered[:n_loop]
    # the two ways agree (on the loop's queries) before either is timed
    for kw in ({}, {"threshold": threshold, "sigma_threshold": sigma1, "answered": few_answered}):
        vectorised = analyze_pate(few, sigma=SIGMA, delta=DELTA, **kw).epsilon_data_dependent
        looped = _loop_analysis(few, SIGMA, kw.get("threshold"), kw.get("sigma_threshold"),
                                kw.get("answered"))
        assert np.isclose(vectorised, looped, rtol=1e-9), (kw.keys(), vectorised, looped)
    times = interleaved({
        "GNMax, per-query loop (baseline)": lambda: _loop_analysis(few, SIGMA),
        "GNMax, analyze_pate": lambda: analyze_pate(votes, sigma=SIGMA, delta=DELTA, per_query=False),
        "Confident-GNMax, per-query loop": lambda: _loop_analysis(few, SIGMA, threshold, sigma1,
                                                                  few_answered),
        "Confident-GNMax, analyze_pate": lambda: analyze_pate(
            votes, sigma=SIGMA, delta=DELTA, threshold=threshold, sigma_threshold=sigma1, answered=answered,
            per_query=False),
    }, repeats)
    sizes = {name: (n_loop if "loop" in name else n_vec) for name in times}
    rows = {name: {"queries": sizes[name], "queries_per_s": rate(t, sizes[name]), **t}
            for name, t in times.items()}
    kinds = ("GNMax", "Confident-GNMax")
    for kind in kinds:
        loop = rows[f"{kind}, per-query loop" + (" (baseline)" if kind == "GNMax" else "")]["queries_per_s"]
        rows[f"{kind}, analyze_pate"]["ratio_to_loop"] = rows[f"{kind}, analyze_pate"]["queries_per_s"] / loop
    slowest = min(rows[f"{k}, analyze_pate"]["ratio_to_loop"] for k in kinds)
    out = {"orders": len(DEFAULT_ORDERS), "rows": rows, "target": verdict(slowest, 10.0)}
    for name, row in rows.items():
        ratio = f"{row['ratio_to_loop']:6.1f} x the loop" if "ratio_to_loop" in row else ""
        say(f"  pate_analysis  {name:34s} {row['queries_per_s']:10,.0f} queries/s  {ratio}")
    return out


def dpsgd(quick: bool, repeats: int) -> dict[str, Any]:
    """The quickstart's router, trained for the same epochs on every private record, with and
    without Opacus (the quickstart's batch size and learning rate, noise multiplier 1, clipping
    1; one torch thread, as at a site)."""
    import torch
    from torch.utils.data import DataLoader

    from fedens.combiners.training import combiner_dataset, make_optimizer, run_epochs
    from fedens.pipelines.ensemble import prepare
    from fedens.privacy.dpsgd import make_private_training
    from fedens.runs import compose

    torch.set_num_threads(1)
    cfg = compose(["experiment=quickstart"])
    with tempfile.TemporaryDirectory(prefix="fedens-bench-") as work:
        prepared = prepare(cfg, Path(work))
    task, initial = prepared["task"], prepared["initial"]
    X, P, y = task.private.X, prepared["outputs"]["private"], task.private.y
    data = combiner_dataset(X, P, y)
    epochs, batch, lr = (2 if quick else 5), int(cfg.combiner.batch_size), float(cfg.combiner.lr)

    def nonprivate() -> None:
        model = copy.deepcopy(initial)
        loader = DataLoader(data, batch_size=batch, shuffle=True)
        run_epochs(model, make_optimizer(model, lr), loader, epochs)

    def private() -> None:
        model = copy.deepcopy(initial)
        p = make_private_training(model, make_optimizer(model, lr), data, batch_size=batch,
                                  noise_multiplier=1.0, max_grad_norm=1.0)
        run_epochs(p.module, p.optimizer, p.loader, epochs)

    times = interleaved({"non-private (baseline)": nonprivate, "Opacus DP-SGD": private}, repeats)
    ratio = times["Opacus DP-SGD"]["median_s"] / times["non-private (baseline)"]["median_s"]
    out = {"records": len(y), "epochs": epochs, "batch_size": batch,
           "trainable_parameters": sum(p.numel() for p in initial.parameters() if p.requires_grad),
           "rows": times, "target": verdict(ratio, 2.0, higher_is_better=False)}
    for name, t in times.items():
        say(f"  dpsgd  {name:24s} {t['median_s'] / epochs * 1e3:8.1f} ms/epoch")
    say(f"  dpsgd  DP-SGD / non-private  {ratio:.2f} x")
    return out
