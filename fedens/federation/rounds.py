"""The coordinator's round loop: Flower's strategy, plus what fedens adds on top.

Flower's ``Strategy.start`` runs the rounds but cannot resume, names sites only
by random node ids and drops failed replies with a log line. This loop calls
the same strategy methods (``configure_train`` / ``aggregate_train``) and adds:

* a roll call that maps node ids to site numbers, so sampling is a function of
  (seed, round) and a resumed run samples the same sites;
* a record of every site that failed in a round, and why (raised, refused,
  no reply before the round timeout); a round aggregates what arrived if at
  least ``min_replies`` sites replied, else keeps the previous parameters;
* a checkpoint after each round (:mod:`fedens.federation.checkpoint`).

Written by hand because Flower 1.41 has no resumable round loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedens.federation import layout as L


def short_reason(text: str, limit: int = 300) -> str:
    """The line of an error reply that says what went wrong (Ray wraps it in tracebacks)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    said = [line.split("Message: ", 1)[1] for line in lines if "Message: " in line]
    reason = (said or lines or ["(no reason given)"])[-1].rstrip("'>")
    return reason[:limit]


@dataclass
class Failure:
    site: int | None  # None: a node that never answered the roll call
    node: int
    kind: str  # "error" (raised) | "refused" (budget) | "opted-out" | "timeout"
    reason: str
    code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "node": self.node, "kind": self.kind, "code": self.code,
                "reason": self.reason}


@dataclass
class SiteGrid:
    """A Flower ``Grid`` whose nodes are known by site number and whose failures are kept."""

    grid: Grid
    timeout: float
    site_of: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def roll_call(self, nodes: Iterable[int]) -> None:
        """Ask ``nodes`` which site they are; nodes that do not answer stay unknown."""
        asked = [Message(RecordDict(), dst_node_id=n, message_type=L.ROLL_CALL) for n in nodes]
        for reply in self.grid.send_and_receive(asked, timeout=self.timeout):
            if not reply.has_error():
                self.site_of[reply.metadata.src_node_id] = int(reply.content["metrics"]["site"])

    def get_node_ids(self) -> list[int]:
        """Connected nodes that answered the roll call, in site order."""
        nodes = list(self.grid.get_node_ids())
        if unknown := [n for n in nodes if n not in self.site_of]:
            self.roll_call(unknown)
        return sorted((n for n in nodes if n in self.site_of), key=self.site_of.__getitem__)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {r.metadata.src_node_id for r in replies}
        for reply in replies:
            if reply.has_error():
                node = reply.metadata.src_node_id
                code = int(reply.error.code)
                kind = {L.BUDGET_REFUSED: "refused", L.OPTED_OUT: "opted-out"}.get(code, "error")
                self.failures.append(Failure(self.site_of.get(node), node, kind,
                                             short_reason(reply.error.reason), code))
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in answered:
                self.failures.append(Failure(self.site_of.get(node), node, "timeout",
                                             f"no reply within {timeout:g} s"))
        return replies

    def take_failures(self) -> list[Failure]:
        failures, self.failures = self.failures, []
        return failures


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
