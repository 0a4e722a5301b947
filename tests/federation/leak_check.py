"""What crossed: checks over the replies a site recorded in its outbox (fedens.federation.outbox).

Canaries are records planted in a site's data with a value no real record has. A leak is any
reply that carries a canary value or a whole private record (as float32 or float64 bytes)
anywhere, or anything beyond what DESIGN.md lets cross: combiner parameters, metrics, noised
aggregates and configuration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedens.federation.outbox import read_outbox

CANARY = 7919.25  # exactly representable in float32 and float64; digits features are 0..16
# What each message type's reply may carry besides the combiner's parameters.
ALLOWED_METRICS = {
    "query.site": {"site"},
    "query.ship": {"site"},
    "train": {"site", "epsilon", "opacus-epsilon", "noise-multiplier", "num-examples", "site-weight"},
    "evaluate": {"site", "personalized"},
}
ALLOWED_CONFIGS = {"query.site": {"missing"}}


def plant_canaries(data_path: Path, count: int = 3, label: int = 0) -> np.ndarray:
    """Add ``count`` canary records to the site file at ``data_path``; its records, canaries included."""
    with np.load(data_path) as data:
        X, y = data["X"], data["y"]
    X = np.concatenate([X, np.full((count, X.shape[1]), CANARY, dtype=X.dtype)])
    y = np.concatenate([y, np.full(count, label, dtype=y.dtype)])
    np.savez(data_path, X=X, y=y)
    return X


def leaks(outbox: Path, records: np.ndarray, parameter_names: set[str]) -> list[str]:
    """Everything in the replies recorded in ``outbox`` that should not have crossed."""
    found = []
    needles = {}
    for t in (np.float32, np.float64):
        needles[f"a canary as {t.__name__}"] = np.array([CANARY], dtype=t).tobytes()
        for i, row in enumerate(records):
            needles[f"record {i} as {t.__name__}"] = row.astype(t).tobytes()
    entries = read_outbox(outbox)
    if not entries:
        return [f"{outbox} holds no replies"]
    for entry in entries:
        kind = entry["message_type"]
        where = f"{outbox.name}: a {kind} reply"
        if "raised" in entry or "error" in entry:
            said = entry.get("raised") or entry["error"]["reason"]
            if str(CANARY) in str(said):
                found.append(f"{where}: its error names a canary")
            continue
        blobs = []
        for name, pairs in entry["arrays"].items():
            names = {key for key, _ in pairs}
            if name != "arrays" or not names <= parameter_names:
                found.append(f"{where}: array record {name!r} with {sorted(names - parameter_names)}")
            blobs += [np.ascontiguousarray(a).tobytes() for _, a in pairs]
        for metrics in entry["metrics"].values():
            if extra := set(metrics) - ALLOWED_METRICS.get(kind, set()):
                found.append(f"{where}: metrics {sorted(extra)}")
            if CANARY in [v for v in metrics.values() if isinstance(v, float)]:
                found.append(f"{where}: a metric equals a canary")
        for config in entry["configs"].values():
            if extra := set(config) - ALLOWED_CONFIGS.get(kind, set()):
                found.append(f"{where}: config {sorted(extra)}")
        blob = b"".join(blobs)
        found += [f"{where} carries {what}" for what, needle in needles.items() if needle in blob]
    return found
