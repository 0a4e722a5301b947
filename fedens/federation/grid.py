"""The coordinator's view of its sites: Flower's ``Grid`` with nodes known by site number, every
failed reply recorded with its reason, and the roll call that ships each site the shared files.

Flower names sites by random node ids and drops failed replies with a log line; the protocols
(training rounds, histogram release, PATE votes) need site numbers (sampling by (seed, round),
reports per site) and a record of who failed and why. Written by hand because Flower 1.41 has
neither.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedens.federation import layout as L
from fedens.federation.shipping import PAYLOAD, SHIP, Shipment


def coordinator_app(coordinate: Callable[[Grid, Mapping[str, Any], Any], None],
                    settings: Mapping[str, Any] | None = None, progress: Any = None,
                    unprepared: Callable[[Grid, Context], None] | None = None) -> ServerApp:
    """A ServerApp running ``coordinate(grid, settings, progress)``: ``settings`` are defaults
    that the run's ``run_config`` overrides; a failure is written to the run directory. When the
    settings name no run directory (``flwr run .`` alone), ``unprepared(grid, context)`` runs
    instead: it prepares a run and coordinates it."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    defaults = dict(settings or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        merged = L.merged(defaults, context.run_config)
        if not merged.get(L.RUN_DIR):
            if unprepared is None:
                raise ValueError(f"run_config has no {L.RUN_DIR!r}: start the run with fedens run")
            return unprepared(grid, context)
        with L.failure_recorded(merged[L.RUN_DIR]), single_threaded_blas():
            coordinate(grid, merged, progress)

    return app


def single_threaded_blas() -> Any:
    """BLAS on one thread while the coordinator runs. Flower runs a ServerApp in a thread of a
    process that also starts the simulation's Ray workers; a fork during a multi-threaded
    OpenBLAS call can leave the call waiting forever for its thread pool (seen here: a multirun
    job stuck in ``exec_blas`` inside the coordinator's expert outputs). The coordinator's own
    numerics are small (the test split, the aggregates), so one thread costs nothing."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def short_reason(text: str, limit: int = 300) -> str:
    """The line of an error reply that says what went wrong (Ray wraps it in tracebacks)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    said = [line.split("Message: ", 1)[1] for line in lines if "Message: " in line]
    reason = (said or lines or ["(no reason given)"])[-1].rstrip("'>")
    return reason[:limit]


#: a refusal's error code -> the failure's kind ("error": raised; "timeout": no reply)
FAILURE_KINDS = {L.BUDGET_REFUSED: "refused", L.OPTED_OUT: "opted-out", L.DATA_INVALID: "invalid-data",
                 L.SHARED_FILE_MISSING: "shared-file-missing", L.ENDPOINT_REFUSED: "endpoint-refused"}


@dataclass
class Failure:
    site: int | None  # None: a node that never answered the roll call
    node: int
    kind: str  # a FAILURE_KINDS value, "error" (raised) or "timeout"
    reason: str
    code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "node": self.node, "kind": self.kind, "code": self.code,
                "reason": self.reason}


def parse_site_nodes(text: str) -> dict[int, int]:
    """``"0=4021,1=977"`` (site=node id, as ``flwr supernode register`` printed it) as a dict;
    ``""``: no binding. ValueError names an entry that is not ``site=node``."""
    bound: dict[int, int] = {}
    for entry in filter(None, (e.strip() for e in str(text).split(","))):
        site, _, node = entry.partition("=")
        if not (site.strip().isdigit() and node.strip().isdigit()):
            raise ValueError(f"site-nodes entry {entry!r}: expected site=node-id, e.g. 0=4021")
        bound[int(site)] = int(node)
    return bound


@dataclass
class SiteGrid:
    """A Flower ``Grid`` whose nodes are known by site number and whose failures are kept.

    A node's site is what it answers at the roll call. A claim is refused (failure kind
    ``wrong-site``, once per node; the node is not asked again) when ``site_nodes`` binds the
    site to another node id, or, without a binding, when another connected node already holds
    the site. In deployment a node id stands for a registered public key that Flower's SuperNode
    authentication checks on every request, so a binding makes a site's identity its key.
    """

    grid: Grid
    timeout: float
    shipment: Shipment | None = None  # the shared files sites must hold (None: sites have their own)
    site_nodes: dict[int, int] = field(default_factory=dict)  # site -> the only node id it may be
    site_of: dict[int, int] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    failures: list[Failure] = field(default_factory=list)
    logged: set[tuple[int, str]] = field(default_factory=set)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def _claim(self, node: int, site: int, connected: set[int]) -> None:
        holders = [n for n, s in self.site_of.items() if s == site and n in connected and n != node]
        holder = holders[0] if holders else None
        if site in self.site_nodes and self.site_nodes[site] != node:
            why = f"the run binds site {site} to node {self.site_nodes[site]} (federation.site_nodes)"
        elif self.site_nodes and site not in self.site_nodes:
            why = f"federation.site_nodes binds no node to site {site}"
        elif holder is not None:
            why = f"node {holder} already holds site {site}"
        else:
            self.site_of[node] = site
            return
        self.refused.add(node)
        reason = f"node {node} claims site {site}: refused, {why}"
        log(WARNING, "fedens: %s", reason)
        self.failures.append(Failure(site, node, "wrong-site", reason))

    def roll_call(self, nodes: Iterable[int], connected: Iterable[int] = ()) -> None:
        """Ask ``nodes`` which site they are, and ship them the shared files they lack. Nodes
        that do not answer, or fail to take their files, stay unknown and are asked again when
        the strategy next looks for nodes (while they start, that is normal; errors are logged).
        A claim to a site bound to, or held by, another of the ``connected`` nodes is refused."""
        nodes = list(nodes)
        connected = {*connected, *nodes}
        config = ConfigRecord(self.shipment.announcement() if self.shipment else {})
        content: dict[str, ConfigRecord | ArrayRecord] = {"config": config}
        if self.shipment and self.shipment.inline():
            content[PAYLOAD] = self.shipment.payload(self.shipment.files)
        asked = [Message(RecordDict(content), dst_node_id=n, message_type=L.ROLL_CALL) for n in nodes]
        lacking: dict[int, list[str]] = {}
        for reply in self._ask(asked):
            node = reply.metadata.src_node_id
            self._claim(node, int(reply.content["metrics"]["site"]), connected)
            if node not in self.site_of:
                continue
            said = reply.content.config_records.get("config", ConfigRecord())
            if keys := [k for k in str(said.get("missing", "")).split(",") if k]:
                lacking[node] = keys
        if not lacking or self.shipment is None:
            return
        shipped = [Message(RecordDict({PAYLOAD: self.shipment.payload(keys), "config": config}),
                           dst_node_id=node, message_type=SHIP) for node, keys in lacking.items()]
        received = {r.metadata.src_node_id for r in self._ask(shipped)}
        for node in set(lacking) - received:
            del self.site_of[node]

    def _ask(self, messages: list[Message]) -> list[Message]:
        """The valid replies; an error reply is logged (once per node and reason)."""
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        for reply in (r for r in replies if r.has_error()):
            said = (reply.metadata.src_node_id, short_reason(reply.error.reason))
            if said not in self.logged:
                self.logged.add(said)
                log(WARNING, "fedens: node %s failed the roll call or its shipment: %s", *said)
        return [r for r in replies if not r.has_error()]

    def get_node_ids(self) -> list[int]:
        """Connected nodes that answered the roll call, in site order."""
        nodes = list(self.grid.get_node_ids())
        if unknown := [n for n in nodes if n not in self.site_of and n not in self.refused]:
            self.roll_call(unknown, connected=nodes)
        return sorted((n for n in nodes if n in self.site_of), key=self.site_of.__getitem__)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set when sent
        nodes = {m.metadata.dst_node_id for m in messages}
        answered = {self.replier(r, nodes, asked) for r in replies}
        for reply in replies:
            if reply.has_error():
                node = self.replier(reply, nodes, asked)
                code = int(reply.error.code)
                kind = FAILURE_KINDS.get(code, "error")
                self.failures.append(Failure(self.site_of.get(node), node, kind,
                                             short_reason(reply.error.reason), code))
                if code == L.SHARED_FILE_MISSING:  # asked again, and shipped the file, next round
                    self.site_of.pop(node, None)
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in answered:
                self.failures.append(Failure(self.site_of.get(node), node, "timeout",
                                             f"no reply within {timeout:g} s"))
        return replies

    @staticmethod
    def replier(reply: Message, nodes: set[int], asked: Mapping[str, int]) -> int:
        """The node a reply answers for: its sender if it was asked, or, when the SuperLink answers
        for a node it has lost ("Node Unavailable", from its own id), the node the replied-to
        message went to."""
        source = reply.metadata.src_node_id
        return source if source in nodes else asked.get(reply.metadata.reply_to_message_id, source)

    def take_failures(self) -> list[Failure]:
        failures, self.failures = self.failures, []
        return failures


def wait_for_sites(grid: Grid, count: int, timeout: float) -> list[int]:
    """The node ids once ``count`` nodes are connected; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of {count} sites connected within {timeout:g} s")
        time.sleep(1.0)
    return sorted(node_ids)
