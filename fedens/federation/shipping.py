"""The network's public artefacts (shared experts, initial combiner), shipped by the coordinator
to its sites in Flower messages and kept by each site in a cache named by content (sha256).

Only public artefacts travel: the experts and the initial combiner's input map are fit on the
public split (``experiment._prepare``). The protocol, on top of the roll call:

1. the coordinator announces ``{key: sha256}`` in the roll call; each site answers which files
   it lacks (not cached, or a cached copy whose bytes no longer match its name). Files up to
   the run setting ``ship-inline-bytes`` (``federation.ship_inline_bytes``; 0: always ship) in
   all travel with the roll call itself (the quickstart's: 254 KB), which saves every site a
   message, hence a ClientApp process start, per run;
2. larger files go only to the sites that lack them, as ``uint8`` arrays of an ``ArrayRecord``
   (message type ``query.ship``). Flower (>= 1.20) splits array buffers into 5 MiB chunks itself
   (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), so a file of any size fits one message. A site
   checks the sha256 and writes the file atomically to ``<its folder>/cache/shared/<sha256>``;
3. every train and evaluate message repeats the announcement; the site then reads the files
   from its cache, or from its own copy if its node_config names one, after checking the hash.

The hash checks integrity against the announcement, not the coordinator's intent: a site runs
the coordinator's shipped app code (``flwr run``); the experts it sent load without running
code from the file (skops, :func:`fedens.experts.load_experts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedens.federation import layout as L
from fedens.files import sha256_bytes, sha256_file, write_atomic

SHARED = (L.EXPERTS_PATH, L.INITIAL_COMBINER_PATH)  # the run settings that name shared files
SHIP = "query.ship"  # message type of a shipment
PAYLOAD = "shared-files"  # its ArrayRecord: {key: the file's bytes as uint8}
_PREFIX = "sha256:"  # announcement entries in a message's "config": "sha256:<key>" -> digest


class SharedFileMissing(ValueError):
    """The site's cached copy of an announced file is absent or altered: it is shipped again."""


@dataclass(frozen=True)
class Shipment:
    """The coordinator's shared files and their sha256, read once per run."""

    files: Mapping[str, Path]
    digests: Mapping[str, str]
    inline_bytes: int  # the files travel with the roll call if they add up to at most this

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Shipment:
        files = {key: Path(str(settings[key])) for key in SHARED}
        inline_bytes = int(settings[L.SHIP_INLINE_BYTES])
        return cls(files, {key: sha256_file(path) for key, path in files.items()}, inline_bytes)

    def announcement(self) -> dict[str, str]:
        """Entries for a message's config record: ``sha256:<key> -> digest``."""
        return {_PREFIX + key: digest for key, digest in self.digests.items()}

    def inline(self) -> bool:
        return sum(path.stat().st_size for path in self.files.values()) <= self.inline_bytes

    def payload(self, keys: Iterable[str]) -> ArrayRecord:
        return ArrayRecord({key: Array(np.frombuffer(self.files[key].read_bytes(), dtype=np.uint8))
                            for key in keys})


def announced(msg: Message) -> dict[str, str]:
    """``{key: sha256}`` the coordinator announced in ``msg`` (empty if none: a direct call)."""
    if "config" not in msg.content.config_records:
        return {}
    config = msg.content["config"]
    return {k[len(_PREFIX):]: str(v) for k, v in config.items() if k.startswith(_PREFIX)}


def cache_dir(ledger_path: Path) -> Path:
    """A site's cache: beside its ledger, in its own folder."""
    return ledger_path.parent / "cache"


def cached_path(ledger_path: Path, digest: str) -> Path:
    return cache_dir(ledger_path) / "shared" / digest


def _site_folder(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> tuple[int, Path]:
    site, _, ledger_path = L.site_paths(settings, node_config)
    return site, ledger_path


def local_copy(settings: Mapping[str, Any], node_config: Mapping[str, Any], key: str,
               digest: str | None) -> Path:
    """The site's verified copy of shared file ``key``: its own (node_config) if it names one,
    else its cache entry for ``digest``; without a digest (no announcement), the run setting's
    path. ValueError (one line) if the bytes do not match the announced sha256."""
    site, ledger_path = _site_folder(settings, node_config)
    if node_config.get(key):
        path = Path(str(node_config[key]))
        if not path.is_file():
            raise ValueError(f"site {site}: node_config {key}={str(path)!r} is not a file: expected the "
                             f"site's own copy of that shared file, or no {key} to have it shipped")
        if digest and (found := sha256_file(path)) != digest:
            raise ValueError(f"site {site}: node_config {key}={str(path)!r} has sha256 {found[:16]}..., "
                             f"expected the coordinator's {digest[:16]}...: update the copy or drop {key}")
        return path
    if not digest:
        return Path(str(settings[key]))
    path = cached_path(ledger_path, digest)
    if not path.is_file():
        raise SharedFileMissing(f"site {site}: {key} {digest[:16]}... is not in its cache {path.parent}: "
                                "expected the coordinator to ship it at the roll call")
    if (found := sha256_file(path)) != digest:
        path.unlink()  # the next roll call ships a fresh copy
        raise SharedFileMissing(f"site {site}: cached {key} {path} has sha256 {found[:16]}..., expected "
                         f"{digest[:16]}... (altered on disk); removed, the next roll call ships it again")
    return path


def missing(settings: Mapping[str, Any], node_config: Mapping[str, Any], digests: Mapping[str, str]
            ) -> list[str]:
    """The announced files the site lacks. Its own copies (node_config) are checked, never
    replaced: a mismatch raises ValueError."""
    lacking = []
    for key, digest in digests.items():
        try:
            local_copy(settings, node_config, key, digest)
        except SharedFileMissing:  # an altered cache entry was removed: ship it again
            lacking.append(key)
    return lacking


def store(settings: Mapping[str, Any], node_config: Mapping[str, Any], digests: Mapping[str, str],
          payload: ArrayRecord) -> list[str]:
    """Write the shipped files into the site's cache (sha256 checked, written atomically)."""
    site, ledger_path = _site_folder(settings, node_config)
    stored = []
    for key in payload:
        data = payload[key].numpy().tobytes()
        if key not in digests or sha256_bytes(data) != digests[key]:
            raise ValueError(f"site {site}: shipped {key} has sha256 {sha256_bytes(data)[:16]}..., expected "
                             f"{digests.get(key, '(not announced)')[:16]}...")
        path = cached_path(ledger_path, digests[key])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        stored.append(key)
    return stored


def answer_roll_call(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    """The roll call: which site this node is, and which announced files it still lacks after
    storing those that came with it (no data)."""
    s = L.run_settings(settings, context)
    site, _, _ = L.site_paths(s, context.node_config)
    digests = announced(msg)
    lacking = missing(s, context.node_config, digests)
    if lacking and PAYLOAD in msg.content.array_records:
        payload = msg.content[PAYLOAD]
        store(s, context.node_config, digests, ArrayRecord({k: payload[k] for k in lacking if k in payload}))
        lacking = missing(s, context.node_config, digests)
    return Message(RecordDict({"metrics": MetricRecord({"site": site}),
                               "config": ConfigRecord({"missing": ",".join(lacking)})}), reply_to=msg)


def receive(msg: Message, context: Context, settings: Mapping[str, Any]) -> Message:
    """A shipment: store its files in the site's cache."""
    s = L.run_settings(settings, context)
    site, _, _ = L.site_paths(s, context.node_config)
    payload = msg.content[PAYLOAD]
    stored = store(s, context.node_config, announced(msg), payload)
    log(INFO, "fedens: site %s stored %s from a %s message (%d bytes)", site, ", ".join(stored), SHIP,
        sum(int(np.prod(payload[key].shape)) for key in stored))
    return Message(RecordDict({"metrics": MetricRecord({"site": site})}), reply_to=msg)


def with_local_copies(msg: Message, context: Context, settings: Mapping[str, Any]) -> Context:
    """``context`` whose node_config names the site's verified copies of the files ``msg``
    announces, so handlers read those (the same state record: what they keep persists)."""
    digests = announced(msg)
    if not digests:
        return context
    s = L.run_settings(settings, context)
    local = {key: str(local_copy(s, context.node_config, key, digest)) for key, digest in digests.items()}
    return dataclasses.replace(context, node_config={**context.node_config, **local})
