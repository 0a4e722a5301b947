"""The coordinator's round loop: Flower's strategy, plus what fedens adds on top.

Flower's ``Strategy.start`` runs the rounds but cannot resume, names sites only
by random node ids and drops failed replies with a log line. This loop calls
the same strategy methods (``configure_train`` / ``aggregate_train``) and adds:

* sites by number (:class:`fedens.federation.grid.SiteGrid`), so sampling is a function
  of (seed, round) and a resumed run samples the same sites;
* every site that failed in a round, and why; a round aggregates what arrived if at
  least ``min_replies`` sites replied, else keeps the previous parameters;
* a checkpoint after each round (:mod:`fedens.federation.checkpoint`).

Written by hand because Flower 1.41 has no resumable round loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedens.federation.grid import Failure, SiteGrid


@dataclass
class RoundOutcome:
    round: int
    arrays: ArrayRecord
    replies: list[RecordDict]  # the valid ones
    failures: list[Failure]
    aggregated: bool


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
) -> ArrayRecord:
    """Rounds ``first_round`` .. ``num_rounds``; ``on_round`` sees each one's outcome."""
    for server_round in range(first_round, num_rounds + 1):
        random.seed(seed * 1_000_003 + server_round)  # Flower samples nodes with `random`
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = grid.send_and_receive(messages, timeout=grid.timeout)
        # in site order: aggregation then sums in the same order on every run (and resume)
        replies.sort(key=lambda r: grid.site_of.get(r.metadata.src_node_id, -1))
        valid = [r for r in replies if not r.has_error()]
        aggregated = len(valid) >= min_replies
        if aggregated:
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
            arrays = new_arrays if new_arrays is not None else arrays
        on_round(RoundOutcome(server_round, arrays, [r.content for r in valid], grid.take_failures(),
                              aggregated))
    return arrays
