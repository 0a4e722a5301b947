"""PATE at the coordinator: teachers made at the sites, the query pool (images or texts)
labelled batch by batch with the mechanism over the sites' summed votes, each batch settled at
every site."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedens.federation import layout as L
from fedens.federation.grid import coordinator_app, wait_for_sites
from fedens.federation.votes import QUERY_KEYS, RESERVATION, as_array
from fedens.files import npz_bytes, write_atomic
from fedens.privacy import make_mechanism

ProgressFn = Callable[[str], None]


def _num_teachers(replies: list[Message]) -> int:
    return int(sum(r.content["metrics"]["num-teachers"] for r in replies))


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
                            float(s[L.TEACHER_TIMEOUT]))
    retrained = int(sum(r.content["metrics"]["trained"] for r in replies))
    say(f"teachers  {_num_teachers(replies)} at {len(replies)} "
        f"sites ({retrained} sites trained, the rest cached) [{time.monotonic() - started:.0f} s]"
        + (f"; failed: {failed}" if failed else ""))

    with np.load(s[L.POOL_PATH]) as pool:
        kind = next(k for k in QUERY_KEYS if k in pool.files)  # images or texts
        queries = pool[kind][: int(s[L.NUM_QUERIES])]
    num_classes = int(json.loads(str(s[L.TASK_SCHEMA]))["num_classes"])
    mechanism = make_mechanism(str(s[L.MECHANISM]), **json.loads(str(s[L.MECHANISM_PARAMS])))
    config = {"mechanism": mechanism.name, "params": json.dumps(mechanism.params())}
    rng = np.random.default_rng(int(s[L.SEED]))
    # teachers are counted from the votes: a site that missed the training deadline may still
    # finish (its teachers cached) and vote
    out = _Labelling()
    batch_size = int(s[L.QUERY_BATCH])
    for b, start in enumerate(range(0, len(queries), batch_size)):
        batch = queries[start: start + batch_size]
        replies, failed = _send(grid, nodes, "query.votes", {
            "config": ConfigRecord({**config, "batch": b}),
            "queries": ArrayRecord({kind: as_array(batch)})}, timeout)
        if not replies:
            out.refused += len(batch)
            out.add(np.full(len(batch), -1), np.zeros(len(batch), dtype=bool),
                    np.zeros((len(batch), num_classes), dtype=np.int64), settled=False)
            say(f"queries  batch {b}: no site contributed ({failed})")
            continue
        votes = sum(r.content["votes"]["votes"].numpy() for r in replies)
        voting = _num_teachers(replies)
        out.teachers = max(out.teachers, voting)
        release = mechanism.release(votes, rng)
        outcome = ArrayRecord({"labels": as_array(release.labels),
                               "answered": as_array(release.answered.astype(np.int64))})
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
    write_atomic(folder / "released_labels.npz", npz_bytes(labels=labels, answered=used))
    asked = votes.sum(axis=1) > 0
    analysis = None
    p = mechanism.pate_analysis_params()
    if p is not None and asked.any():
        analysis = analyze_pate(votes[asked], delta=float(s[L.DELTA]), answered=answered[asked],
                                **p).as_dict()
        if s[L.SMOOTH_SENSITIVITY]:
            analysis["smooth_sensitivity_release"] = _release_data_dependent(
                s, p, votes[asked], answered[asked], out.teachers)
    report = {"teachers": out.teachers, "sites_that_trained_teachers": retrained,
              "queries": len(labels), "answered": int(used.sum()),
              "answered_unsettled": int(answered.sum() - used.sum()), "refused": out.refused,
              "batches": out.batches, "analysis": analysis, "seconds": seconds}
    write_atomic(folder / "pate.json", json.dumps(report, indent=1))


def _release_data_dependent(s: Mapping[str, Any], p: Mapping[str, float], votes: np.ndarray,
                            answered: np.ndarray, teachers: int) -> dict[str, Any]:
    """The data-dependent cost, published with smooth-sensitivity noise (GNSS, Papernot
    et al. 2018 Sec. 4), at an order, beta and noise scale fixed before any vote."""
    from dataclasses import asdict

    from fedens.privacy.smooth_sensitivity import release_data_dependent_rdp

    ss = json.loads(str(s[L.SMOOTH_SENSITIVITY]))
    release = release_data_dependent_rdp(
        votes, order=float(ss["order"]), beta=float(ss["beta"]), sigma_ss=float(ss["sigma_ss"]),
        delta=float(s[L.DELTA]), num_teachers=teachers,
        rng=np.random.default_rng([int(s[L.SEED]), 2018]), answered=answered, **p)
    return {**asdict(release), "label": (
        "the data-dependent cost released with smooth-sensitivity noise: a DP estimate (plus the "
        "release's own cost, gnss_rdp at this order, which no ledger holds: dp-accounting has no "
        "single-order RDP event), not a worst-case guarantee")}


def make_pate_server_app(settings: Mapping[str, Any] | None = None,
                         progress: ProgressFn | None = None) -> ServerApp:
    """The coordinator's ServerApp for PATE."""
    return coordinator_app(coordinate_pate, settings, progress)


def pool_file(path: Path, images: np.ndarray) -> None:
    """Write the coordinator's public query pool (uint8 images)."""
    write_atomic(path, npz_bytes(images=(np.clip(images, 0, 1) * 255).round().astype(np.uint8)))


def text_pool_file(path: Path, texts: np.ndarray) -> None:
    """Write the coordinator's public query pool of texts (unicode, read without pickle)."""
    write_atomic(path, npz_bytes(texts=np.asarray(texts, dtype=str)))
