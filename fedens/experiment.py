"""``run(cfg)``: one experiment, composed from the layers below, and its report.

A run directory ends up holding ``results.json`` (DESIGN.md schema, written
last and atomically), ``metrics.csv`` (one row per round), ``accuracy.png``,
the sites' ledgers (``sites/site_<i>/ledger.sqlite``) and, from Hydra, the
resolved config (``.hydra/config.yaml``).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from fedens.combiners import (
    CascadeCombiner,
    GatedEnsemble,
    LogLinearModule,
    MeanCombiner,
    StackingModule,
    VoteCombiner,
    combiner_state,
)
from fedens.combiners.cascade import GRIDS
from fedens.combiners.training import pretrain_router, train_combiner
from fedens.data import load_task
from fedens.data.partition import dirichlet_partition
from fedens.experts import count_macs, expert_outputs, save_experts, train_expert_network
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.federation.cascade_release import score
from fedens.federation.checkpoint import checkpoint_path
from fedens.federation.client_app import make_client_app
from fedens.federation.layout import write_atomic
from fedens.federation.server_app import evaluate_model, make_server_app
from fedens.federation.simulation import run_in_simulation
from fedens.federation.strategies import STRATEGIES, check_strategy
from fedens.privacy import PrivacyLedger

SCHEMA_VERSION = 1
console = Console(highlight=False, soft_wrap=True)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, value and what is allowed."""


class FederationFailed(RuntimeError):
    """The federation produced no result to report; the message says what failed."""


#: what a run directory holds once a fedens run has started in it (Hydra's .hydra/ aside)
RUN_MARKERS = ("results.json", "sites", "federation", "coordinator", "experts.pkl")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a directory that holds no fedens run (its ledgers, results and site data
    would be mixed with another run's); ``resume`` needs an unfinished one with a checkpoint."""
    finished = (run_dir / "results.json").is_file()
    if resume:
        if finished:
            raise ConfigError(f"cannot resume {run_dir}: the run is finished (it has results.json); "
                              "start a new run in another directory")
        if not checkpoint_path(run_dir).is_file():
            raise ConfigError(f"cannot resume {run_dir}: no checkpoint at {checkpoint_path(run_dir)} "
                              "(the run has not completed a round)")
        return
    if found := [name for name in RUN_MARKERS if (run_dir / name).exists()]:
        state = "finished" if finished else f"unfinished (it has {found[0]})"
        advice = "" if finished else f"; continue it with `fedens run resume={run_dir}`"
        raise ConfigError(f"hydra.run.dir={run_dir} already holds a {state} fedens run: choose another "
                          f"directory{advice}")


def federation_failure(run_dir: Path, wrote: str) -> FederationFailed:
    """Why the coordinator ended without writing ``wrote`` (its recorded reason, if any)."""
    reason = L.failure_path(run_dir)
    said = reason.read_text().strip() if reason.is_file() else "no reason recorded (see the log above)"
    return FederationFailed(f"the federation ended without writing {wrote}: {said}")


def rounds_aggregated(rounds: dict[str, Any]) -> int:
    """Rounds whose update aggregated sites' replies (a cascade's one release: if any replied)."""
    return sum(bool(r.get("aggregated", r["sites_reporting"] > 0))
               for r in rounds["rounds"] if r["round"] >= 1)


def require_aggregated_rounds(rounds: dict[str, Any]) -> None:
    """Raise :class:`FederationFailed` unless some round aggregated sites' updates: a combiner
    no site trained is not a federated result."""
    rows = [r for r in rounds["rounds"] if r["round"] >= 1]
    if rounds_aggregated(rounds):
        return
    failures = [f for fs in rounds["failures"].values() for f in fs]
    kinds = sorted({f["kind"] for f in failures})
    first = (f"; first: site {failures[0]['site']} in round {min(rounds['failures'], key=int)}: "
             f"{failures[0]['reason']}") if failures else ""
    raise FederationFailed(f"no round aggregated any site's update ({len(rows)} rounds, {len(failures)} "
                           f"site failures: {', '.join(kinds) or 'none'}){first}")


def check(cfg: DictConfig, key: str, ok: Any, expected: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, its value and ``expected`` unless ``ok(value)``."""
    value = OmegaConf.select(cfg, key)
    try:
        good = bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"invalid {key}={value!r}: expected {expected}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool, not nan or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


KINDS = ("gated_ensemble", "pate")
#: combiners the quickstart federates (combiner=<name>): trained by DP-SGD rounds, or (cascade)
#: calibrated from one DP histogram release
FEDERATED_COMBINERS = ("gated_ensemble", "log_linear", "stacking", "cascade")
POOLS = {"log_linear": LogLinearModule, "stacking": StackingModule}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first out-of-range value, before anything runs."""
    check(cfg, "kind", lambda v: v in KINDS, f"one of {list(KINDS)}")
    check(cfg, "federation.num_sites", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check(cfg, "federation.min_sites",
           lambda v: is_int(v) and 1 <= v <= cfg.federation.num_sites,
           f"an integer in [1, federation.num_sites={cfg.federation.num_sites}]")
    check(cfg, "privacy.delta", lambda v: is_num(v) and 0 < v < 1, "a number in (0, 1)")
    if cfg.kind == "pate":
        from fedens.pate import validate_pate

        validate_pate(cfg)
    else:
        validate_gated_ensemble(cfg)


def configured_strategy_params(cfg: DictConfig) -> dict[str, Any]:
    params = cfg.federation.strategy.params
    return {} if params is None else dict(OmegaConf.to_container(params))


def validate_strategy(cfg: DictConfig) -> None:
    """The strategy is one of Flower's, with parameters it takes; faults parse."""
    check(cfg, "federation.strategy.name", lambda v: v in STRATEGIES, f"one of {', '.join(STRATEGIES)}")
    params = configured_strategy_params(cfg)
    try:
        check_strategy(cfg.federation.strategy.name, params)
    except ValueError as error:
        raise ConfigError(f"invalid federation.strategy.params: {error}") from error
    try:
        faults = L.parse_faults(cfg.federation.inject_faults or "")
    except ValueError as error:
        raise ConfigError(f"invalid federation.inject_faults: {error}") from error
    for site, server_round, _ in faults:
        check(cfg, "federation.inject_faults",
              lambda v, site=site, r=server_round: site < cfg.federation.num_sites
              and 1 <= r <= cfg.federation.num_rounds,
              f"sites in [0, {cfg.federation.num_sites - 1}] and rounds in "
              f"[1, {cfg.federation.num_rounds}]")


def validate_gated_ensemble(cfg: DictConfig) -> None:
    check(cfg, "federation.num_rounds", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check(cfg, "federation.fraction_train", lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]")
    check(cfg, "federation.round_timeout", lambda v: is_num(v) and v > 0, "a number of seconds > 0")
    check(cfg, "federation.ship_inline_bytes", lambda v: is_int(v) and v >= 0,
          "a whole number of bytes >= 0 (0: always ship in a query.ship message)")
    check(cfg, "federation.backend", lambda v: v in ("simulation", "deployment"),
          "'simulation' or 'deployment'")
    if cfg.federation.backend == "deployment":
        check(cfg, "federation.superlink", lambda v: isinstance(v, str) and v.strip() != "",
              "the name of a [superlink.<name>] connection in $FLWR_HOME/config.toml")
        check(cfg, "federation.run_timeout", lambda v: is_num(v) and v > 0, "a number of seconds > 0")
    check(cfg, "federation.min_replies", lambda v: is_int(v) and 1 <= v <= cfg.federation.num_sites,
          f"an integer in [1, federation.num_sites={cfg.federation.num_sites}]")
    check(cfg, "federation.personalization.holdout", lambda v: is_num(v) and 0 <= v < 1,
          "a fraction in [0, 1) (0: no personalisation)")
    check(cfg, "federation.personalization.epochs", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check(cfg, "federation.checkpoint_every", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    validate_strategy(cfg)
    check(cfg, "partition.alpha", lambda v: is_num(v) and v > 0, "a number > 0")
    check(cfg, "privacy.epsilon", lambda v: is_num(v) and v > 0, "a finite number > 0")
    check(cfg, "privacy.budget", lambda v: is_num(v) and v > 0, "a finite number > 0")
    check(cfg, "privacy.max_grad_norm", lambda v: is_num(v) and v > 0, "a number > 0")
    check(cfg, "privacy.site_level.mode", lambda v: v in site_dp.MODES, f"one of {list(site_dp.MODES)}")
    for key in ("privacy.site_level.noise_multiplier", "privacy.site_level.clipping_norm"):
        check(cfg, key, lambda v: is_num(v) and v > 0, "a number > 0")
    check(cfg, "privacy.site_level.clipped_count_stddev", lambda v: v is None or (is_num(v) and v > 0),
           "null or a number > 0")
    if cfg.privacy.site_level.mode.endswith("adaptive"):
        sl = cfg.privacy.site_level
        problem = site_dp.adaptive_noise_problem(sl.noise_multiplier, cfg.federation.num_sites,
                                                 sl.clipped_count_stddev)
        check(cfg, "privacy.site_level.clipped_count_stddev", lambda v: not problem,
               f"a value that lets adaptive clipping split the noise: {problem}")
    check(cfg, "experts.num_experts", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check(cfg, "combiner.name", lambda v: v in FEDERATED_COMBINERS, f"one of {list(FEDERATED_COMBINERS)}")
    validate_combiner(cfg)
    for key in ("data.public_fraction", "data.test_fraction"):
        check(cfg, key, lambda v: is_num(v) and 0 < v < 1, "a number in (0, 1)")
    check(cfg, "data.test_fraction", lambda v: v + cfg.data.public_fraction < 1,
           f"public_fraction + test_fraction < 1 (public_fraction={cfg.data.public_fraction})")


def validate_combiner(cfg: DictConfig) -> None:
    """The chosen combiner's own keys (conf/combiner/<name>.yaml)."""
    name = cfg.combiner.name
    if name == "cascade":
        check(cfg, "combiner.costs", lambda v: v in ("macs", "uniform"), "'macs' or 'uniform'")
        check(cfg, "combiner.grid", lambda v: v in GRIDS, f"one of {list(GRIDS)}")
        check(cfg, "combiner.target_margin", lambda v: is_num(v) and -1 < v < 1, "a number in (-1, 1)")
        check(cfg, "combiner.min_count", lambda v: is_num(v) and v > 0, "a number > 0")
        return
    for key in ("combiner.local_epochs", "combiner.batch_size", "combiner.central_epochs"):
        check(cfg, key, lambda v: is_int(v) and v >= 1, "an integer >= 1")
    check(cfg, "combiner.lr", lambda v: is_num(v) and v > 0, "a number > 0")
    if name in POOLS:
        check(cfg, "combiner.log_floor", lambda v: is_num(v) and 0 < v < 1, "a number in (0, 1)")
        return
    check(cfg, "combiner.top_k", lambda v: is_int(v) and 1 <= v <= cfg.experts.num_experts,
           f"an integer in [1, experts.num_experts={cfg.experts.num_experts}]")
    check(cfg, "combiner.weights_objective", lambda v: v in ("nll", "score_ce"), "'nll' or 'score_ce'")
    check(cfg, "combiner.train_top_k",
          lambda v: v is None or (is_int(v) and 1 <= v <= cfg.experts.num_experts),
          f"null or an integer in [1, experts.num_experts={cfg.experts.num_experts}]")
    check(cfg, "combiner.pretrain_epochs", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: off)")
    check(cfg, "combiner.router_input_dim", lambda v: is_int(v) and v >= 0,
           "an integer >= 0 (0: the raw inputs)")


def _accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


def _prepare(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Data, experts and each party's files; returns what the report needs."""
    task = load_task(cfg.data.name, cfg.data.public_fraction, cfg.data.test_fraction, cfg.seed)
    sites = dirichlet_partition(
        task.private.y, cfg.federation.num_sites, cfg.partition.alpha, cfg.seed,
        cfg.partition.min_partition_size,
    )
    console.print(
        f"data  {task.name}: public {len(task.public)}, private {len(task.private)} over "
        f"{len(sites)} sites (Dirichlet α={cfg.partition.alpha}; sizes {[len(s) for s in sites]}), "
        f"test {len(task.test)}"
    )
    experts = train_expert_network(
        task.public, task.num_classes, cfg.experts.num_experts, list(cfg.experts.families),
        cfg.experts.specialty_classes, cfg.experts.in_fraction, cfg.experts.out_fraction, cfg.seed,
    )
    initial = initial_combiner(cfg, task, experts)
    save_experts(experts, run_dir / "experts.pkl")
    torch.save(combiner_state(initial), run_dir / "initial_combiner.pt")
    for site, records in enumerate(sites):  # in simulation, stands for each site's own disk
        L.site_dir(run_dir, site).mkdir(parents=True, exist_ok=True)
        np.savez(L.site_dir(run_dir, site) / "data.npz",
                 X=task.private.X[records], y=task.private.y[records])
    L.coordinator_test_path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    np.savez(L.coordinator_test_path(run_dir), X=task.test.X, y=task.test.y)
    write_atomic(L.task_schema_path(run_dir), json.dumps(
        {"num_features": int(task.test.X.shape[1]), "num_classes": task.num_classes}))
    return {"task": task, "sites": sites, "experts": experts, "initial": initial}


def initial_combiner(cfg: DictConfig, task: Any, experts: list) -> Any:
    """The combiner every site starts from, built from public data only (config: combiner)."""
    c, K = cfg.combiner, len(experts)
    if c.name in POOLS:
        return POOLS[c.name](K, float(c.log_floor))
    if c.name == "cascade":
        return CascadeCombiner([float(count_macs(e)) if c.costs == "macs" else 1.0 for e in experts])
    try:
        initial = GatedEnsemble.with_public_projection(
            task.public.X, K, c.router_input_dim, cfg.seed,
            weights_objective=c.weights_objective, train_top_k=c.train_top_k,
        )
    except ValueError as error:
        raise ConfigError(f"invalid combiner.router_input_dim: {error}") from error
    if c.pretrain_epochs > 0:  # public data: no privacy spent
        pretrain_router(initial, task.public.X, expert_outputs(experts, task.public.X), task.public.y,
                        c.pretrain_epochs, float(c.lr), c.batch_size, cfg.seed)
    return initial


def central_reference(cfg: DictConfig, task: Any, experts: list, initial: Any, P_test: np.ndarray
                      ) -> dict[str, float]:
    """The chosen combiner trained (or calibrated) centrally, non-privately, on all private
    records with the same code the sites run: its test scores."""
    c, y = cfg.combiner, task.test.y
    P_private = expert_outputs(experts, task.private.X)
    if c.name == "cascade":
        model = copy.deepcopy(initial).calibrate_selective(
            P_private, task.private.y, GRIDS[c.grid], margin=float(c.target_margin),
            min_count=float(c.min_count))
        accuracy, nll = score(model.combine(P_test), y)
        return {"central_nonprivate_accuracy": accuracy, "central_nonprivate_nll": nll,
                "central_nonprivate_expert_calls_per_query": model.expert_calls_per_query(P_test)}
    model = train_combiner(copy.deepcopy(initial), task.private.X, P_private, task.private.y,
                           c.central_epochs, float(c.lr), c.batch_size, cfg.seed)
    scores = evaluate_model(model, P_test, task.test.X, y, c.get("top_k", 1))
    if c.name != "gated_ensemble":
        return {"central_nonprivate_accuracy": scores["accuracy"], "central_nonprivate_nll": scores["nll"]}
    return {"central_nonprivate_accuracy": scores["router_accuracy"],
            "central_nonprivate_nll": scores["router_nll"],
            "central_nonprivate_router_accuracy": scores["router_accuracy"],
            "central_nonprivate_router_topk_accuracy": scores["router_topk_accuracy"],
            "central_nonprivate_weights_accuracy": scores["weights_accuracy"]}


def _baselines(cfg: DictConfig, task: Any, experts: list, initial: Any) -> dict[str, float]:
    from sklearn.neural_network import MLPClassifier

    y = task.test.y
    P = expert_outputs(experts, task.test.X)
    singles = [_accuracy(P[:, k], y) for k in range(P.shape[1])]
    X_all = np.concatenate([task.public.X, task.private.X])
    y_all = np.concatenate([task.public.y, task.private.y])
    central_model = MLPClassifier((64,), max_iter=2000, random_state=cfg.seed).fit(X_all, y_all)
    baselines = {
        "best_single_expert_accuracy": max(singles),
        "mean_single_expert_accuracy": float(np.mean(singles)),
        "uniform_mean_accuracy": _accuracy(MeanCombiner().combine(P), y),
        "plurality_vote_accuracy": _accuracy(VoteCombiner().combine(P), y),
        **central_reference(cfg, task, experts, initial, P),
        "centralized_reference_accuracy": float(central_model.score(task.test.X, y)),
    }
    return baselines


def federation_settings(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """The apps' settings (run_config keys) for this experiment."""
    c = cfg.combiner
    if c.name == "cascade":  # calibrated from one histogram release: no training keys
        return {**_common_settings(cfg, run_dir, resume), L.HOLDOUT: 0.0, L.NUM_ROUNDS: 1, L.TOP_K: 1,
                L.CASCADE_GRID: json.dumps(GRIDS[c.grid].tolist()),
                L.CASCADE_MARGIN: float(c.target_margin), L.CASCADE_MIN_COUNT: float(c.min_count)}
    return {
        **_common_settings(cfg, run_dir, resume),
        L.LOCAL_EPOCHS: c.local_epochs,
        L.BATCH_SIZE: c.batch_size,
        L.LEARNING_RATE: float(c.lr),
        L.TOP_K: c.get("top_k", 1),
        # personalisation fine-tunes the router; other combiners train on all of a site's records
        L.HOLDOUT: float(cfg.federation.personalization.holdout) if c.name == "gated_ensemble" else 0.0,
    }


def _common_settings(cfg: DictConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    return {
        L.RUN_DIR: str(run_dir),
        L.EXPERTS_PATH: str(run_dir / "experts.pkl"),
        L.INITIAL_COMBINER_PATH: str(run_dir / "initial_combiner.pt"),
        L.NUM_SITES: cfg.federation.num_sites,
        L.NUM_ROUNDS: cfg.federation.num_rounds,
        L.TARGET_EPSILON: float(cfg.privacy.epsilon),
        L.BUDGET_EPSILON: float(cfg.privacy.budget),
        L.DELTA: float(cfg.privacy.delta),
        L.MAX_GRAD_NORM: float(cfg.privacy.max_grad_norm),
        L.FRACTION_TRAIN: float(cfg.federation.fraction_train),
        L.MIN_SITES: cfg.federation.min_sites,
        L.MIN_REPLIES: cfg.federation.min_replies,
        L.ROUND_TIMEOUT: float(cfg.federation.round_timeout),
        L.SHIP_INLINE_BYTES: cfg.federation.ship_inline_bytes,
        L.SEED: cfg.seed,
        L.TASK_SCHEMA: L.task_schema_path(run_dir).read_text(),
        L.SITE_DP_MODE: cfg.privacy.site_level.mode,
        L.SITE_DP_NOISE: float(cfg.privacy.site_level.noise_multiplier),
        L.SITE_DP_CLIP: float(cfg.privacy.site_level.clipping_norm),
        L.SITE_DP_COUNT_STDDEV: float(cfg.privacy.site_level.clipped_count_stddev or 0.0),
        L.STRATEGY: cfg.federation.strategy.name,
        L.STRATEGY_PARAMS: json.dumps(configured_strategy_params(cfg)),
        L.CHECKPOINT_EVERY: cfg.federation.checkpoint_every,
        L.RESUME: resume,
        L.INJECT_FAULTS: cfg.federation.inject_faults or "",
        L.PERSONAL_EPOCHS: cfg.federation.personalization.epochs,
    }


def _federate(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    strategy = cfg.federation.strategy
    settings = federation_settings(cfg, run_dir, resume)

    name = cfg.combiner.name

    def progress(row: dict[str, Any]) -> None:
        if name == "cascade":
            console.print(f"cascade  thresholds from {row['sites_reporting']} sites' noisy histograms: "
                          f"accuracy {row['accuracy']:.3f}, {row['expert_calls_per_query']:.2f} expert "
                          f"calls / query, ε_max {row['epsilon_max']:.2f}")
        elif row["round"] == 0:
            start = row["router_accuracy"] if name == "gated_ensemble" else row["accuracy"]
            console.print(f"round  0/{row['num_rounds']}  {name} {start:.3f} (initial: uniform)")
            return
        elif name == "gated_ensemble":
            console.print(
                f"round {row['round']:2d}/{row['num_rounds']}  router {row['router_accuracy']:.3f}  "
                f"top-{cfg.combiner.top_k} {row['router_topk_accuracy']:.3f}  "
                f"weights {row['weights_accuracy']:.3f}  sites {row['sites_reporting']}  "
                f"ε_max {row['epsilon_max']:.2f}  [{row['elapsed_s']:.0f} s]"
            )
        else:
            console.print(
                f"round {row['round']:2d}/{row['num_rounds']}  {name} {row['accuracy']:.3f} "
                f"(NLL {row['nll']:.3f})  sites {row['sites_reporting']}  "
                f"ε_max {row['epsilon_max']:.2f}  [{row['elapsed_s']:.0f} s]"
            )
        for f in row["failures"]:
            who = f"site {f['site']}" if f["site"] is not None else f"node {f['node']}"
            console.print(f"          {who} failed ({f['kind']}): {f['reason']}")

    backend = cfg.federation.backend
    plan = ("one noisy-histogram release, Gaussian mechanism" if name == "cascade" else
            f"{cfg.federation.num_rounds} {strategy.name} rounds of {name}, DP-SGD")
    console.print(
        f"federation  Flower {backend}: {cfg.federation.num_sites} sites, {plan}, target "
        f"ε={cfg.privacy.epsilon:g} at δ={cfg.privacy.delta:g} per site"
        + (f"; resuming {run_dir}" if resume else "")
    )
    if backend == "deployment":  # the same apps, shipped by `flwr run` to a running SuperLink
        from fedens.federation.deployment import run_in_deployment

        run_in_deployment(settings, superlink=cfg.federation.superlink, app_dir=cfg.federation.app_dir,
                          timeout=float(cfg.federation.run_timeout), verbose=cfg.federation.verbose,
                          echo=lambda line: console.print(line, markup=False))
    else:
        run_in_simulation(make_server_app(settings, progress), make_client_app(settings),
                          cfg.federation.num_sites, num_cpus=cfg.federation.num_cpus,
                          verbose=cfg.federation.verbose)
    out = L.federation_dir(run_dir)
    if not (out / "rounds.json").is_file():
        raise federation_failure(run_dir, "federation/rounds.json")
    return json.loads((out / "rounds.json").read_text())


def site_ledger_summaries(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per site: epsilon spent (None if nothing was released), budget, events, refusals,
    read from the sites' ledgers in the run directory (simulation)."""
    per_site: dict[str, dict[str, Any]] = {}
    for site in range(cfg.federation.num_sites):
        path = L.site_dir(run_dir, site) / "ledger.sqlite"
        if not path.is_file():
            per_site[str(site)] = {"epsilon": None, "budget": float(cfg.privacy.budget)}
            continue
        ledger = PrivacyLedger.read(path)
        s = ledger.summary()
        ledger.close()
        per_site[str(site)] = {"epsilon": s["epsilon"] if s["events"] else None,
                               "epsilon_worst_case": s["epsilon_worst_case"] if s["events"] else None,
                               "budget": s["budget"],
                               "events": s["events"], "refusals": s["refusals"],
                               "queries_refused": s["queries_refused"]}
    return per_site


def site_personalization(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Per site: router accuracy on its held-back records, global vs personalised, from the
    comparison each site keeps in its own folder (simulation: all are in the run directory)."""
    if cfg.federation.personalization.holdout <= 0 or cfg.combiner.name != "gated_ensemble":
        return None  # only the router is personalised
    per_site = {}
    for site in range(cfg.federation.num_sites):
        path = L.personalization_report_path(L.site_dir(run_dir, site) / "ledger.sqlite")
        if path.is_file():
            per_site[str(site)] = json.loads(path.read_text())
    gains = [r["personalized"]["router"] - r["global"]["router"] for r in per_site.values()]
    held = [r["held_back_records"] for r in per_site.values()]
    return {
        "holdout": cfg.federation.personalization.holdout,
        "per_site": per_site,
        "sites": len(per_site),
        "sites_gaining": sum(g > 0 for g in gains),
        "sites_losing": sum(g < 0 for g in gains),
        "mean_gain": float(np.mean(gains)) if gains else None,
        # pooled over all held-back records: sum of correct / sum of records
        "global_accuracy": _pooled(per_site, "global", held),
        "personalized_accuracy": _pooled(per_site, "personalized", held),
    }


def _pooled(per_site: dict[str, Any], which: str, held: list[int]) -> float | None:
    if not per_site:
        return None
    correct = sum(r[which]["router"] * r["held_back_records"] for r in per_site.values())
    return float(correct / sum(held))


def epsilon_max(per_site: dict[str, dict[str, Any]]) -> float | None:
    spent = [s["epsilon"] for s in per_site.values() if s["epsilon"] is not None]
    return max(spent) if spent else None


def _privacy_report(cfg: DictConfig, run_dir: Path, rounds: dict[str, Any]) -> dict[str, Any]:
    last_reports: dict[str, Any] = {}
    for reports in rounds["sites"].values():
        last_reports.update(reports)
    per_site = site_ledger_summaries(cfg, run_dir)
    for site, entry in per_site.items():  # Opacus' own accountant, as a cross-check
        reported = last_reports.get(site, {})
        entry["opacus_epsilon"] = reported.get("opacus-epsilon")
        entry["noise_multiplier"] = reported.get("noise-multiplier")
        if entry["epsilon"] is None and "epsilon" in reported:  # its ledger is on its own machine
            entry["epsilon"], entry["source"] = reported["epsilon"], "reported by the site"
    return {
        "delta": float(cfg.privacy.delta),
        "epsilon_max": epsilon_max(per_site),
        "per_site": per_site,
        "rounds_refused": sum(s.get("refusals", 0) for s in per_site.values()),
        "accounting": "rdp-data-independent",
        "mechanism": ("gaussian noisy confidence histograms (cascade calibration), record-level, per site"
                      if cfg.combiner.name == "cascade" else "dp-sgd (opacus), record-level, per site"),
        "site_level": rounds["site_level"],
    }


def _write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _plot(path: Path, rows: list[dict[str, Any]], baselines: dict[str, float], top_k: int, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if name == "gated_ensemble":
        ax.plot(rounds, [r["router_accuracy"] for r in rows], "o-", label="router (dense), DP")
        ax.plot(rounds, [r["router_topk_accuracy"] for r in rows], "s--", label=f"router top-{top_k}, DP")
        ax.plot(rounds, [r["weights_accuracy"] for r in rows], "^-", label="learned weights, DP")
    else:
        ax.plot(rounds, [r["accuracy"] for r in rows], "o-", label=f"{name}, DP")
    for key, style in (("centralized_reference_accuracy", "k-"),
                       ("central_nonprivate_accuracy", "g:"),
                       ("uniform_mean_accuracy", "b:"),
                       ("best_single_expert_accuracy", "r:")):
        ax.axhline(baselines[key], linestyle=style[1:], color=style[0],
                   label=key.replace("_accuracy", "").replace("_", " "))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _metrics_and_cost(cfg: DictConfig, final: dict[str, Any], K: int) -> dict[str, dict[str, Any]]:
    """results.json's "metrics" and "cost": the federated combiner's test scores (for the
    router: the dense router's, the other heads beside them) and its expert calls per query."""
    name = cfg.combiner.name
    if name == "gated_ensemble":
        return {
            "metrics": {"test_accuracy": final["router_accuracy"], "test_nll": final["router_nll"],
                        "router_topk_accuracy": final["router_topk_accuracy"],
                        "weights_accuracy": final["weights_accuracy"], "weights_nll": final["weights_nll"]},
            "cost": {"num_experts": K, "expert_calls_per_query": GatedEnsemble.expert_calls_per_query(K),
                     "expert_calls_per_query_topk": GatedEnsemble.expert_calls_per_query(
                         K, cfg.combiner.top_k)},
        }
    cost = {"num_experts": K, "expert_calls_per_query": float(final.get("expert_calls_per_query", K))}
    if name == "cascade":
        cost["cost_per_query"] = final["cost_per_query"]
        cost["cost_unit"] = "multiply-accumulates" if cfg.combiner.costs == "macs" else "calls"
    return {"metrics": {"test_accuracy": final["accuracy"], "test_nll": final["nll"]}, "cost": cost}


def _print_table(results: dict[str, Any], top_k: int) -> None:
    b, m = results["baselines"], results["metrics"]
    table = Table(title=f"fedens {results['experiment']}: test accuracy")
    table.add_column("combiner")
    table.add_column("accuracy", justify="right")
    table.add_column("expert calls / query", justify="right")
    K, name = results["cost"]["num_experts"], results["combiner"]
    calls = results["cost"]["expert_calls_per_query"]
    if name == "gated_ensemble":
        learned = [("learned weights (federated, DP)", m["weights_accuracy"], K),
                   ("router dense (federated, DP)", m["test_accuracy"], K),
                   (f"router top-{top_k} (federated, DP)", m["router_topk_accuracy"], top_k),
                   ("router dense (central, non-private)", b["central_nonprivate_router_accuracy"], K)]
    else:
        learned = [(f"{name} (federated, DP)", m["test_accuracy"], f"{calls:.2f}"),
                   (f"{name} (central, non-private)", b["central_nonprivate_accuracy"],
                    f"{b.get('central_nonprivate_expert_calls_per_query', K):.2f}")]
    for label, value, n_calls in (
        ("best single expert", b["best_single_expert_accuracy"], 1),
        ("mean single expert", b["mean_single_expert_accuracy"], 1),
        ("uniform mean", b["uniform_mean_accuracy"], K),
        ("plurality vote", b["plurality_vote_accuracy"], K),
        *learned,
        ("centralized model on all data", b["centralized_reference_accuracy"], "-"),
    ):
        table.add_row(label, f"{value:.3f}", str(n_calls))
    console.print(table)
    p, personal = results["privacy"], (results.get("personalization") or {}).get("per_site", {})
    sites = Table(title=f"per site: privacy (δ={p['delta']:g}, {p['accounting']})"
                        + (" and router accuracy on its own held-back records" if personal else ""))
    for col in ("site", "ε spent", "budget", "ε (opacus cross-check)", "σ", "global", "personalised"):
        sites.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for site, s in p["per_site"].items():
        mine = personal.get(site)
        sites.add_row(site, fmt(s["epsilon"]), f"{s['budget']:g}", fmt(s.get("opacus_epsilon")),
                      fmt(s.get("noise_multiplier")),
                      fmt(mine["global"]["router"]) if mine else "-",
                      fmt(mine["personalized"]["router"]) if mine else "-")
    console.print(sites)


def run(cfg: DictConfig, run_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run one experiment and write its report; returns the results.json content.

    ``run_dir`` defaults to Hydra's run directory. ``resume``: continue the run in
    ``run_dir`` from its last checkpointed round (its files are rebuilt from the
    seed; the sites' ledgers are kept and not charged twice).
    """
    validate(cfg)
    if resume and cfg.kind != "gated_ensemble":
        raise ConfigError(f"resume is not supported for kind={cfg.kind!r}: expected gated_ensemble")
    if resume and cfg.combiner.name == "cascade":
        raise ConfigError("resume is not supported for combiner.name='cascade': expected a trained combiner "
                          "(its calibration is one release, rerun it)")
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir).resolve()
    check_run_dir(run_dir, resume)
    L.failure_path(run_dir).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.kind == "pate":
        from fedens.pate import run_pate

        return run_pate(cfg, run_dir)
    started = time.monotonic()
    torch.manual_seed(cfg.seed)

    prepared = _prepare(cfg, run_dir)
    task, experts = prepared["task"], prepared["experts"]
    baselines = _baselines(cfg, task, experts, prepared["initial"])
    console.print(
        f"experts  {len(experts)} trained; best single {baselines['best_single_expert_accuracy']:.3f}, "
        f"uniform mean {baselines['uniform_mean_accuracy']:.3f}, central non-private "
        f"{'router' if cfg.combiner.name == 'gated_ensemble' else cfg.combiner.name} "
        f"{baselines['central_nonprivate_accuracy']:.3f}"
    )
    rounds = _federate(cfg, run_dir, resume=resume)
    require_aggregated_rounds(rounds)
    final, K, name = rounds["rounds"][-1], len(experts), cfg.combiner.name
    results = {
        "schema": SCHEMA_VERSION,
        "experiment": cfg.name,
        "seed": cfg.seed,
        "data": {
            "name": task.name,
            "num_sites": cfg.federation.num_sites,
            "num_classes": task.num_classes,
            "partition": f"dirichlet({cfg.partition.alpha:g})",
            "site_sizes": [len(s) for s in prepared["sites"]],
        },
        "combiner": cfg.combiner.name,
        **_metrics_and_cost(cfg, final, K),
        "baselines": baselines,
        "privacy": {
            **_privacy_report(cfg, run_dir, rounds),
            "queries_answered": len(task.test),
            "queries_refused": 0,
        },
        "personalization": site_personalization(cfg, run_dir),
        "federation": {
            "strategy": rounds["strategy"],
            "strategy_params": configured_strategy_params(cfg),
            "fraction_train": cfg.federation.fraction_train,
            "min_sites": cfg.federation.min_sites,
            "min_replies": cfg.federation.min_replies,
            "rounds_aggregated": rounds_aggregated(rounds),
            "failures_per_round": {r: len(f) for r, f in rounds["failures"].items()},
            "failures": {r: f for r, f in rounds["failures"].items() if f},
            "resumed": resume,
        },
        "timing": {"wall_s": time.monotonic() - started,
                   "rounds": 1 if name == "cascade" else cfg.federation.num_rounds},
    }
    if name == "cascade":
        results["cascade"] = rounds["cascade"]
    _write_metrics_csv(run_dir / "metrics.csv", rounds["rounds"])
    _plot(run_dir / "accuracy.png", rounds["rounds"], baselines, cfg.combiner.get("top_k", 1), name)
    write_atomic(run_dir / "results.json", json.dumps(results, indent=2))
    _print_table(results, cfg.combiner.get("top_k", 1))
    console.print(f"results  {run_dir / 'results.json'}  ({results['timing']['wall_s']:.1f} s)")
    return results
