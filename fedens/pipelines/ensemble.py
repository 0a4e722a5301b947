"""``pipeline=ensemble`` (the quickstart): shared experts, private data. A network of experts
trained on a public split is combined by a combiner the sites learn from their private records
(DP-SGD rounds, or one noisy-histogram release for a cascade); the coordinator evaluates it on
its own test split, beside the baselines that isolate what the federation adds.

A run directory ends up holding ``results.json``, ``metrics.csv`` (one row per round),
``accuracy.png``, the shared ``experts.skops`` and ``initial_combiner.pt``, the coordinator's
split and the sites' folders (in simulation, each stands for a site's own disk: its records, its
ledger, its cache).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.table import Table

from fedens.combiners import (
    COMBINERS,
    MeanCombiner,
    VoteCombiner,
    combiner_state,
    federated_form,
    load_combiner,
)
from fedens.combiners.cascade import GRIDS
from fedens.config_schema import (
    ConfigError,
    Rule,
    Schema,
    checked,
    fraction,
    integer,
    is_int,
    is_num,
    one_of,
    positive,
)
from fedens.data import PARTITIONS, load_task
from fedens.data.datasets import DATASETS, SplitSizes, TaskData, split_sizes
from fedens.data.rows import text_arrays
from fedens.data.shift import SCANNERS, SHIFTS, shift_task, site_devices
from fedens.data.tables import TableError, load_table_task, table_schema
from fedens.experts import expert_outputs, experts_bytes, load_expert_entry, train_expert_network
from fedens.experts.language_model import CausalLMExpert
from fedens.experts.network import EXPERT_FAMILIES
from fedens.experts.prompted import PromptedExpert
from fedens.federation import layout as L
from fedens.federation import site_dp
from fedens.federation.attacks import ATTACKS
from fedens.federation.ensemble.client import make_client_app
from fedens.federation.ensemble.personalization import FOLDS
from fedens.federation.ensemble.server import make_server_app
from fedens.federation.outputs_cache import cached_expert_outputs
from fedens.federation.site import split_holdout
from fedens.federation.strategies import STRATEGIES, check_strategy
from fedens.files import cache_root, npz_bytes, sha256_bytes, sha256_file, torch_bytes, write_atomic
from fedens.runs import FederationFailed, Pipeline, RunContext, federation_failure, register_pipeline
from fedens.runs.backends import FlowerApps, federate
from fedens.runs.console import console, fmt
from fedens.runs.intervals import METHOD, accuracy_interval, difference_interval
from fedens.runs.plots import new_figure, png_bytes
from fedens.runs.results import epsilon_max, site_ledger_summaries, write_csv


def configured_strategy_params(cfg: DictConfig) -> dict[str, Any]:
    params = cfg.federation.strategy.params
    return {} if params is None else dict(OmegaConf.to_container(params))


def _strategy_problem(cfg: DictConfig) -> str:
    try:
        check_strategy(cfg.federation.strategy.name, configured_strategy_params(cfg))
    except ValueError as error:
        return str(error)
    return ""


def _faults_ok(text: Any, cfg: DictConfig) -> bool:
    return all(site < cfg.federation.num_sites and 1 <= r <= cfg.federation.num_rounds
               for site, r, _ in L.parse_faults(text or ""))


def _faults_expected(cfg: DictConfig) -> str:
    try:
        L.parse_faults(cfg.federation.inject_faults or "")
    except ValueError as error:
        return str(error)
    return (f"sites in [0, {cfg.federation.num_sites - 1}] and rounds in [1, {cfg.federation.num_rounds}]")


def _adaptive_problem(cfg: DictConfig) -> str:
    sl = cfg.privacy.site_level
    return site_dp.adaptive_noise_problem(sl.noise_multiplier, cfg.federation.num_sites,
                                          sl.clipped_count_stddev) or ""


def _site_nodes_ok(nodes: Any, cfg: DictConfig) -> bool:
    ids = list(nodes)
    return (all(is_int(n) and n >= 0 for n in ids) and len(set(ids)) == len(ids)
            and len(ids) in (0, cfg.federation.num_sites))


def _deployed(cfg: DictConfig) -> bool:
    return cfg.federation.backend == "deployment"


FEDERATION_SCHEMA = Schema([
    integer("federation.num_sites"),
    integer("federation.min_sites", 1, "federation.num_sites"),
    integer("federation.num_rounds"),
    fraction("federation.fraction_train", hi_open=False),
    positive("federation.round_timeout", "a number of seconds > 0"),
    integer("federation.ship_inline_bytes", 0, note="bytes; 0: always ship in a query.ship message"),
    Rule("federation.superlink", lambda v, cfg: isinstance(v, str) and v.strip() != "",
         "the name of a [superlink.<name>] connection in $FLWR_HOME/config.toml", when=_deployed),
    positive("federation.run_timeout", "a number of seconds > 0", when=_deployed),
    integer("federation.min_replies", 1, "federation.num_sites"),
    fraction("federation.personalization.holdout", lo_open=False, note="0: no personalisation"),
    integer("federation.personalization.epochs"),
    integer("federation.checkpoint_every"),
    integer("federation.num_cpus", 1, note="Ray's CPUs in simulation"),
    one_of("federation.strategy.name", STRATEGIES, show=lambda names: f"one of {', '.join(names)}"),
    checked("federation.strategy.params", _strategy_problem),
    Rule("federation.inject_faults", _faults_ok, _faults_expected),
    positive("federation.max_update_norm"),
    one_of("federation.attack.kind", ("none", *ATTACKS)),
    Rule("federation.attack.sites", lambda v, cfg: all(is_int(s) and 0 <= s < cfg.federation.num_sites
                                                       for s in v),
         lambda cfg: f"a list of site numbers in [0, federation.num_sites={cfg.federation.num_sites})"),
    positive("federation.attack.scale"),
    Rule("federation.site_nodes", _site_nodes_ok,
         lambda cfg: f"[] or federation.num_sites={cfg.federation.num_sites} distinct node ids, site 0's "
                     "first (what `flwr supernode register` printed for each site's key)"),
])
PRIVACY_SCHEMA = Schema([
    Rule("privacy.delta", lambda v, cfg: is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    positive("privacy.epsilon", "a finite number > 0"),
    positive("privacy.budget", "a finite number > 0"),
    positive("privacy.max_grad_norm"),
    one_of("privacy.site_level.mode", site_dp.MODES),
    positive("privacy.site_level.noise_multiplier"),
    positive("privacy.site_level.clipping_norm"),
    Rule("privacy.site_level.clipped_count_stddev", lambda v, cfg: v is None or (is_num(v) and v > 0),
         "null or a number > 0"),
    checked("privacy.site_level.clipped_count_stddev", _adaptive_problem,
            "a value that lets adaptive clipping split the noise",
            when=lambda cfg: cfg.privacy.site_level.mode.endswith("adaptive")),
])


def _local(cfg: DictConfig) -> bool:
    return cfg.data.name == "local"


def _site_column(cfg: DictConfig) -> str | None:
    return str(cfg.partition.column) if cfg.partition.name in PARTITIONS.by_column else None


def load_data(cfg: DictConfig) -> tuple[TaskData, np.ndarray | None]:
    """The task, and each private record's site-column value (``data=local`` with a partition by
    column) or None."""
    if _local(cfg):
        table = load_table_task(cfg.data, _site_column(cfg), cfg.seed)
        return table.task, table.groups
    return load_task(cfg.data.name, cfg.data.public_fraction, cfg.data.test_fraction, cfg.seed), None


def _sizes(cfg: DictConfig) -> SplitSizes:
    if _local(cfg):
        task, _ = load_data(cfg)
        parts = (len(task.public), len(task.private), len(task.test))
        return SplitSizes(sum(parts), task.num_classes, *parts)
    return split_sizes(cfg.data.name, cfg.data.public_fraction, cfg.data.test_fraction)


def _table_problem(cfg: DictConfig) -> str:
    try:
        load_data(cfg)
    except TableError as error:
        return str(error)
    return ""


def _part_rule(key: str, part: str, per_class: int, why: str) -> Rule:
    """``key`` leaves the data's ``part`` split ``per_class`` records per class at least."""

    def needed(cfg: DictConfig) -> int:
        return per_class * _sizes(cfg).classes

    return Rule(key, lambda v, cfg: getattr(_sizes(cfg), part) >= needed(cfg),
                lambda cfg: f"a fraction that leaves the {part} split at least {per_class} record"
                            f"{'s' if per_class > 1 else ''} per class ({why}), {needed(cfg)} of the "
                            f"{_sizes(cfg).records} {cfg.data.name} records; it leaves "
                            f"{getattr(_sizes(cfg), part)}", when=lambda cfg: not _local(cfg))


DATA_SCHEMA = Schema([
    Rule("data.path", lambda v, cfg: isinstance(v, str) and v.strip() != "", "the path of your table",
         when=_local),
    Rule("data.label", lambda v, cfg: isinstance(v, str) and v.strip() != "", "the name of its label column",
         when=_local),
    one_of("data.shift", ("none",), when=_local),
    Rule("data.text", lambda v, cfg: v is None or (isinstance(v, ListConfig)
                                                  and all(isinstance(c, str) for c in v)),
         "a list of free-text columns, e.g. [review]", when=_local),
    integer("data.text_features", when=_local),
    one_of("data.shift", SHIFTS),
    fraction("data.public_fraction"),
    fraction("data.test_fraction"),
    Rule("data.test_fraction", lambda v, cfg: v + cfg.data.public_fraction < 1,
         lambda cfg: f"public_fraction + test_fraction < 1 (public_fraction={cfg.data.public_fraction})"),
    _part_rule("data.test_fraction", "test", 1, "a stratified split"),
    _part_rule("data.public_fraction", "public", 2, "the experts' and the router's training records"),
    _part_rule("data.test_fraction", "private", 1, "a stratified split"),
    checked("data.path", _table_problem, "a table fedens can read", when=_local),
])
def _trained(cfg: DictConfig) -> bool:
    return cfg.experts.name == "mixed_families"


def _table_schema(cfg: DictConfig) -> dict[str, Any] | None:
    """How to read a table as the task's records (``data=local``; None otherwise): what a site's
    own table and the user's experts need (fedens.data.tables.table_schema)."""
    if not _local(cfg):
        return None
    return table_schema(load_table_task(cfg.data, _site_column(cfg), cfg.seed), cfg.data.label)


def _own_experts(cfg: DictConfig, task: TaskData, calibrate: bool = True) -> list:
    """``experts=own``: the user's own experts (fedens.experts.user_files); with data=local each
    takes the table's own columns. ``calibrate``: fit each prompted expert's class bias on the
    public records (when it asks for one)."""
    table = _table_schema(cfg)
    label_names = tuple(table["labels"]) if table else None
    entries = OmegaConf.to_container(cfg.experts.members)
    experts = [load_expert_entry(entry, task.num_classes, table, label_names, bool(cfg.experts.trust_pickles),
                                 num_features=task.public.X.shape[1]) for entry in entries]
    for expert in experts:
        if isinstance(getattr(expert, "inner", None), CausalLMExpert) and expert.inner.cache_path is None:
            expert.inner.cache_path = cache_root() / "lm-scores.sqlite"  # the coordinator's (never shipped)
        if calibrate and isinstance(expert, PromptedExpert) and expert.calibrate and expert.bias is None:
            console.print(f"experts  {expert.name}: calibrating on {len(task.public)} public records")
            expert.fit_bias(task.public.inputs(), task.public.y)
    return experts


def _trained_experts(cfg: DictConfig, task: TaskData) -> list:
    """``experts=mixed_families``: a network trained here on label-skewed public slices."""
    e = cfg.experts
    return train_expert_network(task.public, task.num_classes, e.num_experts, list(e.families),
                                e.specialty_classes, e.in_fraction, e.out_fraction, cfg.seed)


#: experts.name -> how the network's experts are made (both from public or the user's own files)
EXPERT_SOURCES: dict[str, Callable[[DictConfig, TaskData], list]] = {
    "mixed_families": _trained_experts, "own": _own_experts}


def _expert_files_problem(cfg: DictConfig) -> str:
    """Why the user's experts cannot serve the task: a file that does not load, or an expert that
    fails on a few public records (inputs it does not take, labels the task lacks)."""
    try:
        task = load_data(cfg)[0]
        expert_outputs(_own_experts(cfg, task, calibrate=False), task.public.inputs()[:8])
    except ValueError as error:
        return str(error)
    return ""


def _expert_entry(entry: Any) -> bool:
    return isinstance(entry, str) or (isinstance(entry, DictConfig) and any(
        isinstance(entry.get(key), str) for key in ("path", "kind", "_target_")))


EXPERTS_SCHEMA = Schema([
    integer("experts.num_experts"),
    Rule("experts.families", lambda v, cfg: len(v) >= 1 and all(f in EXPERT_FAMILIES for f in v),
         f"a list of model families from {sorted(EXPERT_FAMILIES)}", when=_trained),
    integer("experts.specialty_classes", 1, lambda cfg: _sizes(cfg).classes, note="of the task's classes",
            when=_trained),
    fraction("experts.in_fraction", hi_open=False, when=_trained),
    fraction("experts.out_fraction", lo_open=False, hi_open=False, when=_trained),
    Rule("experts.members", lambda v, cfg: len(v) >= 1 and all(_expert_entry(e) for e in v),
         "a list of experts, each a file path, {path: FILE, ...}, {kind: causal_lm|openai_chat, ...} or "
         "{_target_: package.Class, ...}", when=lambda cfg: not _trained(cfg)),
    Rule("experts.trust_pickles", lambda v, cfg: isinstance(v, bool), "true or false",
         when=lambda cfg: not _trained(cfg)),
    checked("experts.members", _expert_files_problem, "experts fedens can load and run on the task",
            when=lambda cfg: not _trained(cfg)),
])


def _sites(cfg: DictConfig, labels: np.ndarray, groups: np.ndarray | None) -> list[np.ndarray]:
    """The sites' record indices (the config's partition of the private split)."""
    params = {k: v for k, v in OmegaConf.to_container(cfg.partition).items() if k != "name"}
    return PARTITIONS.split(cfg.partition.name, labels, cfg.federation.num_sites, cfg.seed, groups=groups,
                            **params)


def _sites_problem(cfg: DictConfig) -> str:
    try:
        with warnings.catch_warnings():  # flwr-datasets warns at each draw it rejects
            warnings.simplefilter("ignore")
            task, groups = load_data(cfg)
            _sites(cfg, task.private.y, groups)
    except ValueError as error:
        return str(error)
    return ""


#: checked last, after the partition's own keys: the partition is drawn (a few ms) to see that it
#: fills every site
SITES_SCHEMA = Schema([checked("federation.num_sites", _sites_problem,
                               "as many sites as the private records can fill")])


# --- the protocols: what a combiner's protocol needs from this pipeline ---------------------


@dataclass(frozen=True)
class ProtocolPlan:
    """How this pipeline runs a combiner's protocol: its run settings, its console line, its
    privacy mechanism (for the report) and its number of rounds."""

    settings: Callable[[DictConfig], dict[str, Any]]
    describe: Callable[[DictConfig], str]
    mechanism: str
    rounds: Callable[[DictConfig], int]
    resumable: bool


def _training_settings(cfg: DictConfig) -> dict[str, Any]:
    c, form = cfg.combiner, federated_form(cfg.combiner.name)
    return {L.LOCAL_EPOCHS: c.local_epochs, L.BATCH_SIZE: c.batch_size, L.LEARNING_RATE: float(c.lr),
            L.TOP_K: c.get("top_k", 1), L.NUM_ROUNDS: cfg.federation.num_rounds,
            # personalisation fine-tunes a personalizable combiner; the others train on all records
            L.HOLDOUT: float(cfg.federation.personalization.holdout) if form.personalizable else 0.0}


def _histogram_settings(cfg: DictConfig) -> dict[str, Any]:
    c = cfg.combiner
    return {L.HOLDOUT: 0.0, L.NUM_ROUNDS: 1, L.TOP_K: 1, L.CASCADE_GRID: json.dumps(GRIDS[c.grid].tolist()),
            L.CASCADE_MARGIN: float(c.target_margin), L.CASCADE_MIN_COUNT: float(c.min_count)}


PROTOCOL_PLANS = {
    "dpsgd_rounds": ProtocolPlan(
        _training_settings,
        lambda cfg: f"{cfg.federation.num_rounds} {cfg.federation.strategy.name} rounds of "
                    f"{cfg.combiner.name}, DP-SGD",
        "dp-sgd (opacus), record-level, per site", lambda cfg: cfg.federation.num_rounds, True),
    "histogram_release": ProtocolPlan(
        _histogram_settings, lambda cfg: "one noisy-histogram release, Gaussian mechanism",
        "gaussian noisy confidence histograms (cascade calibration), record-level, per site",
        lambda cfg: 1, False),
}


def plan_of(cfg: DictConfig) -> ProtocolPlan:
    return PROTOCOL_PLANS[federated_form(cfg.combiner.name).protocol]


def federation_settings(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """The apps' run settings (``context.run_config`` keys) for this experiment: every key the
    apps read, each from the config (the one source of defaults)."""
    return {
        L.RUN_DIR: str(run_dir),
        L.OVERRIDES: "",  # the run is prepared: nothing for a ServerApp to compose
        L.EXPERTS_PATH: str(L.experts_path(run_dir)),
        L.INITIAL_COMBINER_PATH: str(run_dir / "initial_combiner.pt"),
        L.NUM_SITES: cfg.federation.num_sites,
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
        L.MAX_UPDATE_NORM: float(cfg.federation.max_update_norm),
        L.ATTACK_KIND: cfg.federation.attack.kind,
        L.ATTACK_SITES: ",".join(str(int(s)) for s in cfg.federation.attack.sites),
        L.ATTACK_SCALE: float(cfg.federation.attack.scale),
        L.SITE_NODES: ",".join(f"{site}={int(n)}" for site, n in enumerate(cfg.federation.site_nodes)),
        L.SIMULATED_ALLOW_ENDPOINTS: ",".join(str(u) for u in cfg.federation.allow_endpoints),
        L.PERSONAL_EPOCHS: cfg.federation.personalization.epochs,
        **plan_of(cfg).settings(cfg),
    }


# --- preparing the network and the sites' files ---------------------------------------------


def _write_prepared(run_dir: Path, path: Path, content: bytes, resume: bool, site_owned: bool = False
                    ) -> None:
    """Write one of the files a run starts from. A resumed run keeps them: a site's data is its
    own (its disk, in simulation too), and a shared or coordinator file the run has used must be
    the same bytes again, or the sites' release keys (and what the checkpoint continues) change."""
    if resume and path.is_file():
        if site_owned or path.read_bytes() == content:
            return
        raise ConfigError(f"cannot resume {run_dir}: {path.relative_to(run_dir)} would not be the file "
                          f"the run started with (sha256 {sha256_file(path)[:12]}, now "
                          f"{sha256_bytes(content)[:12]}); the config, its data or the software changed "
                          "since, so start a new run")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, content)


def partitioned_task(cfg: DictConfig) -> tuple[TaskData, list[np.ndarray], np.ndarray | None]:
    """The task as the sites hold it (shifted when ``data.shift`` says so), each site's record
    indices into its private split, and the site-column values (or None)."""
    task, groups = load_data(cfg)
    sites = _sites(cfg, task.private.y, groups)  # validation drew the same partition
    return shift_task(task, sites, cfg.data.shift, cfg.seed), sites, groups


def site_data_bytes(task: TaskData, records: np.ndarray) -> bytes:
    """One site's ``data.npz``: its records ``X`` and labels ``y`` (and text columns, if any)."""
    return npz_bytes(X=task.private.X[records], y=task.private.y[records],
                     **text_arrays(task.private.inputs()[records]))


def _sizes_line(sites: list[np.ndarray]) -> str:
    """Every site's record count, or for many sites their spread (results.json has each)."""
    sizes = [len(s) for s in sites]
    if len(sizes) <= 20:
        return str(sizes)
    return f"{min(sizes)} to {max(sizes)}, median {int(np.median(sizes))}"


def prepare(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Data, sites, experts and the initial combiner, and each party's files; returns what the
    report needs. In simulation ``sites/site_<i>/`` stands for site *i*'s own disk. A resumed
    run keeps the files it started from (:func:`_write_prepared`)."""
    task, sites, groups = partitioned_task(cfg)
    console.print(
        f"data  {task.name}: public {len(task.public)}, private {len(task.private)} over "
        f"{len(sites)} sites ({PARTITIONS.describe(cfg.partition)}; sizes {_sizes_line(sites)}), "
        f"test {len(task.test)}" + ("" if cfg.data.shift == "none" else
                                   f"; the sites' records and the test split from other scanners "
                                   f"({', '.join(SCANNERS)}) than the public split")
    )
    experts = EXPERT_SOURCES[cfg.experts.name](cfg, task)
    try:
        initial = federated_form(cfg.combiner.name).initial(cfg.combiner, task.public, experts, cfg.seed)
    except ValueError as error:
        raise ConfigError(f"invalid combiner: {error}") from None
    _write_prepared(run_dir, L.experts_path(run_dir), experts_bytes(experts), resume)
    _write_prepared(run_dir, run_dir / "initial_combiner.pt", torch_bytes(combiner_state(initial)), resume)
    for site, records in enumerate(sites):
        _write_prepared(run_dir, L.site_dir(run_dir, site) / "data.npz", site_data_bytes(task, records),
                        resume, site_owned=True)
    _write_prepared(run_dir, L.coordinator_test_path(run_dir), npz_bytes(X=task.test.X, y=task.test.y,
                                                                        **text_arrays(task.test.inputs())),
                    resume)
    schema = {"num_features": int(task.test.X.shape[1]), "num_classes": task.num_classes}
    if table := _table_schema(cfg):  # a site may bring its own table (public statistics only)
        schema["table"] = table
    _write_prepared(run_dir, L.task_schema_path(run_dir), json.dumps(schema).encode(), resume)
    # the experts' outputs on the splits the baselines and the comparison score, computed once
    outputs = {"test": cached_expert_outputs(L.coordinator_test_path(run_dir).parent, L.experts_path(run_dir),
                                             task.test.inputs(), lambda: experts),  # kept for the ServerApp
               "private": expert_outputs(experts, task.private.inputs())}
    site_names = PARTITIONS.site_names(cfg.partition.name, groups)  # natural_id: site i's value
    return {"task": task, "sites": sites, "site_names": site_names, "experts": experts, "initial": initial,
            "outputs": outputs}


def reference_combiners(cfg: DictConfig, prepared: dict[str, Any]) -> dict[str, Any]:
    """The combiners a federated result is measured against: ``public_only``, the initial form
    every site starts from (what the network gets at ε = 0), and ``federated_nonprivate``, the
    same federation without clipping or noise (ε = ∞; it needs every site's records in one
    process, as the central reference does). Each site trains on the records it trains on in
    the federation (its held-back records stay out)."""
    task, initial, P_private = prepared["task"], prepared["initial"], prepared["outputs"]["private"]
    holdout = float(cfg.federation.personalization.holdout)
    sites = []
    for site, records in enumerate(prepared["sites"]):
        train, _ = split_holdout(len(records), holdout, cfg.seed, site)
        mine = records[train]
        sites.append((task.private.X[mine], P_private[mine], task.private.y[mine]))
    return {"public_only": initial,
            "federated_nonprivate": initial.federated_nonprivate(cfg.combiner, sites,
                                                                 cfg.federation.num_rounds, cfg.seed)}


def baselines(cfg: DictConfig, prepared: dict[str, Any], references: dict[str, Any]) -> dict[str, float]:
    """What the network gets without the thing claimed: chance and the majority class, single
    experts, fixed combiners, the public-only and non-private combiners, the combiner trained
    centrally without noise, and a model trained on all the data."""
    from sklearn.neural_network import MLPClassifier

    task, initial = prepared["task"], prepared["initial"]
    y, P = task.test.y, prepared["outputs"]["test"]
    singles = [_accuracy(P[:, k], y) for k in range(P.shape[1])]
    X_all = np.concatenate([task.public.X, task.private.X])
    y_all = np.concatenate([task.public.y, task.private.y])
    central_model = MLPClassifier((64,), max_iter=2000, random_state=cfg.seed).fit(X_all, y_all)
    top_k = cfg.combiner.get("top_k")
    return {
        "chance_accuracy": 1.0 / task.num_classes,
        # the coordinator's guess without any model: the public split's most frequent class
        "majority_class_accuracy": float((y == np.bincount(task.public.y).argmax()).mean()),
        "best_single_expert_accuracy": max(singles),
        "mean_single_expert_accuracy": float(np.mean(singles)),
        "uniform_mean_accuracy": _accuracy(MeanCombiner().combine(P), y),
        "plurality_vote_accuracy": _accuracy(VoteCombiner().combine(P), y),
        **{f"{name}_{key}": value for name, model in references.items()
           for key, value in model.scores(P, task.test.X, y, top_k).items()},
        **initial.central_reference(cfg.combiner, task.private, prepared["outputs"]["private"],
                                    task.test, P, cfg.seed),
        "centralized_reference_accuracy": float(central_model.score(task.test.X, y)),
    }


def private_data_value(prepared: dict[str, Any], references: dict[str, Any], run_dir: Path,
                       seed: int) -> dict[str, Any]:
    """What the sites' private data bought: the federated DP combiner's headline accuracy against
    the public-only one (ε = 0) and the non-private federation (ε = ∞), on the same test
    queries, with bootstrap intervals (paired for the differences)."""
    task, P = prepared["task"], prepared["outputs"]["test"]
    X, y = task.test.X, task.test.y
    final = load_combiner(L.federation_dir(run_dir) / "global_combiner.pt")
    correct = {"federated_dp": final.correct(P, X, y),
               **{name: model.correct(P, X, y) for name, model in references.items()}}
    acc = {name: float(c.mean()) for name, c in correct.items()}
    dp, public, nonprivate = correct["federated_dp"], correct["public_only"], correct["federated_nonprivate"]
    headroom = acc["federated_nonprivate"] - acc["public_only"]
    return {
        "queries": len(y),
        "interval_method": METHOD,
        **{f"{name}_accuracy": value for name, value in acc.items()},
        **{f"{name}_ci95": accuracy_interval(c, seed) for name, c in correct.items()},
        "gain_over_public_only": acc["federated_dp"] - acc["public_only"],
        "gain_over_public_only_ci95": difference_interval(dp, public, seed),
        "nonprivate_gain_over_public_only": headroom,
        "nonprivate_gain_over_public_only_ci95": difference_interval(nonprivate, public, seed),
        # the share of what the private data could give (without DP) that it gave under DP
        "share_of_nonprivate_gain": (acc["federated_dp"] - acc["public_only"]) / headroom if headroom > 0
        else None,
    }


def _accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


# --- the federation and its report ----------------------------------------------------------


def run_federation(cfg: DictConfig, run: RunContext, form: Any) -> dict[str, Any]:
    """The combiner's protocol on the configured backend; the coordinator's ``rounds.json``."""
    settings = federation_settings(cfg, run.run_dir, run.resume)

    def progress(row: dict[str, Any]) -> None:
        console.print(form.progress_line(row, cfg.combiner))
        run.track(row, int(row["round"]))
        for f in row["failures"]:
            who = f"site {f['site']}" if f["site"] is not None else f"node {f['node']}"
            console.print(f"          {who} failed ({f['kind']}): {f['reason']}")

    console.print(
        f"federation  Flower {cfg.federation.backend}: {cfg.federation.num_sites} sites, "
        f"{plan_of(cfg).describe(cfg)}, target ε={cfg.privacy.epsilon:g} at δ={cfg.privacy.delta:g} "
        "per site" + (f"; resuming {run.run_dir}" if run.resume else "")
    )
    federate(cfg, settings, FlowerApps(make_server_app, make_client_app), progress,
             lambda line: console.print(line, markup=False))
    out = L.federation_dir(run.run_dir)
    if not (out / "rounds.json").is_file():
        raise federation_failure(run.run_dir, "federation/rounds.json")
    return json.loads((out / "rounds.json").read_text())


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


CHOICE_SHOWN = {"global": "global", "personalized": "own"}


def site_personalization(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Per site: router accuracy on its held-back records, global vs personalised, from the
    comparison each site keeps in its own folder (simulation: all are in the run directory)."""
    if cfg.federation.personalization.holdout <= 0 or not federated_form(cfg.combiner.name).personalizable:
        return None
    per_site = {}
    for site in range(cfg.federation.num_sites):
        path = L.personalization_report_path(L.site_dir(run_dir, site) / "ledger.sqlite")
        if path.is_file():
            per_site[str(site)] = json.loads(path.read_text())
    held = [r["held_back_records"] for r in per_site.values()]

    def change(which: str) -> list[float]:  # per site, against the global router
        return [r[which]["router"] - r["global"]["router"] for r in per_site.values()]

    gains, chosen = change("personalized"), change("chosen")
    return {
        "holdout": cfg.federation.personalization.holdout,
        "per_site": per_site,
        "sites": len(per_site),
        "sites_gaining": sum(g > 0 for g in gains),
        "sites_losing": sum(g < 0 for g in gains),
        "mean_gain": float(np.mean(gains)) if gains else None,
        "worst_site_gain": min(gains, default=None),
        # each site's choice between the two, made by cross-validation on its training records
        "sites_choosing_personalized": sum(r["choice"] == "personalized" for r in per_site.values()),
        "chosen_mean_gain": float(np.mean(chosen)) if chosen else None,
        "chosen_worst_site_gain": min(chosen, default=None),
        # pooled over all held-back records: sum of correct / sum of records
        "global_accuracy": _pooled(per_site, "global", held),
        "personalized_accuracy": _pooled(per_site, "personalized", held),
        "chosen_accuracy": _pooled(per_site, "chosen", held),
    }


def _pooled(per_site: dict[str, Any], which: str, held: list[int]) -> float | None:
    if not per_site:
        return None
    correct = sum(r[which]["router"] * r["held_back_records"] for r in per_site.values())
    return float(correct / sum(held))


def privacy_report(cfg: DictConfig, run_dir: Path, rounds: dict[str, Any]) -> dict[str, Any]:
    last_reports: dict[str, Any] = {}
    for reports in rounds["sites"].values():
        last_reports.update(reports)
    per_site = site_ledger_summaries(run_dir, cfg.federation.num_sites, cfg.privacy.budget)
    for site, entry in per_site.items():  # Opacus' own accountant, as a cross-check
        reported = last_reports.get(site, {})
        entry["opacus_epsilon"] = reported.get("opacus-epsilon")
        entry["noise_multiplier"] = reported.get("noise-multiplier")
        if entry["epsilon"] is None and "epsilon" in reported:  # its ledger is on its own machine
            entry["epsilon"], entry["source"] = reported["epsilon"], "reported by the site"
    return {
        "epsilon_target": float(cfg.privacy.epsilon),
        "delta": float(cfg.privacy.delta),
        "epsilon_max": epsilon_max(per_site),
        "per_site": per_site,
        "rounds_refused": sum(s.get("refusals", 0) for s in per_site.values()),
        "accounting": "rdp-data-independent",
        "mechanism": plan_of(cfg).mechanism,
        "site_level": rounds["site_level"],
    }


#: the headline's baselines, repeated in every row of ``metrics.csv`` (and lines in the plot)
BASELINE_COLUMNS = ("public_only_accuracy", "federated_nonprivate_accuracy", "central_nonprivate_accuracy",
                    "centralized_reference_accuracy", "uniform_mean_accuracy", "best_single_expert_accuracy")


def with_baseline_columns(rows: list[dict[str, Any]], baselines: dict[str, float],
                          value: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds' rows with the headline's baselines beside them: ε = 0 (public only), ε = ∞
    (the federation without DP), the central references and the fixed combiners."""
    known = {**baselines, **value}
    return [{**row, **{key: known[key] for key in BASELINE_COLUMNS}} for row in rows]


def plot(path: Path, rows: list[dict[str, Any]], form: Any, c: DictConfig) -> None:
    """Accuracy per round, the baselines as horizontal lines."""
    fig, ax = new_figure()
    rounds = [r["round"] for r in rows]
    for key, label, style in form.plot_series(c):
        ax.plot(rounds, [r[key] for r in rows], style, label=label)
    styles = ("m--", "c--", "g:", "k-", "b:", "r:")
    for key, style in zip(BASELINE_COLUMNS, styles, strict=True):
        ax.axhline(rows[0][key], linestyle=style[1:], color=style[0],
                   label=key.replace("_accuracy", "").replace("_", " "))
    write_atomic(path, png_bytes(fig, ax, "round", "test accuracy", legend="lower right"))


@register_pipeline
class EnsemblePipeline(Pipeline):
    """The quickstart: shared experts, private data, a federated combiner."""

    name = "ensemble"
    groups = {
        "data": (*DATASETS, "local"),
        "partition": tuple(PARTITIONS),
        "experts": tuple(EXPERT_SOURCES),
        "combiner": tuple(name for name in COMBINERS if federated_form(name) is not None),
        "privacy": ("dpsgd",),
        "federation": ("simulation", "deployment"),
    }
    schema = FEDERATION_SCHEMA + PRIVACY_SCHEMA + DATA_SCHEMA + EXPERTS_SCHEMA

    def components(self, cfg: DictConfig) -> list[Schema]:
        return [PARTITIONS.schemas[cfg.partition.name], federated_form(cfg.combiner.name).config_schema,
                SITES_SCHEMA]

    def resumable(self, cfg: DictConfig) -> str | None:
        if plan_of(cfg).resumable:
            return None
        return (f"combiner.name={cfg.combiner.name!r} is calibrated by one release, not trained in rounds "
                "(rerun it)")

    def run(self, cfg: DictConfig, run: RunContext) -> dict[str, Any]:
        form = federated_form(cfg.combiner.name)
        with run.phase("prepare"):  # data, sites, experts, initial combiner, each party's files
            prepared = prepare(cfg, run.run_dir, run.resume)
        experts = prepared["experts"]
        with run.phase("references"):  # the non-private federation and the baselines
            references = reference_combiners(cfg, prepared)
            base = baselines(cfg, prepared, references)
        run.say(f"experts  {len(experts)} trained; best single {base['best_single_expert_accuracy']:.3f}, "
                f"uniform mean {base['uniform_mean_accuracy']:.3f}, central non-private "
                f"{form.label} {base['central_nonprivate_accuracy']:.3f}")
        with run.phase("federation"):  # Flower's engine, start to end
            rounds = run_federation(cfg, run, prepared["initial"])
        require_aggregated_rounds(rounds)
        if "elapsed_s" in rounds["rounds"][-1]:  # in the ServerApp's rounds; the rest: engine start, end
            run.phases["federation_in_rounds"] = rounds["rounds"][-1]["elapsed_s"]
        with run.phase("report"):  # the comparison, the privacy report, metrics.csv and the plot
            return self._report(cfg, run, form, prepared, references, base, rounds)

    def _report(self, cfg: DictConfig, run: RunContext, form: Any, prepared: dict[str, Any],
                references: dict[str, Any], base: dict[str, float], rounds: dict[str, Any]) -> dict[str, Any]:
        task, experts = prepared["task"], prepared["experts"]
        results: dict[str, Any] = {
            "data": {
                "name": task.name,
                "num_sites": cfg.federation.num_sites,
                "num_classes": task.num_classes,
                "partition": PARTITIONS.describe(cfg.partition),
                "shift": cfg.data.shift,
                "site_devices": site_devices(cfg.data.shift, cfg.federation.num_sites),
                "site_sizes": [len(s) for s in prepared["sites"]],
                **({"site_names": prepared["site_names"]} if prepared["site_names"] else {}),
            },
            "combiner": cfg.combiner.name,
            **prepared["initial"].results(rounds["rounds"][-1], len(experts), cfg.combiner),
            "baselines": base,
            "private_data": private_data_value(prepared, references, run.run_dir, cfg.seed),
            "privacy": {**privacy_report(cfg, run.run_dir, rounds), "queries_answered": len(task.test),
                        "queries_refused": 0},
            "personalization": site_personalization(cfg, run.run_dir),
            "federation": {
                "strategy": rounds["strategy"],
                "strategy_params": configured_strategy_params(cfg),
                "fraction_train": cfg.federation.fraction_train,
                "min_sites": cfg.federation.min_sites,
                "min_replies": cfg.federation.min_replies,
                "rounds_aggregated": rounds_aggregated(rounds),
                "updates_rejected": sum(f["kind"] == "rejected-update"
                                        for round_failures in rounds["failures"].values()
                                        for f in round_failures),
                "max_update_norm": float(cfg.federation.max_update_norm),
                "attack": (OmegaConf.to_container(cfg.federation.attack)
                           if cfg.federation.attack.kind != "none" else None),
                "failures_per_round": {r: len(f) for r, f in rounds["failures"].items()},
                "failures": {r: f for r, f in rounds["failures"].items() if f},
                "resumed": run.resume,
            },
            "timing": {"rounds": plan_of(cfg).rounds(cfg)},
        }
        if "cascade" in rounds:
            results["cascade"] = rounds["cascade"]
        rows = with_baseline_columns(rounds["rounds"], base, results["private_data"])
        write_csv(run.run_dir / "metrics.csv", rows)
        plot(run.run_dir / "accuracy.png", rows, prepared["initial"], cfg.combiner)
        return results

    def print_report(self, results: dict[str, Any], cfg: DictConfig) -> None:
        b, form = results["baselines"], federated_form(cfg.combiner.name)
        K = results["cost"]["num_experts"]
        table = Table(title=f"fedens {results['experiment']}: test accuracy")
        for col, justify in (("combiner", "left"), ("accuracy", "right"), ("expert calls / query", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        rows = [("chance", b["chance_accuracy"], 0),
                ("majority class (of the public split)", b["majority_class_accuracy"], 0),
                ("best single expert", b["best_single_expert_accuracy"], 1),
                ("mean single expert", b["mean_single_expert_accuracy"], 1),
                ("uniform mean", b["uniform_mean_accuracy"], K),
                ("plurality vote", b["plurality_vote_accuracy"], K),
                *form.report_rows(results, cfg.combiner),
                ("centralized model on all data", b["centralized_reference_accuracy"], "-")]
        for label, value, calls in rows:
            table.add_row(label, f"{value:.3f}", str(calls))
        console.print(table)
        v = results["private_data"]
        console.print(
            f"private data: {form.label or form.kind} {v['federated_dp_accuracy']:.3f} under DP against "
            f"{v['public_only_accuracy']:.3f} public only: {v['gain_over_public_only']:+.3f} "
            f"[{v['gain_over_public_only_ci95'][0]:+.3f}, {v['gain_over_public_only_ci95'][1]:+.3f}]; "
            f"without DP the federation gives {v['nonprivate_gain_over_public_only']:+.3f} "
            f"[{v['nonprivate_gain_over_public_only_ci95'][0]:+.3f}, "
            f"{v['nonprivate_gain_over_public_only_ci95'][1]:+.3f}] (95% paired bootstrap, "
            f"{v['queries']} test queries)")
        p, personal = results["privacy"], (results.get("personalization") or {}).get("per_site", {})
        held_back = (" and router accuracy on its held-back records: the global router, its own "
                     "fine-tuned one, its choice") if personal else ""
        sites = Table(title=f"per site: privacy (δ={p['delta']:g}, {p['accounting']}; ε opacus: Opacus' "
                            f"own accountant){held_back}")
        for col in ("site", "ε spent", "budget", "ε opacus", "σ", "held back", "global", "own", "choice"):
            sites.add_column(col, justify="right")
        for site, s in p["per_site"].items():
            mine = personal.get(site)
            sites.add_row(site, fmt(s["epsilon"]), f"{s['budget']:g}", fmt(s.get("opacus_epsilon")),
                          fmt(s.get("noise_multiplier")),
                          *((str(mine["held_back_records"]), fmt(mine["global"]["router"]),
                             fmt(mine["personalized"]["router"]), CHOICE_SHOWN[mine["choice"]])
                           if mine else ("-",) * 4))
        console.print(sites)
        if personal:
            q = results["personalization"]
            console.print(
                f"personalised: {fmt(q['personalized_accuracy'])} against {fmt(q['global_accuracy'])} global "
                f"on {sum(r['held_back_records'] for r in personal.values())} held-back records (mean site "
                f"change {q['mean_gain']:+.3f}, worst {q['worst_site_gain']:+.3f}); each site's choice by "
                f"{FOLDS}-fold cross-validation on its training records: {fmt(q['chosen_accuracy'])} "
                f"({q['sites_choosing_personalized']} of {q['sites']} sites keep their own, worst site "
                f"{q['chosen_worst_site_gain']:+.3f})")


__all__ = ["EnsemblePipeline", "federation_settings", "prepare", "baselines", "site_personalization",
           "require_aggregated_rounds", "rounds_aggregated", "configured_strategy_params"]
