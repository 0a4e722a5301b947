"""``pipeline=pate`` (``experiment=pate_mnist``): private experts, PATE across sites.

Sites train teachers on disjoint shards of their own MNIST images; the
coordinator labels a public query pool with Confident-GNMax over the sites'
summed votes (every site's ledger is charged); a student learns from the
released labels and the unlabelled pool. Reported next to the published
anchors, with the data-independent epsilon (the guarantee, from the ledgers)
and the data-dependent epsilon (Papernot et al. 2018), labelled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from fedens.config_schema import Rule, Schema, bounded, checked, integer, is_int, is_num, one_of, positive
from fedens.data import PARTITIONS
from fedens.data.mnist import load_mnist, mnist_problem
from fedens.data.query_selection import QUERY_SELECTIONS, query_order
from fedens.experts.student import StudentConfig, train_student
from fedens.federation import layout as L
from fedens.federation.votes.coordinator import make_pate_server_app, pool_file
from fedens.federation.votes.sites import make_pate_client_app
from fedens.files import npz_bytes, write_atomic
from fedens.runs import Pipeline, RunContext, federation_failure, register_pipeline
from fedens.runs.backends import FlowerApps, federate
from fedens.runs.console import console, fmt
from fedens.runs.results import epsilon_max, site_ledger_summaries

# Published numbers, for comparison only (not measured here).
ANCHORS = {
    "scalable_pate_2018": {"student_accuracy": 0.985, "epsilon": 1.97, "answered": 286, "queries": 640,
                           "source": "Papernot et al. 2018, Scalable Private Learning with PATE, Table 1"},
    "pate_2017": {"student_accuracy": 0.980, "epsilon": 2.04,
                  "source": "Papernot et al. 2017, Semi-supervised Knowledge Transfer (PATE)"},
    "non_private": {"student_accuracy": 0.992, "source": "non-private baseline quoted by both papers"},
}


def _smooth_sensitivity_set(cfg: DictConfig) -> bool:
    return bool(cfg.privacy.get("smooth_sensitivity"))


def _beta_ok(beta: Any, cfg: DictConfig) -> bool:
    return is_num(beta) and beta > 0 and cfg.privacy.smooth_sensitivity.order * (1 - math.exp(-2 * beta)) < 1


PATE_SCHEMA = Schema([
    integer("federation.num_sites"),
    integer("federation.min_sites", 1, "federation.num_sites"),
    positive("federation.round_timeout", "a number of seconds > 0"),
    integer("federation.num_cpus", 1, note="Ray's CPUs in simulation"),
    Rule("privacy.delta", lambda v, cfg: is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    positive("privacy.budget", "a finite number > 0"),
    integer("experts.num_teachers", "federation.num_sites", note="one teacher per site at least"),
    one_of("privacy.mechanism", ("confident_gnmax", "gnmax"), show=lambda o: "'confident_gnmax' or 'gnmax'"),
    positive("privacy.sigma1"), positive("privacy.sigma2"), positive("privacy.threshold"),
    integer("privacy.num_queries", 1, "data.pool_size"),
    integer("privacy.query_batch"),
    one_of("privacy.query_selection", QUERY_SELECTIONS, show=lambda o: f"one of {list(o)}"),
    integer("combiner.hidden"),
    Rule("combiner.channels", lambda v, cfg: len(v) == 2 and all(is_int(c) and c >= 1 for c in v),
         "two integers >= 1 (the student's conv widths)"),
    Rule("data.pool_size", lambda v, cfg: is_int(v) and v >= 1 and v + cfg.data.test_size <= 10000,
         "an integer with pool_size + test_size <= 10000"),
    Rule("privacy.smooth_sensitivity.order", lambda v, cfg: is_num(v) and v > 1, "a number > 1",
         when=_smooth_sensitivity_set),
    positive("privacy.smooth_sensitivity.sigma_ss", when=_smooth_sensitivity_set),
    Rule("privacy.smooth_sensitivity.beta", _beta_ok,
         lambda cfg: "a number > 0 with order * (1 - exp(-2 beta)) < 1 "
                     f"(order={cfg.privacy.smooth_sensitivity.order})", when=_smooth_sensitivity_set),
    bounded("experts.augment.shift_px", 0, 45, "0: off"),
    bounded("experts.augment.rotate_deg", 0, 45, "0: off"),
    bounded("experts.prior_correction", 0, 10, "0: off"),
    positive("experts.train_timeout", "a number of seconds > 0"),
    integer("experts.steps"), integer("experts.batch_size"), integer("combiner.steps"),
    checked("data.name", lambda cfg: mnist_problem(), "the four MNIST IDX files, whole"),  # last: a file read
])


def _mechanism_params(cfg: DictConfig) -> dict[str, float]:
    p = cfg.privacy
    if p.mechanism == "gnmax":
        return {"sigma": float(p.sigma2)}
    return {"threshold": float(p.threshold), "sigma1": float(p.sigma1), "sigma2": float(p.sigma2)}


def teachers_per_site(site_sizes: list[int], num_teachers: int) -> list[int]:
    """Teachers at each site, proportional to its records (largest remainders), at least 1.

    Equal sites get equal shares; with skewed sites a record still lands in exactly
    one teacher's shard, so one record still changes at most one vote.
    """
    sizes = np.asarray(site_sizes, dtype=float)
    if num_teachers < len(sizes):
        raise ValueError(f"{num_teachers} teachers cannot cover {len(sizes)} sites (one each at least)")
    exact = (num_teachers - len(sizes)) * sizes / sizes.sum()
    counts = 1 + np.floor(exact).astype(int)
    for i in np.argsort(-(exact - np.floor(exact)))[: num_teachers - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def prepare(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    X_train, y_train, X_test, y_test = load_mnist()
    params = {k: v for k, v in OmegaConf.to_container(cfg.partition).items() if k != "name"}
    sites = PARTITIONS.split(cfg.partition.name, y_train, cfg.federation.num_sites, cfg.seed, **params)
    for site, records in enumerate(sites):
        folder = L.site_dir(run_dir, site)  # in simulation, stands for the site's own disk
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "data.npz", npz_bytes(X=(X_train[records] * 255).round().astype(np.uint8),
                                                    y=y_train[records]))
    pool, pool_labels = X_test[: cfg.data.pool_size], y_test[: cfg.data.pool_size]
    # the queries first: chosen from the public images alone (pool_labels are only evaluated)
    order = query_order(pool, cfg.privacy.num_queries, cfg.privacy.query_selection, cfg.seed)
    pool, pool_labels = pool[order], pool_labels[order]
    test, test_labels = X_test[-cfg.data.test_size:], y_test[-cfg.data.test_size:]
    L.coordinator_test_path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    pool_file(run_dir / "coordinator" / "pool.npz", pool)
    return {"X_train": X_train, "y_train": y_train, "pool": pool, "pool_labels": pool_labels,
            "test": test, "test_labels": test_labels,
            "teachers": teachers_per_site([len(r) for r in sites], cfg.experts.num_teachers)}


def federation_settings(cfg: DictConfig, run_dir: Path, teachers: list[int]) -> dict[str, Any]:
    e = cfg.experts
    return {
        L.RUN_DIR: str(run_dir), L.SEED: cfg.seed, L.DELTA: float(cfg.privacy.delta),
        L.TASK_SCHEMA: json.dumps({"num_features": 28 * 28, "num_classes": 10}),  # MNIST
        L.BUDGET_EPSILON: float(cfg.privacy.budget), L.MIN_SITES: cfg.federation.min_sites,
        L.ROUND_TIMEOUT: float(cfg.federation.round_timeout), L.TEACHER_TIMEOUT: float(e.train_timeout),
        L.TEACHERS_PER_SITE: json.dumps(teachers),
        L.TEACHER_STEPS: e.steps, L.TEACHER_BATCH: e.batch_size, L.TEACHER_LR: float(e.lr),
        L.TEACHER_CHANNELS: ",".join(str(c) for c in e.channels),
        L.TEACHER_SHIFT: float(e.augment.shift_px), L.TEACHER_ROTATE: float(e.augment.rotate_deg),
        L.TEACHER_PRIOR_CORRECTION: float(e.prior_correction),
        L.TEACHER_CACHE_DIR: str(Path(e.cache_dir).resolve()) if e.cache_dir else "",
        L.POOL_PATH: str(run_dir / "coordinator" / "pool.npz"),
        L.NUM_QUERIES: cfg.privacy.num_queries, L.QUERY_BATCH: cfg.privacy.query_batch,
        L.MECHANISM: cfg.privacy.mechanism, L.MECHANISM_PARAMS: json.dumps(_mechanism_params(cfg)),
        L.SMOOTH_SENSITIVITY: json.dumps(OmegaConf.to_container(cfg.privacy.smooth_sensitivity))
        if cfg.privacy.get("smooth_sensitivity") else "",
        L.MIN_REPLIES: 1,
    }


def _student_config(cfg: DictConfig, steps: int | None = None) -> StudentConfig:
    c = cfg.combiner
    return StudentConfig(steps or c.steps, c.labelled_batch, c.unlabelled_batch, float(c.lr),
                         float(c.confidence), float(c.unlabelled_weight), tuple(c.channels), int(c.hidden))


def run_pate(cfg: DictConfig, run: RunContext) -> dict[str, Any]:
    """Teachers, private labels, the student; results.json's content."""
    run_dir = run.run_dir
    data = prepare(cfg, run_dir)
    console.print(f"data  mnist: {len(data['y_train'])} private images over {cfg.federation.num_sites} "
                  f"sites ({cfg.partition.name}; teachers per site {data['teachers']}), "
                  f"query pool {len(data['pool'])}, student test {len(data['test'])}")
    settings = federation_settings(cfg, run_dir, data["teachers"])
    console.print(f"federation  Flower simulation: {cfg.experts.num_teachers} teachers, "
                  f"{cfg.privacy.num_queries} queries, {cfg.privacy.mechanism} {_mechanism_params(cfg)}")
    federate(cfg, settings, FlowerApps(make_pate_server_app, make_pate_client_app), console.print,
             console.print)
    out = L.federation_dir(run_dir)
    if not (out / "pate.json").is_file():
        raise federation_failure(run_dir, "federation/pate.json")
    outcome = json.loads((out / "pate.json").read_text())
    with np.load(out / "released_labels.npz") as released:
        labels, answered = released["labels"], released["answered"]
    queried = np.arange(len(labels))
    label_accuracy = float((labels[answered] == data["pool_labels"][queried][answered]).mean()) \
        if answered.any() else None

    student_accuracy = student_nll = None
    if answered.any():
        console.print(f"student  training on {int(answered.sum())} released labels + "
                      f"{len(data['pool']) - int(answered.sum())} unlabelled images")
        unlabelled = np.setdiff1d(np.arange(len(data["pool"])), queried[answered])
        student = train_student(data["pool"][queried[answered]], labels[answered],
                                data["pool"][unlabelled], _student_config(cfg), cfg.seed,
                                progress=console.print)
        proba = student.predict_proba(data["test"])
        student_accuracy = float((proba.argmax(axis=1) == data["test_labels"]).mean())
        true = proba[np.arange(len(proba)), data["test_labels"]]
        student_nll = float(-np.log(np.clip(true, 1e-12, None)).mean())
    else:
        console.print("student  not trained: no query was answered (refused by the sites' budgets, "
                      "or every query abstained)")
    central = None
    if cfg.combiner.centralized_reference:
        console.print("reference  the student's CNN on all 60,000 labelled training images (non-private)")
        model = train_student(data["X_train"], data["y_train"], np.zeros((0, 784), np.float32),
                              _student_config(cfg), cfg.seed, progress=console.print)
        central = float((model.predict(data["test"]) == data["test_labels"]).mean())

    per_site = site_ledger_summaries(run_dir, cfg.federation.num_sites, cfg.privacy.budget)
    analysis = outcome["analysis"] or {}
    return {
        "data": {"name": "mnist", "num_sites": cfg.federation.num_sites, "num_classes": 10,
                 "partition": PARTITIONS.describe(cfg.partition),
                 "num_teachers": outcome["teachers"], "teachers_per_site": data["teachers"],
                 "sites_that_trained_teachers": outcome["sites_that_trained_teachers"]},
        "metrics": {"test_accuracy": student_accuracy, "test_nll": student_nll,
                    "answered_label_accuracy": label_accuracy,
                    "queries_answered": outcome["answered"], "queries": outcome["queries"]},
        "baselines": {
            "best_single_expert_accuracy": None, "mean_single_expert_accuracy": None,
            "uniform_mean_accuracy": None, "plurality_vote_accuracy": None,
            "centralized_reference_accuracy": central,
            "note": "teachers never leave their sites and their raw votes are not published, so "
                    "per-teacher and noise-free vote accuracies are not measured",
        },
        "anchors": ANCHORS,
        "cost": {"num_experts": outcome["teachers"], "expert_calls_per_query": float(outcome["teachers"])},
        "privacy": {
            "delta": float(cfg.privacy.delta),
            "epsilon_max": epsilon_max(per_site),
            "epsilon_worst_case_max": epsilon_max(per_site, "epsilon_worst_case"),
            "per_site": per_site,
            "queries_answered": outcome["answered"],
            "queries_refused": outcome["refused"],
            "accounting": "rdp-data-independent",
            "mechanism": f"{cfg.privacy.mechanism} {_mechanism_params(cfg)}, every site charged",
            "data_dependent": {**analysis, "label": "data-dependent (Papernot et al. 2018); "
                               "a bound on these votes, not itself a DP release"} if analysis else {
                "label": "not computed: derived for Confident-GNMax only"},
        },
        "timing": {"federation_s": outcome["seconds"]},
    }


def print_table(results: dict[str, Any]) -> None:
    m, p = results["metrics"], results["privacy"]
    dd = p["data_dependent"]
    table = Table(title="fedens pate_mnist", caption=f"ε at δ={p['delta']:g} per site: worst = every "
                  "query answered (what the budget guards), DI = data-independent on the answered ones "
                  "(Papernot-style), DD = data-dependent (a bound on these votes)")
    for col in ("", "student acc", "answered", "ε worst", "ε DI", "ε DD", "label acc"):
        table.add_column(col, justify="right")
    table.add_row("fedens, this run", fmt(m["test_accuracy"]), f"{m['queries_answered']}/{m['queries']}",
                  fmt(p["epsilon_worst_case_max"], ".2f"), fmt(p["epsilon_max"], ".2f"),
                  fmt(dd.get("epsilon_data_dependent"), ".2f"), fmt(m["answered_label_accuracy"]))
    a = results["anchors"]
    table.add_row("Scalable PATE 2018 †", fmt(a["scalable_pate_2018"]["student_accuracy"]),
                  "286/640", "-", "-", "1.97", "-")
    table.add_row("PATE 2017 †", fmt(a["pate_2017"]["student_accuracy"]), "-", "-", "-", "2.04", "-")
    table.add_row("non-private, all labels",
                  fmt(results["baselines"]["centralized_reference_accuracy"]), "-", "-", "-", "-", "-")
    console.print(table)
    console.print("† published numbers, not measured here")
    if released := dd.get("smooth_sensitivity_release"):
        console.print(f"published data-dependent ε (smooth sensitivity, order {released['order']:g}, "
                      f"β={released['beta']:g}, σ_ss={released['sigma_ss']:g}): "
                      f"{released['epsilon_estimate']:.2f} (the release itself: "
                      f"{released['gnss_rdp']:.3f} RDP at that order)")


@register_pipeline
class PatePipeline(Pipeline):
    """PATE across sites: teachers at the sites, Confident-GNMax labels, a semi-supervised student."""

    name = "pate"
    groups = {"data": ("mnist",), "partition": tuple(PARTITIONS), "experts": ("teacher_cnns",),
              "combiner": ("student",), "privacy": ("confident_gnmax",), "federation": ("simulation",)}
    schema = PATE_SCHEMA

    def run(self, cfg: DictConfig, run: RunContext) -> dict[str, Any]:
        return run_pate(cfg, run)

    def print_report(self, results: dict[str, Any], cfg: DictConfig) -> None:
        print_table(results)
