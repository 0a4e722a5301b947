"""What a site derives from its own records once and keeps on its own disk: the shared experts'
outputs on them, named by the sha256 of (the experts file, the records), so a round reads them
instead of loading the experts and calling them again. Any change to either makes a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedens.data.rows import ExpertInputs, digest, from_npz
from fedens.files import npy_bytes, sha256_file, write_atomic


def outputs_path(site_folder: Path, experts_path: Path, inputs: ExpertInputs) -> Path:
    key = hashlib.sha256(sha256_file(experts_path).encode())
    digest(key, inputs)
    return site_folder / "cache" / "outputs" / f"{key.hexdigest()}.npy"


def cached_expert_outputs(site_folder: Path, experts_path: Path, inputs: ExpertInputs,
                          load_experts: Callable[[], list]) -> np.ndarray:
    """The experts' outputs ``(n, K, C)`` on ``inputs`` (features, with any text): from the site's
    cache, else computed with the experts ``load_experts()`` returns and cached (written atomically)."""
    path = outputs_path(site_folder, experts_path, inputs)
    if path.is_file():
        return np.load(path)
    from fedens.experts import expert_outputs

    P = expert_outputs(load_experts(), inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, npy_bytes(P))
    return P


def coordinator_test_outputs(settings: Mapping[str, Any]) -> tuple[ExpertInputs, np.ndarray, np.ndarray]:
    """The coordinator's test inputs, labels and the shared experts' outputs on them, computed once
    per run (by the pipeline, for its baselines) and kept in the coordinator's folder, so that a
    language model or an endpoint is not asked about the test records twice."""
    from fedens.experts import load_experts
    from fedens.federation import layout as L

    path = L.coordinator_test_path(settings[L.RUN_DIR])
    with np.load(path) as test:
        inputs, y = from_npz(test), test["y"]
    experts_path = Path(settings[L.EXPERTS_PATH])
    P = cached_expert_outputs(path.parent, experts_path, inputs, lambda: load_experts(experts_path))
    return inputs, y, P
