"""Where each party keeps its files, and the run settings the apps read.

The apps read their settings from ``context.run_config`` (``flwr run``) and a
site's own paths and budget from ``context.node_config`` (``--node-config``);
in simulation the same keys come from the dict given to the app factories.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedens.files import cache_root, write_atomic

if TYPE_CHECKING:
    from fedens.privacy import PrivacyLedger

# Keys of the run settings (Flower's run_config style: hyphenated).
RUN_DIR = "run-dir"
OVERRIDES = "overrides"  # with no run-dir (flwr run . alone): the Hydra overrides the ServerApp runs
EXPERTS_PATH = "experts-path"
INITIAL_COMBINER_PATH = "initial-combiner-path"
NUM_SITES = "num-sites"
NUM_ROUNDS = "num-rounds"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "lr"
TARGET_EPSILON = "target-epsilon"
BUDGET_EPSILON = "budget-epsilon"
DELTA = "delta"
MAX_GRAD_NORM = "max-grad-norm"
FRACTION_TRAIN = "fraction-train"
MIN_SITES = "min-sites"
MIN_REPLIES = "min-replies"
ROUND_TIMEOUT = "round-timeout"
SHIP_INLINE_BYTES = "ship-inline-bytes"  # shared files up to this size travel with the roll call
TOP_K = "top-k"
SEED = "seed"
TASK_SCHEMA = "task-schema"  # JSON {num_features, num_classes}: what a site's records must look like
STRATEGY = "strategy"  # a Flower strategy's class name in flwr.serverapp.strategy
STRATEGY_PARAMS = "strategy-params"  # JSON: its own keyword arguments (proximal_mu, eta, ...)
CHECKPOINT_EVERY = "checkpoint-every"  # rounds between server checkpoints
RESUME = "resume"  # true: continue from the run directory's last checkpoint
INJECT_FAULTS = "inject-faults"  # "site:round:raise|hang,...": failure drills (tests, rehearsals)
MAX_UPDATE_NORM = "max-update-norm"  # the coordinator rejects updates farther from the global ones
ATTACK_KIND = "attack-kind"  # hostile-site drill (fedens.federation.attacks); "none": off
ATTACK_SITES = "attack-sites"  # "1,5": the sites that run it
ATTACK_SCALE = "attack-scale"
SITE_NODES = "site-nodes"  # "0=4021,1=977": the node id each site must answer from ("": any, once)
SIMULATED_ALLOW_ENDPOINTS = "simulated-allow-endpoints"  # simulated sites only: allow-endpoints for them
HOLDOUT = "personalization-holdout"  # fraction of each site's records held back (0: off)
PERSONAL_EPOCHS = "personalization-epochs"  # local fine-tuning of the global combiner
SITE_DP_MODE = "site-dp-mode"
SITE_DP_NOISE = "site-dp-noise-multiplier"
SITE_DP_CLIP = "site-dp-clipping-norm"
SITE_DP_COUNT_STDDEV = "site-dp-clipped-count-stddev"  # <= 0: Flower's default, sites / 20

# Cascade calibration (the combiner's kind is the tag in the initial-combiner file).
CASCADE_GRID = "cascade-grid"  # JSON list: thresholds, also the confidence bins' edges
CASCADE_MARGIN = "cascade-target-margin"  # target = best single expert's (noisy) accuracy + margin
CASCADE_MIN_COUNT = "cascade-min-count"  # noisy records needed above a threshold to trust its accuracy

# PATE run settings.
TEACHERS_PER_SITE = "teachers-per-site"  # JSON list: site i trains entry i
TEACHER_STEPS = "teacher-steps"
TEACHER_BATCH = "teacher-batch-size"
TEACHER_LR = "teacher-lr"
TEACHER_CHANNELS = "teacher-channels"  # "c1,c2"
TEACHER_SHIFT = "teacher-shift-px"  # augmentation
TEACHER_ROTATE = "teacher-rotate-deg"
TEACHER_PRIOR_CORRECTION = "teacher-prior-correction"  # logit adjustment by the shard's label prior
TEACHER_CACHE_DIR = "teacher-cache-dir"  # "" : the site's own folder
TEACHER_TIMEOUT = "teacher-timeout"  # seconds to wait for the sites to train their teachers
TEACHER_KIND = "teacher-kind"  # cnn (image shards) | prompted_lm (in-context examples)
TEACHER_LM = "teacher-lm"  # prompted_lm: the model's record (JSON; CausalLMExpert.to_record)
TEACHER_PROMPT = "teacher-prompt"  # prompted_lm: JSON {shots, answers, max_chars, calibrate}
POOL_PATH = "pool-path"  # the coordinator's public, unlabelled query pool
NUM_QUERIES = "num-queries"
QUERY_BATCH = "query-batch"
MECHANISM = "mechanism"
MECHANISM_PARAMS = "mechanism-params"  # JSON
SMOOTH_SENSITIVITY = "smooth-sensitivity"  # JSON {order, beta, sigma_ss}, chosen before any vote; "": off

# Keys of a site's node_config (deployment: --node-config; simulation: Flower's).
PARTITION_ID = "partition-id"
DATA_PATH = "data-path"
LEDGER_PATH = "ledger-path"
CONTRIBUTE = "contribute"  # false: the site switches its contribution off
OUTBOX_PATH = "outbox-path"  # a folder: the site keeps a copy of every reply it sends (outbox.py)
ALLOW_ENDPOINTS = "allow-endpoints"  # base URLs (comma-separated, or "*") its records may be sent to

# Message types beyond Flower's train: the roll call that maps nodes to sites.
ROLL_CALL = "query.site"
CASCADE_HISTOGRAMS = "query.cascade"  # a site's noisy confidence histograms (cascade calibration)

# Error codes of replies a site refuses.
BUDGET_REFUSED = 1001  # its ledger cannot pay for the release
OPTED_OUT = 1002  # it has switched its contribution off
SHARED_FILE_MISSING = 1003  # its cached copy of a shared file is absent or altered: shipped again
DATA_INVALID = 1004  # its records do not fit the task's schema (nothing charged)
ENDPOINT_REFUSED = 1005  # an expert would send its records to an endpoint it has not allowed


def site_dir(run_dir: str | Path, site: int) -> Path:
    """In simulation, the folder that stands for site ``site``'s own disk."""
    return Path(run_dir) / "sites" / f"site_{site}"


def personalization_report_path(ledger_path: Path) -> Path:
    """Where a site keeps its own global-vs-personalised comparison (beside its ledger)."""
    return ledger_path.parent / "personalization.json"


def experts_path(run_dir: str | Path) -> Path:
    """The network's shared experts, as the coordinator ships them (skops: loading runs no code)."""
    return Path(run_dir) / "experts.skops"


def coordinator_test_path(run_dir: str | Path) -> Path:
    """The coordinator's evaluation split (it never holds site data)."""
    return Path(run_dir) / "coordinator" / "test.npz"



def task_schema_path(run_dir: str | Path) -> Path:
    """The task's record schema, as the coordinator announces it to the sites (``task-schema``)."""
    return Path(run_dir) / "coordinator" / "task_schema.json"


def federation_dir(run_dir: str | Path) -> Path:
    """Where the coordinator writes the global combiner and per-round metrics."""
    return Path(run_dir) / "federation"


def failure_path(run_dir: str | Path) -> Path:
    """Why the coordinator's ServerApp stopped, when it raised (Flower only logs it)."""
    return federation_dir(run_dir) / "failed.txt"


@contextmanager
def failure_recorded(run_dir: str | Path) -> Iterator[None]:
    """Run the coordinator; if it raises, write the reason to :func:`failure_path` and re-raise."""
    try:
        yield
    except Exception as error:
        federation_dir(run_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(failure_path(run_dir), f"{type(error).__name__}: {error}".splitlines()[0])
        raise


def site_paths(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> tuple[int, Path, Path]:
    """The site's id, data file and ledger file: from its node_config, else (simulation)
    from its folder in the run directory."""
    site = int(node_config[PARTITION_ID])
    paths = {}
    for key, name in ((DATA_PATH, "data.npz"), (LEDGER_PATH, "ledger.sqlite")):
        if node_config.get(key):
            paths[key] = Path(str(node_config[key]))
        elif RUN_DIR in settings:
            paths[key] = site_dir(settings[RUN_DIR], site) / name
        else:
            raise ValueError(f"site {site}: node_config has no {key!r} and run_config no {RUN_DIR!r}")
    return site, paths[DATA_PATH], paths[LEDGER_PATH]


def shared_file(settings: Mapping[str, Any], node_config: Mapping[str, Any], key: str) -> Path:
    """A shared file (experts, initial combiner): the site's own or shipped copy, which
    ``shipping.with_local_copies`` names in node_config, else where the run settings say."""
    return Path(str(node_config.get(key) or settings[key]))


def open_site_ledger(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> PrivacyLedger:
    """The site's ledger, with the budget from its node_config (else the run's default)."""
    from fedens.privacy import PrivacyLedger  # dp-accounting: only when a site spends

    site, _, ledger_path = site_paths(settings, node_config)
    budget = float(node_config.get(BUDGET_EPSILON, settings[BUDGET_EPSILON]))
    return PrivacyLedger(ledger_path, site=str(site), budget_epsilon=budget, delta=float(settings[DELTA]))


def contributes(node_config: Mapping[str, Any]) -> bool:
    """False when the site has switched its contribution off (``contribute=false``)."""
    return str(node_config.get(CONTRIBUTE, "true")).lower() not in ("false", "0", "no")


def allowed_endpoints(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> set[str]:
    """The endpoint base URLs (``"*"``: any) the site lets its records go to: its node_config's
    ``allow-endpoints``; a simulated site, whose records the coordinator wrote itself (no
    ``data-path`` of its own), follows the run's ``federation.allow_endpoints``."""
    if ALLOW_ENDPOINTS in node_config:
        said = node_config[ALLOW_ENDPOINTS]
    elif not node_config.get(DATA_PATH):
        said = settings.get(SIMULATED_ALLOW_ENDPOINTS, "")
    else:
        said = ""
    return {u.strip().rstrip("/") for u in str(said).split(",") if u.strip()}


def opted_out_reason(site: int) -> str:
    return f"site {site} has switched its contribution off (node_config {CONTRIBUTE}=false)"


def injected_fault(settings: Mapping[str, Any], site: int, server_round: int) -> str | None:
    """The failure drill planned for ``site`` in ``server_round`` ("raise" or "hang"), if any."""
    planned = {(s, r): kind for s, r, kind in parse_faults(settings[INJECT_FAULTS])}
    return planned.get((site, server_round))


def parse_faults(text: str) -> list[tuple[int, int, str]]:
    """``"site:round:kind,..."`` as tuples; ValueError naming the bad entry."""
    faults = []
    for entry in filter(None, (e.strip() for e in str(text).split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() \
                or parts[2] not in ("raise", "hang"):
            raise ValueError(f"fault {entry!r}: expected site:round:raise|hang, e.g. 2:3:hang")
        faults.append((int(parts[0]), int(parts[1]), parts[2]))
    return faults


def merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given to the app factory, overridden by Flower's run_config."""
    return {**defaults, **dict(overrides)}


def published_settings_path(run_id: int) -> Path:
    """Where the coordinator of a ``flwr run .`` that named no run directory publishes the run
    settings it prepared, for the sites of that run on the same machine (local simulation)."""
    return cache_root() / "flwr-runs" / f"{int(run_id)}.json"


def run_settings(defaults: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The run's settings: ``defaults`` overridden by ``context.run_config``, and, when those
    name no run directory (``flwr run .`` alone), by the settings its coordinator published."""
    settings = merged(defaults, context.run_config)
    if not settings.get(RUN_DIR) and (published := published_settings_path(context.run_id)).is_file():
        settings = merged(settings, json.loads(published.read_text()))
    return settings
