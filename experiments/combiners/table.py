"""Every combiner on a network of experts, next to its baselines: accuracy, NLL, calls and cost.

    .venv/bin/python experiments/combiners/table.py --task digits --seeds 0 1 2 3 4
    .venv/bin/python experiments/combiners/table.py --task mnist --seeds 0 1

Three networks per task: A, the quickstart's 10 cheap specialists (5 sklearn
families, each trained on a label-skewed slice of the public split); B, A plus
one larger MLP trained on all of the public split (the best, most expensive
expert); C, B plus a logistic regression on all of the public split (a cheap,
weaker generalist). Combiners are trained
centrally (non-federated, non-private) on the private split, which is also
the validation split of the cascades; the test split is only evaluated. Rows
marked "DP" are the quickstart's federated DP-SGD (10 sites, Dirichlet(0.5),
10 FedAvg rounds, epsilon=8 per site) emulated in-process (federated.py).
Cost per call of an expert = multiply-accumulates of one forward pass
(fedens.experts.count_macs). Writes results_<task>.md next to this file.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # single-threaded: tiny torch ops on shared cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from federated import federate
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from fedens.combiners import (
    CascadeCombiner,
    GatedEnsemble,
    LogLinearPool,
    MeanCombiner,
    StackingCombiner,
    VoteCombiner,
    choose_grid,
    pretrain_router,
    train_gated_ensemble,
)
from fedens.combiners.cascade import GRIDS
from fedens.data import Split, TaskData, load_task
from fedens.data.mnist import load_mnist
from fedens.data.partition import dirichlet_partition
from fedens.experts import (
    SklearnExpert,
    expert_outputs,
    train_expert_network,
    train_generalist_expert,
    with_mac_costs,
)

HERE = Path(__file__).resolve().parent
FAMILIES = ["logreg", "knn", "tree", "naive_bayes", "mlp"]  # fedens/conf/experts/mixed_families.yaml
TASKS = {  # public / private sizes (MNIST: subsampled from the 60,000 training images), generalist
    "digits": {"generalist": (256, 256), "generalist_iter": 500, "central": (64,), "central_iter": 2000},
    "mnist": {"public": 6000, "private": 6000, "generalist": (128,), "generalist_iter": 100,
              "central": (256,), "central_iter": 100},
}
ROUTER = {"dim": 16, "epochs": 50, "lr": 0.05, "batch_size": 32}  # fedens/conf/combiner/gated_ensemble.yaml
CENTRAL_LRS = (0.05, 0.01, 0.005)  # central rows: the router's lr chosen on held-out private records
# name -> (GatedEnsemble options, pretrain the router on public data first, also train centrally)
CONFIGS = {
    "NLL (as in the quickstart)": ({}, False, True),
    "weights score-CE; router NLL, public pretraining, top-2 in training": (
        {"weights_objective": "score_ce", "train_top_k": 2}, True, True),
    "both score-CE, public pretraining": (
        {"weights_objective": "score_ce", "router_objective": "score_ce"}, True, True),
}
PRETRAIN_EPOCHS = 20


def load(task: str, seed: int) -> TaskData:
    if task == "digits":
        return load_task("digits", public_fraction=0.3, test_fraction=0.25, seed=seed)
    X, y, X_test, y_test = load_mnist()
    idx = np.random.default_rng(seed).permutation(len(y))
    pub, priv = idx[: TASKS[task]["public"]], idx[TASKS[task]["public"]:][: TASKS[task]["private"]]
    return TaskData("mnist", 10, Split(X[pub], y[pub]), Split(X[priv], y[priv]), Split(X_test, y_test))


@dataclass
class Row:
    acc: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def scores(Q: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    nll = -np.log(np.clip(Q[np.arange(len(y)), y], 1e-12, None)).mean()
    return float((Q.argmax(1) == y).mean()), float(nll)


def choose_lr(initial: GatedEnsemble, X: np.ndarray, P: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The central learning rate whose router is most accurate on a held-out 20% of (X, P, y)
    after training on the rest; the test split is never looked at."""
    idx = np.random.default_rng(seed).permutation(len(y))
    hold, fit = idx[: len(y) // 5], idx[len(y) // 5:]

    def held_out_accuracy(lr: float) -> float:
        model = train_gated_ensemble(copy.deepcopy(initial), X[fit], P[fit], y[fit], ROUTER["epochs"], lr,
                                     ROUTER["batch_size"], seed)
        return float((model.combine(P[hold], X[hold], "router").argmax(1) == y[hold]).mean())

    return max(CENTRAL_LRS, key=held_out_accuracy)


def gated_rows(add, name: str, model: GatedEnsemble, P: np.ndarray, X: np.ndarray, costs: np.ndarray,
               note: str | None = None) -> None:
    K = len(costs)
    add(f"learned weights, {name}", model.combine(P, X, "weights"), K, costs.sum(), note)
    add(f"router dense, {name}", model.combine(P, X, "router"), K, costs.sum(), note)
    for k in (1, 2):
        gates = model.gates(X, "router", top_k=k)
        cost = float(((gates > 0) @ costs).mean())  # the k experts each query is routed to
        add(f"router top-{k}, {name}", np.einsum("nk,nkc->nc", gates, P), k, cost, note)


def run_network(rows: dict[str, Row], data: TaskData, experts: list, outputs: list[np.ndarray], seed: int,
                dp: bool) -> None:
    """Append this seed's numbers for every combiner on ``experts`` (their ``outputs`` on the
    public, private and test splits) to ``rows``."""
    costs = np.array([e.cost for e in experts])
    K, (pub, val, test) = len(experts), (data.public, data.private, data.test)
    P_pub, P_val, P = outputs

    def add(name: str, Q: np.ndarray, calls: float, cost: float, note: str | None = None) -> None:
        acc, nll = scores(Q, test.y)
        row = rows.setdefault(name, Row())
        row.acc.append(acc), row.nll.append(nll), row.calls.append(float(calls)), row.cost.append(float(cost))
        if note is not None:
            row.notes.append(note)

    single_test = [(P[:, k].argmax(1) == test.y).mean() for k in range(K)]
    best = int(np.argmax(single_test))
    add("best single expert (by test accuracy)", P[:, best], 1, costs[best])
    add("uniform mean", MeanCombiner().combine(P), K, costs.sum())
    add("plurality vote", VoteCombiner().combine(P), K, costs.sum())
    add("log-linear pool (NLL)", LogLinearPool().fit(P_val, val.y, seed=seed).combine(P), K, costs.sum())
    add("stacking: temperature + weight (NLL)", StackingCombiner().fit(P_val, val.y, seed=seed).combine(P), K,
        costs.sum())

    sites = dirichlet_partition(val.y, 10, seed, alpha=0.5) if dp else []
    for name, (options, pretrain, central) in CONFIGS.items():
        initial = GatedEnsemble.with_public_projection(pub.X, K, ROUTER["dim"], seed, **options)
        if pretrain:
            pretrain_router(initial, pub.X, P_pub, pub.y, PRETRAIN_EPOCHS, ROUTER["lr"], ROUTER["batch_size"],
                            seed)
        if central:
            lr = choose_lr(initial, val.X, P_val, val.y, seed)
            model = train_gated_ensemble(copy.deepcopy(initial), val.X, P_val, val.y, ROUTER["epochs"], lr,
                                         ROUTER["batch_size"], seed)
            gated_rows(add, name, model, P, test.X, costs, f"lr {lr:g}")
        if dp:
            model = federate(initial, val.X, P_val, val.y, sites, seed)
            gated_rows(add, f"{name}, DP", model, P, test.X, costs)

    target = max((P_val[:, k].argmax(1) == val.y).mean() for k in range(K))  # best single, on validation
    # the same target with one standard error of that accuracy to spare, so that a cascade that only
    # just reaches it on validation queries does not fall short on new ones
    spare = min(1.0, target + np.sqrt(target * (1 - target) / len(val.y)))
    grid_name, _ = choose_grid(P_val, val.y, costs, seed=seed)
    pooled_grid, _ = choose_grid(P_val, val.y, costs, seed=seed, pooled=True)
    for label, per_expert, grid, pooled, aim in (
            ("shared threshold", False, None, False, target),
            ("per-expert thresholds, fine grid", True, None, False, target),
            ("per-expert thresholds, grid by 2-fold CV", True, grid_name, False, target),
            ("per-expert thresholds, grid by 2-fold CV, target + 1 s.e.", True, grid_name, False, spare),
            ("pooled stages, per-expert thresholds, grid by 2-fold CV", True, pooled_grid, True, target)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missed target shows in the table
            cascade = CascadeCombiner(costs, pooled=pooled).calibrate(
                P_val, val.y, target_accuracy=aim, per_expert=per_expert, grid=GRIDS.get(grid))
        add(f"cascade, {label} (validation target: best single)", cascade.combine(P),
            cascade.expert_calls_per_query(P), cascade.cost_per_query(P), grid)


def fmt_rows(rows: dict[str, Row], best_cost: float) -> list[str]:
    lines = ["| combiner | accuracy (mean) | accuracy per seed | NLL | expert calls / query | "
             "cost / query (MACs) | cost / best single's |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        notes = [f" ({n})" for n in r.notes] if r.notes else [""] * len(r.acc)
        per_seed = " ".join(f"{a:.3f}{n}" for a, n in zip(r.acc, notes, strict=True))
        lines.append(f"| {name} | {np.mean(r.acc):.3f} | {per_seed} | "
                     f"{np.mean(r.nll):.3f} | {np.mean(r.calls):.2f} | {np.mean(r.cost):,.0f} | "
                     f"{np.mean(r.cost) / best_cost:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-dp", action="store_true", help="skip the emulated federated DP rows")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    cfg = TASKS[args.task]
    networks: dict[str, dict[str, Row]] = {"A": {}, "B": {}, "C": {}}
    central = Row()
    for seed in args.seeds:
        data = load(args.task, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn convergence notes on tiny slices
            specialists = with_mac_costs(train_expert_network(data.public, data.num_classes, 10, FAMILIES,
                                                              3, 1.0, 0.05, seed))
            big = train_generalist_expert(data.public, data.num_classes, seed, cfg["generalist"],
                                          cfg["generalist_iter"])
            small = SklearnExpert(LogisticRegression(max_iter=1000).fit(data.public.X, data.public.y),
                                  data.num_classes, name="logreg-all", family="logreg")
            big, small = with_mac_costs([big, small])
            X_all = np.concatenate([data.public.X, data.private.X])
            y_all = np.concatenate([data.public.y, data.private.y])
            model = MLPClassifier(cfg["central"], max_iter=cfg["central_iter"], random_state=seed)
            model.fit(X_all, y_all)
        central.acc.append(float(model.score(data.test.X, data.test.y)))
        experts = specialists + [small, big]
        outputs = [expert_outputs(experts, s.X) for s in (data.public, data.private, data.test)]
        for key, idx in (("A", list(range(10))), ("B", [*range(10), 11]), ("C", list(range(12)))):
            run_network(networks[key], data, [experts[i] for i in idx], [P[:, idx] for P in outputs], seed,
                        dp=key == "A" and not args.no_dp)
        print(f"seed {seed} done [{time.monotonic() - started:.0f} s]", flush=True)
    elapsed = time.monotonic() - started
    sizes = f"public {len(data.public)}, private {len(data.private)}, test {len(data.test)}"
    lines = [f"## {args.task}: seeds {' '.join(map(str, args.seeds))} ({sizes}); {elapsed:.0f} s", ""]
    for key, title in (("A", "network A: the quickstart's 10 specialists"),
                       ("B", f"network B: A + one MLP {cfg['generalist']} trained on all public data"),
                       ("C", "network C: B + a logistic regression trained on all public data")):
        rows = networks[key]
        best_cost = float(np.mean(rows["best single expert (by test accuracy)"].cost))
        lines += [f"### {title}", "", *fmt_rows(rows, best_cost), ""]
    lines += [f"centralized MLP {cfg['central']} on public + private data (non-private reference): "
              f"accuracy {np.mean(central.acc):.3f} ({' '.join(f'{a:.3f}' for a in central.acc)})", ""]
    text = "\n".join(lines)
    print(text)
    out = args.out or HERE / f"results_{args.task}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
