"""PATE across sites: teachers stay at their site, only vote counts come back.

Message flow (Flower Message API, custom actions):

* ``train.teachers``: each site trains one teacher per disjoint shard of its
  own data (cached in its folder: a rerun with new noise does not retrain).
* ``query.votes``: the coordinator sends a batch of public, unlabelled query
  images and the mechanism it will apply; the site reserves the mechanism's
  worst case for the batch in its ledger (one transaction: refused if it does
  not fit), then replies with its teachers' vote histogram (n, C) and the
  reservation's key: counts, not probabilities, not data.
* the coordinator sums the histograms and releases labels with the mechanism
  (Confident-GNMax by default); it is trusted to add the noise, as in PATE.
* ``query.charge``: the coordinator sends the public outcome (labels, which
  queries were answered) and each site's reservation key; each contributing
  site rebuilds the release's DpEvents itself from it and settles its
  reservation to what the release spent. A batch whose settlement failed at
  any site is dropped (its labels are not used); its reservation stays at the
  worst case, which is what the site may have spent.

Only the released labels and the privacy analysis are written to disk; the
summed vote histograms are private and stay in the coordinator's memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedens.data.schema import DataSchemaError
from fedens.experts.teachers import TeacherCNNs, TeacherConfig, label_prior_shift
from fedens.federation import layout as L
from fedens.federation.site import SiteRequest, site_handler
from fedens.privacy import Mechanism, Release, make_mechanism
from fedens.privacy.release_keys import release_key

RESERVATION = "reservation"  # a vote reply's release key, echoed back to settle it

ProgressFn = Callable[[str], None]


# --- site ------------------------------------------------------------------------------


def _teacher_config(s: Mapping[str, Any]) -> TeacherConfig:
    c1, c2 = (int(c) for c in str(s[L.TEACHER_CHANNELS]).split(","))
    return TeacherConfig((c1, c2), int(s[L.TEACHER_STEPS]), int(s[L.TEACHER_BATCH]), float(s[L.TEACHER_LR]),
                         float(s.get(L.TEACHER_SHIFT, 0.0)), float(s.get(L.TEACHER_ROTATE, 0.0)))


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
    shared = str(s.get(L.TEACHER_CACHE_DIR) or "")
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
    L.write_atomic(key_file, key)
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
    strength = float(request.settings.get(L.TEACHER_PRIOR_CORRECTION, 0.0))
    shift = label_prior_shift(shard_labels, teachers.num_classes, strength) if strength else None
    votes = teachers.votes(images.astype(np.float32) / 255.0, logit_shift=shift)
    return request.reply(votes=ArrayRecord({"votes": _array(votes)}),
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
    app = ClientApp()

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


# --- coordinator -----------------------------------------------------------------------


def _array(x: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(np.ascontiguousarray(x))


def _num_teachers(replies: list[Message]) -> int:
    return int(sum(r.content["metrics"]["num-teachers"] for r in replies))


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of {count} sites connected within {timeout:g} s")
        time.sleep(1.0)
    return sorted(node_ids)


def _send(grid: Grid, nodes: list[int], kind: str, records: dict[str, Any],
          timeout: float) -> tuple[list[Message], list[str]]:
    """Send the same (read-only) records to every node; replies split into ok and failed."""
    return _ask(grid, [Message(RecordDict(dict(records)), dst_node_id=n, message_type=kind) for n in nodes],
                timeout)


def _ask(grid: Grid, messages: list[Message], timeout: float) -> tuple[list[Message], list[str]]:
    """Send ``messages``; the replies split into ok and failed (errors and missing replies)."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    ok = [r for r in replies if not r.has_error()]
    failed = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    if len(replies) < len(messages):
        failed.append(f"{len(messages) - len(replies)} site(s) did not reply")
    return ok, failed


def _settlement(votes: Message, config: dict[str, Any], outcome: ArrayRecord) -> Message:
    """The ``query.charge`` message settling the reservation a site's vote reply named."""
    reservation = str(votes.content["config"][RESERVATION])
    return Message(RecordDict({"config": ConfigRecord({**config, RESERVATION: reservation}),
                               "outcome": outcome}),
                   dst_node_id=votes.metadata.src_node_id, message_type="query.charge")


def coordinate_pate(grid: Grid, s: Mapping[str, Any], progress: ProgressFn | None) -> None:
    """Train teachers at the sites, label the query pool privately, write the outcome."""
    say = progress or (lambda line: None)
    timeout = float(s[L.ROUND_TIMEOUT])
    nodes = wait_for_sites(grid, int(s[L.MIN_SITES]), timeout)
    started = time.monotonic()
    replies, failed = _send(grid, nodes, "train.teachers", {"config": ConfigRecord({})},
                            float(s.get(L.TEACHER_TIMEOUT, timeout)))
    retrained = int(sum(r.content["metrics"]["trained"] for r in replies))
    say(f"teachers  {_num_teachers(replies)} at {len(replies)} "
        f"sites ({retrained} sites trained, the rest cached) [{time.monotonic() - started:.0f} s]"
        + (f"; failed: {failed}" if failed else ""))

    with np.load(s[L.POOL_PATH]) as pool:
        images = pool["images"][: int(s[L.NUM_QUERIES])]
    mechanism = make_mechanism(str(s[L.MECHANISM]), **json.loads(str(s[L.MECHANISM_PARAMS])))
    config = {"mechanism": mechanism.name, "params": json.dumps(mechanism.params())}
    rng = np.random.default_rng(int(s[L.SEED]))
    # teachers are counted from the votes: a site that missed the training deadline may still
    # finish (its teachers cached) and vote
    out = _Labelling()
    batch_size = int(s[L.QUERY_BATCH])
    for b, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start: start + batch_size]
        replies, failed = _send(grid, nodes, "query.votes", {
            "config": ConfigRecord({**config, "batch": b}),
            "queries": ArrayRecord({"images": _array(batch)})}, timeout)
        if not replies:
            out.refused += len(batch)
            out.add(np.full(len(batch), -1), np.zeros(len(batch), dtype=bool),
                    np.zeros((len(batch), 10), dtype=np.int64), settled=False)
            say(f"queries  batch {b}: no site contributed ({failed})")
            continue
        votes = sum(r.content["votes"]["votes"].numpy() for r in replies)
        voting = _num_teachers(replies)
        out.teachers = max(out.teachers, voting)
        release = mechanism.release(votes, rng)
        outcome = ArrayRecord({"labels": _array(release.labels),
                               "answered": _array(release.answered.astype(np.int64))})
        charged, unsettled = _ask(grid, [_settlement(r, {**config, "batch": b}, outcome)
                                         for r in replies], timeout)
        out.add(release.labels, release.answered, votes, settled=not unsettled)
        eps = max((r.content["metrics"]["epsilon"] for r in charged), default=0.0)
        kept = 0 if unsettled else release.num_answered
        out.batches.append({"batch": b, "queries": len(batch), "answered": release.num_answered,
                            "used": kept, "sites": len(replies), "teachers": voting,
                            "failed": failed + unsettled, "epsilon_max": eps})
        say(f"queries  batch {b}: {release.num_answered}/{len(batch)} answered by {len(replies)} sites"
            f"{'' if not failed else f' ({len(failed)} refused)'}; site ε_max {eps:.2f} "
            + (f"; labels dropped: {len(unsettled)} site(s) did not settle ({unsettled[0]}) "
               if unsettled else "") + f"[{time.monotonic() - started:.0f} s]")
    _write_outcome(s, mechanism, out, retrained, time.monotonic() - started)


@dataclass
class _Labelling:
    """What the query batches released, batch after batch."""

    labels: list[np.ndarray] = field(default_factory=list)
    answered: list[np.ndarray] = field(default_factory=list)  # by the mechanism: what it spent
    used: list[np.ndarray] = field(default_factory=list)  # answered, and settled at every site
    votes: list[np.ndarray] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    teachers: int = 0

    def add(self, labels: np.ndarray, answered: np.ndarray, votes: np.ndarray, *, settled: bool) -> None:
        self.labels.append(labels)
        self.answered.append(answered)
        self.used.append(answered if settled else np.zeros_like(answered))
        self.votes.append(votes)


def _write_outcome(s: Mapping[str, Any], mechanism: Any, out: _Labelling, retrained: int,
                   seconds: float) -> None:
    """The labels to use and the privacy analysis; the private votes are not written. The
    analysis counts every query the mechanism answered, a dropped one too."""
    from fedens.privacy import analyze_pate

    folder = L.federation_dir(s[L.RUN_DIR])
    folder.mkdir(parents=True, exist_ok=True)
    labels, used = np.concatenate(out.labels), np.concatenate(out.used)
    answered, votes = np.concatenate(out.answered), np.concatenate(out.votes)
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels, answered=used)
    L.write_atomic(folder / "released_labels.npz", buffer.getvalue())
    asked = votes.sum(axis=1) > 0
    analysis = None
    if mechanism.name == "confident_gnmax" and asked.any():
        p = mechanism.params()
        analysis = analyze_pate(votes[asked], sigma=p["sigma2"], delta=float(s[L.DELTA]),
                                threshold=p["threshold"], sigma_threshold=p["sigma1"],
                                answered=answered[asked]).as_dict()
        if s.get(L.SMOOTH_SENSITIVITY):
            analysis["smooth_sensitivity_release"] = _release_data_dependent(
                s, p, votes[asked], answered[asked], out.teachers)
    report = {"teachers": out.teachers, "sites_that_trained_teachers": retrained,
              "queries": len(labels), "answered": int(used.sum()),
              "answered_unsettled": int(answered.sum() - used.sum()), "refused": out.refused,
              "batches": out.batches, "analysis": analysis, "seconds": seconds}
    L.write_atomic(folder / "pate.json", json.dumps(report, indent=1))


def _release_data_dependent(s: Mapping[str, Any], p: Mapping[str, float], votes: np.ndarray,
                            answered: np.ndarray, teachers: int) -> dict[str, Any]:
    """The data-dependent cost, published with smooth-sensitivity noise (GNSS, Papernot
    et al. 2018 Sec. 4), at an order, beta and noise scale fixed before any vote."""
    from dataclasses import asdict

    from fedens.privacy.smooth_sensitivity import release_data_dependent_rdp

    ss = json.loads(str(s[L.SMOOTH_SENSITIVITY]))
    release = release_data_dependent_rdp(
        votes, sigma=p["sigma2"], order=float(ss["order"]), beta=float(ss["beta"]),
        sigma_ss=float(ss["sigma_ss"]), delta=float(s[L.DELTA]), num_teachers=teachers,
        rng=np.random.default_rng([int(s[L.SEED]), 2018]), threshold=p["threshold"],
        sigma_threshold=p["sigma1"], answered=answered)
    return {**asdict(release), "label": (
        "the data-dependent cost released with smooth-sensitivity noise: a DP estimate (plus the "
        "release's own cost, gnss_rdp at this order, which no ledger holds: dp-accounting has no "
        "single-order RDP event), not a worst-case guarantee")}


def make_pate_server_app(settings: Mapping[str, Any] | None = None,
                         progress: ProgressFn | None = None) -> ServerApp:
    """The coordinator's ServerApp for PATE."""
    defaults = dict(settings or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = L.merged(defaults, context.run_config)
        with L.failure_recorded(settings[L.RUN_DIR]):
            coordinate_pate(grid, settings, progress)

    return app


def pool_file(path: Path, images: np.ndarray) -> None:
    """Write the coordinator's public query pool (uint8 images)."""
    np.savez(path, images=(np.clip(images, 0, 1) * 255).round().astype(np.uint8))
