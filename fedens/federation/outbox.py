"""A site's own copy of everything it sends: the audit trail of what left the site.

With ``outbox-path=<folder>`` in its node config, a site's ClientApp writes every reply it
returns, as it leaves (after every other mod, so after Flower's clipping and noise), to a file
of its own in that folder: the message type, the run, and each record's contents, arrays
included. A reply that raises is written too, with the error text Flower sends in its place.
Files are :func:`fedens.files.state_bytes` (read with :func:`read_outbox`; no code runs), so
a site's auditor, or a test, can check that only parameters, metrics, noised aggregates and
configuration crossed. Written by hand: Flower has no client-side message log.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedens.federation import layout as L
from fedens.files import read_state, state_bytes, write_atomic


def message_contents(reply: Message) -> dict[str, Any]:
    """What ``reply`` carries: each record by name, arrays as NumPy arrays."""
    if reply.has_error():
        return {"error": {"code": int(reply.error.code), "reason": str(reply.error.reason)}}
    content = reply.content
    return {
        "arrays": {name: [[key, array.numpy()] for key, array in record.items()]
                   for name, record in content.array_records.items()},
        "metrics": {name: dict(record) for name, record in content.metric_records.items()},
        "configs": {name: {k: _plain(v) for k, v in record.items()}
                    for name, record in content.config_records.items()},
    }


def _plain(value: Any) -> Any:
    """A config value as :func:`fedens.files.state_bytes` stores it (bytes as a uint8 array)."""
    if isinstance(value, bytes):
        return np.frombuffer(value, dtype=np.uint8)
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _write(folder: Path, msg: Message, contents: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"run": int(msg.metadata.run_id), "message_type": msg.metadata.message_type,
             "in_reply_to": str(msg.metadata.message_id), **contents}
    name = f"{msg.metadata.run_id}-{msg.metadata.message_type}-{uuid.uuid4().hex[:12]}.npz"
    write_atomic(folder / name, state_bytes(entry))


def record_outgoing(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: pass ``msg`` on and keep a copy of the reply when the node config asks."""
    folder = context.node_config.get(L.OUTBOX_PATH)
    if not folder:
        return call_next(msg, context)
    try:
        reply = call_next(msg, context)
    except Exception as error:  # Flower sends the error's text instead of a reply
        _write(Path(str(folder)), msg, {"raised": f"{type(error).__name__}: {error}"})
        raise
    _write(Path(str(folder)), msg, message_contents(reply))
    return reply


def read_outbox(folder: str | Path) -> list[dict[str, Any]]:
    """Every reply a site recorded in ``folder``, oldest first."""
    files = sorted(Path(folder).glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    return [read_state(path.read_bytes()) for path in files]
