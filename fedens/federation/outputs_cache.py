"""What a site derives from its own records once and keeps on its own disk: the shared experts'
outputs on them, named by the sha256 of (the experts file, the records), so a round reads them
instead of loading the experts and calling them again. Any change to either makes a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedens.files import npy_bytes, sha256_file, write_atomic


def outputs_path(site_folder: Path, experts_path: Path, X: np.ndarray) -> Path:
    key = hashlib.sha256(sha256_file(experts_path).encode())
    key.update(str((X.dtype.str, X.shape)).encode())
    key.update(np.ascontiguousarray(X).tobytes())
    return site_folder / "cache" / "outputs" / f"{key.hexdigest()}.npy"


def cached_expert_outputs(site_folder: Path, experts_path: Path, X: np.ndarray,
                          load_experts: Callable[[], list]) -> np.ndarray:
    """The experts' outputs ``(n, K, C)`` on ``X``: from the site's cache, else computed with the
    experts ``load_experts()`` returns and cached (written atomically)."""
    path = outputs_path(site_folder, experts_path, X)
    if path.is_file():
        return np.load(path)
    from fedens.experts import expert_outputs

    P = expert_outputs(load_experts(), X)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, npy_bytes(P))
    return P
