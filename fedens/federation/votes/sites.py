"""PATE at a site: its teachers on disjoint shards of its records, their votes on the
coordinator's query batches once the worst case is reserved, and the settlement."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedens.data.schema import DataSchemaError
from fedens.experts.teachers import TeacherCNNs, TeacherConfig, label_prior_shift
from fedens.federation import layout as L
from fedens.federation.outbox import record_outgoing
from fedens.federation.site import SiteRequest, site_handler, task_fields
from fedens.federation.votes import RESERVATION, as_array, query_array
from fedens.files import write_atomic
from fedens.privacy import Mechanism, Release, make_mechanism
from fedens.privacy.release_keys import release_key


def _teacher_config(s: Mapping[str, Any]) -> TeacherConfig:
    c1, c2 = (int(c) for c in str(s[L.TEACHER_CHANNELS]).split(","))
    return TeacherConfig((c1, c2), int(s[L.TEACHER_STEPS]), int(s[L.TEACHER_BATCH]), float(s[L.TEACHER_LR]),
                         float(s[L.TEACHER_SHIFT]), float(s[L.TEACHER_ROTATE]))


def teacher_seed(run_seed: int, site: int) -> int:
    """The seed of a site's teachers: their shards and their training."""
    return run_seed * 1000 + site


def teacher_shards(num_records: int, num_teachers: int, seed: int) -> list[np.ndarray]:
    """The disjoint shards (record indices) a site trains its teachers on."""
    return np.array_split(np.random.default_rng(seed).permutation(num_records), num_teachers)


@dataclass(frozen=True)
class SiteTeachers:
    """A site's teachers as the vote handler uses them: the vote histogram of a query batch (the
    queries as the coordinator sent them), their number, whether they were trained just now, and
    the key naming them (in every release key)."""

    votes: Callable[[np.ndarray], np.ndarray]
    num_teachers: int
    trained: bool
    key: str


def _records_sha256(X: np.ndarray, y: np.ndarray, *text: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (X, y, *text))).hexdigest()


def _cnn_teachers(request: SiteRequest, num_teachers: int, seed: int) -> SiteTeachers:
    """CNNs, one per disjoint shard of the site's images, trained here or loaded from its cache."""
    s, site = request.settings, request.site
    config = _teacher_config(s)
    shared = str(s[L.TEACHER_CACHE_DIR])
    cache = (Path(shared) / f"site_{site}" if shared else request.data_path.parent) / "teachers.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    raw, y = request.all_records()  # checked against the task's schema before anything is spent
    key = json.dumps({"teachers": num_teachers, "config": repr(config), "seed": seed,
                      "data_sha256": _records_sha256(raw, y)})
    key_file = cache.with_suffix(".json")
    if len(y) < num_teachers:
        raise DataSchemaError(f"site {site}: {len(y)} records cannot make {num_teachers} disjoint shards: "
                              f"expected at least {num_teachers} records")
    shards = teacher_shards(len(y), num_teachers, seed)
    shard_labels = [y[i] for i in shards]
    trained = not (cache.is_file() and key_file.is_file() and key_file.read_text() == key)
    if trained:
        X = raw.astype(np.float32) / 255.0
        teachers = TeacherCNNs.fit([X[i] for i in shards], shard_labels, config, seed)
        teachers.save(cache)
        write_atomic(key_file, key)
    else:
        teachers = TeacherCNNs.load(cache)
    strength = float(s[L.TEACHER_PRIOR_CORRECTION])
    shift = label_prior_shift(shard_labels, teachers.num_classes, strength) if strength else None
    return SiteTeachers(lambda images: teachers.votes(images.astype(np.float32) / 255.0, logit_shift=shift),
                        teachers.num_teachers, trained, key)


def lm_cache_path(settings: Mapping[str, Any], site_folder: Path, site: int) -> Path:
    """A site's score cache: in its folder, or under the run's ``teacher-cache-dir`` (simulation:
    a folder shared by runs, e.g. a sweep over the noise; scores are keyed by model and prompt)."""
    shared = str(settings.get(L.TEACHER_CACHE_DIR) or "")
    return (Path(shared) / f"site_{site}" if shared else site_folder / "cache") / "lm-scores.sqlite"


def _prompted_lm_teachers(request: SiteRequest, num_teachers: int, seed: int) -> SiteTeachers:
    """A language model prompted with ``shots`` of the site's labelled records per teacher, the
    sets disjoint; the model is the site's own copy of the one the run names (checked by sha256)."""
    from fedens.experts import CausalLMExpert
    from fedens.experts.prompted_teachers import PromptedTeachers, teacher_examples

    s, site = request.settings, request.site
    prompt = json.loads(str(s[L.TEACHER_PROMPT]))
    inputs, y = request.all_records()  # checked against the task's schema before anything is spent
    texts = getattr(inputs, "text", {}).get(prompt["column"])
    if texts is None:
        raise DataSchemaError(f"site {site}: {request.data_path.name} has no text column "
                              f"{prompt['column']!r}: expected the task's text beside its labels")
    try:
        examples = teacher_examples(texts, y, num_teachers, int(prompt["shots"]), seed)
    except ValueError as error:
        raise DataSchemaError(f"site {site}: {error}") from None
    try:
        lm = CausalLMExpert.from_record(json.loads(str(s[L.TEACHER_LM])))
    except ValueError as error:
        raise DataSchemaError(f"site {site}: {error}") from None
    lm.cache_path = lm_cache_path(s, request.folder, site)  # the site's own: never leaves it
    lm.cache_path.parent.mkdir(parents=True, exist_ok=True)
    teachers = PromptedTeachers.from_prompt(lm, examples, prompt)
    key = json.dumps({"teachers": num_teachers, "prompt": prompt, "seed": seed, "model": lm.model_id(),
                      "data_sha256": _records_sha256(inputs.X, y, texts)}, sort_keys=True)
    num_classes = int(task_fields(s)["num_classes"])
    return SiteTeachers(lambda queries: teachers.votes(list(queries), num_classes), teachers.num_teachers,
                        False, key)


#: the run's teacher kind (``teacher-kind``) -> how a site makes its teachers
TEACHER_KINDS: dict[str, Callable[[SiteRequest, int, int], SiteTeachers]] = {
    "cnn": _cnn_teachers, "prompted_lm": _prompted_lm_teachers}


def _site_teachers(request: SiteRequest) -> SiteTeachers:
    s = request.settings
    kind = str(s.get(L.TEACHER_KIND) or "cnn")
    num_teachers = int(json.loads(str(s[L.TEACHERS_PER_SITE]))[request.site])
    return TEACHER_KINDS[kind](request, num_teachers, teacher_seed(int(s[L.SEED]), request.site))


@site_handler(contributes=False)
def train_teachers(request: SiteRequest) -> Message:
    torch.set_num_threads(1)
    started = time.monotonic()
    teachers = _site_teachers(request)
    return request.reply(metrics=MetricRecord({
        "site": request.site, "num-teachers": teachers.num_teachers, "trained": int(teachers.trained),
        "seconds": time.monotonic() - started}))


def _mechanism_of(config: ConfigRecord) -> tuple[Mechanism, dict[str, Any]]:
    params = json.loads(str(config["params"]))
    return make_mechanism(str(config["mechanism"]), **params), params


@site_handler
def answer_votes(request: SiteRequest) -> Message:
    """Vote histogram of this site's teachers on the query batch, once its ledger holds the
    mechanism's worst case for the batch (a reservation, settled by ``query.charge``)."""
    torch.set_num_threads(1)
    config = request.msg.content["config"]
    queries = query_array(request.msg.content["queries"])
    mechanism, params = _mechanism_of(config)
    teachers = _site_teachers(request)
    batch = int(config["batch"])
    key = release_key(mechanism.name, f"site-{request.site}/run-{request.context.run_id}/batch-{batch}",
                      params=params, images=queries, teachers=teachers.key)
    with request.ledger() as ledger:
        ledger.reserve(mechanism.worst_case_events(len(queries)), mechanism=mechanism.name, release_key=key,
                       round=batch, params={**params, "queries": len(queries)}, queries=len(queries))
    votes = teachers.votes(queries)
    return request.reply(votes=ArrayRecord({"votes": as_array(votes)}),
                         metrics=MetricRecord({"site": request.site, "num-teachers": teachers.num_teachers}),
                         config=ConfigRecord({RESERVATION: key}))


@site_handler(contributes=False)
def charge_release(request: SiteRequest) -> Message:
    """Settle this site's reservation to what the coordinator's release spent."""
    config = request.msg.content["config"]
    mechanism, params = _mechanism_of(config)
    outcome = request.msg.content["outcome"]
    release = Release(mechanism.name, params, outcome["labels"].numpy(),
                      outcome["answered"].numpy().astype(bool))
    with request.ledger() as ledger:
        epsilon = ledger.settle(str(config[RESERVATION]), mechanism.event(release), mechanism=mechanism.name,
                                params={**params, "queries": len(release.labels),
                                        "answered": release.num_answered})
    return request.reply(metrics=MetricRecord({"site": request.site, "epsilon": epsilon}))


def make_pate_client_app(settings: Mapping[str, Any] | None = None) -> ClientApp:
    """The site's ClientApp for PATE; ``settings`` are defaults that ``run_config`` overrides."""
    defaults = dict(settings or {})
    app = ClientApp(mods=[record_outgoing])

    @app.train("teachers")
    def teachers(msg: Message, context: Context) -> Message:
        return train_teachers(msg, context, defaults)

    @app.query("votes")
    def votes(msg: Message, context: Context) -> Message:
        return answer_votes(msg, context, defaults)

    @app.query("charge")
    def charge(msg: Message, context: Context) -> Message:
        return charge_release(msg, context, defaults)

    return app
