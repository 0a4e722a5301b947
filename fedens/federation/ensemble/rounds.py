"""The coordinator's round loop: Flower's strategy, plus what fedens adds on top.

Flower's ``Strategy.start`` runs the rounds but cannot resume, names sites only
by random node ids and drops failed replies with a log line. This loop calls
the same strategy methods (``configure_train`` / ``aggregate_train``) and adds:

* sites by number (:class:`fedens.federation.grid.SiteGrid`), so sampling is a function
  of (seed, round) and a resumed run samples the same sites;
* every site that failed in a round, and why; a round aggregates what arrived if at
  least ``min_replies`` sites replied, else keeps the previous parameters;
* a checkpoint after each round (:mod:`fedens.federation.checkpoint`);
* every update checked before it is aggregated: the global parameters' names and shapes,
  finite values, and at most ``max_update_norm`` from the global parameters (L2 over all of
  them). A failing update is left out of the round and recorded as a ``rejected-update``
  failure naming the site and what was wrong; the round goes on with the others.

Written by hand because Flower 1.41 has no resumable round loop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy

from fedens.federation.grid import Failure, SiteGrid


@dataclass
class RoundOutcome:
    round: int
    arrays: ArrayRecord
    replies: list[RecordDict]  # the valid ones
    failures: list[Failure]
    aggregated: bool


def update_problem(want: Mapping[str, np.ndarray], reply: Message, max_update_norm: float) -> str:
    """What is wrong with the update in ``reply`` ("" if nothing): names, shapes, finiteness and
    its distance from the global parameters ``want``."""
    records = list(reply.content.array_records.values())
    if len(records) != 1:
        return f"expected one ArrayRecord of parameters, got {len(records)}"
    sent = {k: v.numpy() for k, v in records[0].items()}
    if set(sent) != set(want):
        return f"parameters {sorted(set(sent) ^ set(want))} differ from the global ones {sorted(want)}"
    for key, value in sent.items():
        if value.shape != want[key].shape:
            return f"parameter {key!r} has shape {value.shape}, expected {want[key].shape}"
        if not np.isfinite(value).all():
            return f"parameter {key!r} has non-finite values"
    norm = math.sqrt(sum(float(np.sum((sent[k].astype(np.float64) - want[k]) ** 2)) for k in sent))
    if not norm <= max_update_norm:
        return f"update norm {norm:.3g} exceeds federation.max_update_norm={max_update_norm:g}"
    return ""


def checked_replies(grid: SiteGrid, current: ArrayRecord, replies: list[Message],
                    max_update_norm: float) -> list[Message]:
    """The valid replies whose updates pass :func:`update_problem`; the others are recorded as
    failures on ``grid`` (kind ``rejected-update``)."""
    accepted, want = [], {k: v.numpy() for k, v in current.items()}
    for reply in (r for r in replies if not r.has_error()):
        if problem := update_problem(want, reply, max_update_norm):
            node = reply.metadata.src_node_id
            site = grid.site_of.get(node)
            grid.failures.append(Failure(site, node, "rejected-update", f"site {site}: {problem}"))
        else:
            accepted.append(reply)
    return accepted


def run_rounds(
    strategy: Strategy,
    grid: SiteGrid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    num_rounds: int,
    min_replies: int,
    seed: int,
    train_config: ConfigRecord,
    on_round: Callable[[RoundOutcome], None],
    max_update_norm: float = math.inf,
) -> ArrayRecord:
    """Rounds ``first_round`` .. ``num_rounds``; ``on_round`` sees each one's outcome."""
    for server_round in range(first_round, num_rounds + 1):
        random.seed(seed * 1_000_003 + server_round)  # Flower samples nodes with `random`
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = grid.send_and_receive(messages, timeout=grid.timeout)
        # in site order: aggregation then sums in the same order on every run (and resume)
        replies.sort(key=lambda r: grid.site_of.get(r.metadata.src_node_id, -1))
        valid = checked_replies(grid, arrays, replies, max_update_norm)
        aggregated = len(valid) >= min_replies
        if aggregated:
            new_arrays, _ = strategy.aggregate_train(server_round, valid)
            arrays = new_arrays if new_arrays is not None else arrays
        on_round(RoundOutcome(server_round, arrays, [r.content for r in valid], grid.take_failures(),
                              aggregated))
    return arrays
