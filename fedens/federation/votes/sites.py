"""PATE at a site: its teachers on disjoint shards of its records, their votes on the
coordinator's query batches once the worst case is reserved, and the settlement."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
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
from fedens.federation.site import SiteRequest, site_handler
from fedens.federation.votes import RESERVATION, as_array
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


def _site_teachers(request: SiteRequest) -> tuple[TeacherCNNs, bool, list[np.ndarray], str]:
    """The site's teachers, trained on disjoint shards of its data or loaded from its cache;
    also each shard's labels (they never leave the site) and the key naming the teachers."""
    s, site = request.settings, request.site
    num_teachers, config = int(json.loads(str(s[L.TEACHERS_PER_SITE]))[site]), _teacher_config(s)
    seed = teacher_seed(int(s[L.SEED]), site)
    shared = str(s[L.TEACHER_CACHE_DIR])
    cache = (Path(shared) / f"site_{site}" if shared else request.data_path.parent) / "teachers.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    raw, y = request.all_records()  # checked against the task's schema before anything is spent
    key = json.dumps({"teachers": num_teachers, "config": repr(config), "seed": seed,
                      "data_sha256": hashlib.sha256(raw.tobytes() + y.tobytes()).hexdigest()})
    key_file = cache.with_suffix(".json")
    if len(y) < num_teachers:
        raise DataSchemaError(f"site {site}: {len(y)} records cannot make {num_teachers} disjoint shards: "
                              f"expected at least {num_teachers} records")
    shards = teacher_shards(len(y), num_teachers, seed)
    shard_labels = [y[i] for i in shards]
    if cache.is_file() and key_file.is_file() and key_file.read_text() == key:
        return TeacherCNNs.load(cache), False, shard_labels, key
    X = raw.astype(np.float32) / 255.0
    teachers = TeacherCNNs.fit([X[i] for i in shards], shard_labels, config, seed)
    teachers.save(cache)
    write_atomic(key_file, key)
    return teachers, True, shard_labels, key


@site_handler(contributes=False)
def train_teachers(request: SiteRequest) -> Message:
    torch.set_num_threads(1)
    started = time.monotonic()
    teachers, trained, _, _ = _site_teachers(request)
    return request.reply(metrics=MetricRecord({
        "site": request.site, "num-teachers": teachers.num_teachers, "trained": int(trained),
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
    images = request.msg.content["queries"]["images"].numpy()
    mechanism, params = _mechanism_of(config)
    teachers, _, shard_labels, teachers_key = _site_teachers(request)
    batch = int(config["batch"])
    key = release_key(mechanism.name, f"site-{request.site}/run-{request.context.run_id}/batch-{batch}",
                      params=params, images=images, teachers=teachers_key)
    with request.ledger() as ledger:
        ledger.reserve(mechanism.worst_case_events(len(images)), mechanism=mechanism.name, release_key=key,
                       round=batch, params={**params, "queries": len(images)}, queries=len(images))
    strength = float(request.settings[L.TEACHER_PRIOR_CORRECTION])
    shift = label_prior_shift(shard_labels, teachers.num_classes, strength) if strength else None
    votes = teachers.votes(images.astype(np.float32) / 255.0, logit_shift=shift)
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
