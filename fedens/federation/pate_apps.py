"""PATE across sites: teachers stay at their site, only vote counts come back.

Message flow (Flower Message API, custom actions):

* ``train.teachers``: each site trains one teacher per disjoint shard of its
  own data (cached in its folder: a rerun with new noise does not retrain).
* ``query.votes``: the coordinator sends a batch of public, unlabelled query
  images and the mechanism it will apply; the site first checks that its
  ledger can pay the mechanism's worst case for the batch, then replies with
  its teachers' vote histogram (n, C): counts, not probabilities, not data.
* the coordinator sums the histograms and releases labels with the mechanism
  (Confident-GNMax by default); it is trusted to add the noise, as in PATE.
* ``query.charge``: the coordinator sends the public outcome (labels, which
  queries were answered); each contributing site rebuilds the release's
  DpEvents itself from it and charges its ledger.

Only the released labels and the privacy analysis are written to disk; the
summed vote histograms are private and stay in the coordinator's memory.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedens.experts.teachers import TeacherCNNs, TeacherConfig, label_prior_shift
from fedens.federation import layout as L
from fedens.privacy import BudgetExceeded, Release, make_mechanism

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


def _site_teachers(s: Mapping[str, Any], node_config: Mapping[str, Any]
                   ) -> tuple[int, TeacherCNNs, bool, list[np.ndarray]]:
    """The site's teachers, trained on disjoint shards of its data or loaded from its cache;
    also each shard's labels (they never leave the site)."""
    site, data_path, _ = L.site_paths(s, node_config)
    num_teachers, config = int(json.loads(str(s[L.TEACHERS_PER_SITE]))[site]), _teacher_config(s)
    seed = teacher_seed(int(s[L.SEED]), site)
    shared = str(s.get(L.TEACHER_CACHE_DIR) or "")
    cache = (Path(shared) / f"site_{site}" if shared else data_path.parent) / "teachers.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with np.load(data_path) as data:
        raw, y = data["X"], data["y"]
    digest = hashlib.sha256(raw.tobytes() + y.tobytes()).hexdigest()
    key = json.dumps({"teachers": num_teachers, "config": repr(config), "seed": seed, "data_sha256": digest})
    key_file = cache.with_suffix(".json")
    if len(y) < num_teachers:
        raise ValueError(f"site {site}: {len(y)} records cannot make {num_teachers} disjoint shards")
    shards = teacher_shards(len(y), num_teachers, seed)
    shard_labels = [y[i] for i in shards]
    if cache.is_file() and key_file.is_file() and key_file.read_text() == key:
        return site, TeacherCNNs.load(cache), False, shard_labels
    X = raw.astype(np.float32) / 255.0
    teachers = TeacherCNNs.fit([X[i] for i in shards], shard_labels, config, seed)
    teachers.save(cache)
    key_file.write_text(key)
    return site, teachers, True, shard_labels


def train_teachers(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    torch.set_num_threads(1)
    s = L.merged(settings, context.run_config)
    started = time.monotonic()
    site, teachers, trained, _ = _site_teachers(s, context.node_config)
    return Message(RecordDict({"metrics": MetricRecord({
        "site": site, "num-teachers": teachers.num_teachers, "trained": int(trained),
        "seconds": time.monotonic() - started})}), reply_to=msg)


def answer_votes(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    """Vote histogram of this site's teachers on the query batch, if its budget allows."""
    torch.set_num_threads(1)
    s = L.merged(settings, context.run_config)
    site, _, _ = L.site_paths(s, context.node_config)
    if not L.contributes(context.node_config):
        return Message(Error(code=L.OPTED_OUT, reason=L.opted_out_reason(site)), reply_to=msg)
    config = msg.content["config"]
    images = msg.content["queries"]["images"].numpy().astype(np.float32) / 255.0
    mechanism = make_mechanism(str(config["mechanism"]), **json.loads(str(config["params"])))
    ledger = L.open_site_ledger(s, context.node_config)
    try:
        ledger.check_budget(mechanism.worst_case_events(len(images)), mechanism=mechanism.name,
                            round=int(config["batch"]), queries=len(images))
    except BudgetExceeded as refusal:
        return Message(Error(code=L.BUDGET_REFUSED, reason=str(refusal)), reply_to=msg)
    finally:
        ledger.close()
    _, teachers, _, shard_labels = _site_teachers(s, context.node_config)
    strength = float(s.get(L.TEACHER_PRIOR_CORRECTION, 0.0))
    shift = label_prior_shift(shard_labels, teachers.num_classes, strength) if strength else None
    votes = teachers.votes(images, logit_shift=shift)
    return Message(RecordDict({
        "votes": ArrayRecord({"votes": _array(votes)}),
        "metrics": MetricRecord({"site": site, "num-teachers": teachers.num_teachers}),
    }), reply_to=msg)


def charge_release(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    """Charge this site's ledger with what the coordinator's release spent."""
    s = L.merged(settings, context.run_config)
    config = msg.content["config"]
    params = json.loads(str(config["params"]))
    mechanism = make_mechanism(str(config["mechanism"]), **params)
    outcome = msg.content["outcome"]
    release = Release(mechanism.name, params, outcome["labels"].numpy(),
                      outcome["answered"].numpy().astype(bool))
    ledger = L.open_site_ledger(s, context.node_config)
    try:
        epsilon = ledger.charge(
            mechanism.event(release), mechanism=mechanism.name, round=int(config["batch"]),
            params={**params, "queries": len(release.labels), "answered": release.num_answered},
            worst_case=dp_accounting.ComposedDpEvent(mechanism.worst_case_events(len(release.labels))))
    except BudgetExceeded as refusal:  # cannot happen after check_budget, unless shared
        return Message(Error(code=L.BUDGET_REFUSED, reason=str(refusal)), reply_to=msg)
    finally:
        ledger.close()
    return Message(RecordDict({"metrics": MetricRecord({"site": int(ledger.site), "epsilon": epsilon})}),
                   reply_to=msg)


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
    replies = list(grid.send_and_receive(
        [Message(RecordDict(dict(records)), dst_node_id=n, message_type=kind) for n in nodes],
        timeout=timeout))
    ok = [r for r in replies if not r.has_error()]
    failed = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    failed += [f"{len(nodes) - len(replies)} site(s) did not reply"] if len(replies) < len(nodes) else []
    return ok, failed


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
    labels, answered, all_votes, refused, batches, teachers = [], [], [], 0, [], 0
    batch_size = int(s[L.QUERY_BATCH])
    for b, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start: start + batch_size]
        replies, failed = _send(grid, nodes, "query.votes", {
            "config": ConfigRecord({**config, "batch": b}),
            "queries": ArrayRecord({"images": _array(batch)})}, timeout)
        if not replies:
            refused += len(batch)
            labels.append(np.full(len(batch), -1))
            answered.append(np.zeros(len(batch), dtype=bool))
            all_votes.append(np.zeros((len(batch), 10), dtype=np.int64))
            say(f"queries  batch {b}: no site contributed ({failed})")
            continue
        votes = sum(r.content["votes"]["votes"].numpy() for r in replies)
        voting = _num_teachers(replies)
        teachers = max(teachers, voting)
        release = mechanism.release(votes, rng)
        contributors = [r.metadata.src_node_id for r in replies]
        charged, charge_failed = _send(grid, contributors, "query.charge", {
            "config": ConfigRecord({**config, "batch": b}),
            "outcome": ArrayRecord({"labels": _array(release.labels),
                                    "answered": _array(release.answered.astype(np.int64))})}, timeout)
        labels.append(release.labels)
        answered.append(release.answered)
        all_votes.append(votes)
        eps = max((r.content["metrics"]["epsilon"] for r in charged), default=0.0)
        batches.append({"batch": b, "queries": len(batch), "answered": release.num_answered,
                        "sites": len(replies), "teachers": voting, "failed": failed + charge_failed,
                        "epsilon_max": eps})
        say(f"queries  batch {b}: {release.num_answered}/{len(batch)} answered by {len(replies)} sites"
            f"{'' if not failed else f' ({len(failed)} refused)'}; site ε_max {eps:.2f} "
            f"[{time.monotonic() - started:.0f} s]")
    _write_outcome(s, mechanism, np.concatenate(labels), np.concatenate(answered),
                   np.concatenate(all_votes), refused, batches, teachers, retrained,
                   time.monotonic() - started)


def _write_outcome(s: Mapping[str, Any], mechanism: Any, labels: np.ndarray, answered: np.ndarray,
                   votes: np.ndarray, refused: int, batches: list, teachers: int, retrained: int,
                   seconds: float) -> None:
    """Released labels and the privacy analysis; the private votes are not written."""
    from fedens.privacy import analyze_pate

    out = L.federation_dir(s[L.RUN_DIR])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "released_labels.npz", labels=labels, answered=answered)
    asked = votes.sum(axis=1) > 0
    analysis = None
    if mechanism.name == "confident_gnmax" and asked.any():
        p = mechanism.params()
        analysis = analyze_pate(votes[asked], sigma=p["sigma2"], delta=float(s[L.DELTA]),
                                threshold=p["threshold"], sigma_threshold=p["sigma1"],
                                answered=answered[asked]).as_dict()
        if s.get(L.SMOOTH_SENSITIVITY):
            analysis["smooth_sensitivity_release"] = _release_data_dependent(
                s, p, votes[asked], answered[asked], teachers)
    report = {"teachers": teachers, "sites_that_trained_teachers": retrained,
              "queries": len(labels), "answered": int(answered.sum()), "refused": refused,
              "batches": batches, "analysis": analysis, "seconds": seconds}
    tmp = out / "pate.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "pate.json")


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
        coordinate_pate(grid, L.merged(defaults, context.run_config), progress)

    return app


def pool_file(path: Path, images: np.ndarray) -> None:
    """Write the coordinator's public query pool (uint8 images)."""
    np.savez(path, images=(np.clip(images, 0, 1) * 255).round().astype(np.uint8))
