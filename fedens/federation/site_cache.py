"""What a site derives from its own records once and keeps on its own disk: the shared experts'
outputs on them, named by the sha256 of (the experts file, the records), so a round reads them
instead of loading the experts and calling them again. Any change to either makes a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedens.federation import layout as L
from fedens.federation.shipping import cache_dir, sha256_file


def outputs_path(ledger_path: Path, experts_path: Path, X: np.ndarray) -> Path:
    key = hashlib.sha256(sha256_file(experts_path).encode())
    key.update(str((X.dtype.str, X.shape)).encode())
    key.update(np.ascontiguousarray(X).tobytes())
    return cache_dir(ledger_path) / "outputs" / f"{key.hexdigest()}.npy"


def site_expert_outputs(settings: Mapping[str, Any], node_config: Mapping[str, Any], X: np.ndarray
                        ) -> np.ndarray:
    """The shared experts' outputs ``(n, K, C)`` on the site's records ``X``, from its cache
    when there (then neither the experts nor their libraries are loaded)."""
    _, _, ledger_path = L.site_paths(settings, node_config)
    experts_path = L.shared_file(settings, node_config, L.EXPERTS_PATH)
    path = outputs_path(ledger_path, experts_path, X)
    if path.is_file():
        return np.load(path)
    from fedens.experts import expert_outputs
    from fedens.federation.site_data import shared_experts

    P = expert_outputs(shared_experts(settings, node_config), X)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, P)
    tmp.replace(path)
    return P
