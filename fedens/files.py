"""The one atomic writer, and the byte forms of what fedens writes with it.

Every file fedens writes (results, reports, checkpoints, shared files, site caches) goes through
:func:`write_atomic`: a temporary file of its own beside the target, flushed to disk, then
renamed over it. A reader never sees half a file, two writers of one path never share a
temporary, and a crash leaves the old file or the new one. This module is a bottom layer: it
imports nothing from fedens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` atomically and durably.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "report.json"
    >>> write_atomic(target, '{"ok": true}')
    >>> target.read_text()
    '{"ok": true}'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """``arrays`` in NumPy's ``.npz`` format, the same bytes for the same arrays."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return reproducible_zip(buffer.getvalue())


def reproducible_zip(data: bytes) -> bytes:
    """The zip archive ``data`` with every entry's time set to 1980-01-01: zip writers stamp
    entries with the time of writing, so equal contents would give files of other sha256 (and
    a file's sha256 names it in the shipping cache and in release keys)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            with source.open(info) as entry, target.open(fixed, "w", force_zip64=True) as copy:
                shutil.copyfileobj(entry, copy)
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in NumPy's ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# A container that runs no code when read. Pickles (and ``torch.load`` without ``weights_only``)
# can run any code a file names; checkpoints and what a site receives are read with this instead.
_STATE_JSON = "__state__"


def state_bytes(state: Any) -> bytes:
    """``state`` as one ``.npz`` that runs no code when read (:func:`read_state`): the structure
    as JSON, every NumPy array an entry of its own. ``state`` holds JSON values, tuples, dicts
    (keys str or int) and NumPy arrays and scalars; TypeError names the first part that is not.

    Examples
    --------
    >>> state = {"round": 3, "m": {"w": np.ones(2)}, "shape": (2, 3), 7: None}
    >>> back = read_state(state_bytes(state))
    >>> back["round"], back["m"]["w"].tolist(), back["shape"], back[7]
    (3, [1.0, 1.0], (2, 3), None)
    """
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{where}: an object array cannot be stored without code")
            name = f"a{len(arrays)}"
            arrays[name] = value
            return {"__array__": name}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, (str, int)) or isinstance(k, bool)]
            if bad:
                raise TypeError(f"{where}: dict key {bad[0]!r} is not a str or an int")
            return {"__dict__": [[k, encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
        raise TypeError(f"{where}: {type(value).__name__} cannot be stored without code "
                        "(expected JSON values, tuples, dicts, NumPy arrays)")

    structure = json.dumps(encode(state, "state"))
    return npz_bytes(**arrays, **{_STATE_JSON: np.frombuffer(structure.encode(), dtype=np.uint8)})


def read_state(data: bytes) -> Any:
    """What :func:`state_bytes` wrote; ValueError if ``data`` is not such a file. NumPy reads it
    with ``allow_pickle=False``: no code runs."""
    if not data.startswith(b"PK\x03\x04"):  # np.load would take other bytes for a pickle, and refuse
        raise ValueError("not a fedens state file (not an .npz archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        structure = json.loads(arrays.pop(_STATE_JSON).tobytes().decode())
    except Exception as error:  # zipfile, NumPy and JSON each raise their own kinds
        said = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"not a fedens state file ({type(error).__name__}{': ' + said if said else ''})"
                         ) from None

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        return {k: decode(v) for k, v in value["__dict__"]}

    return decode(structure)


def cache_root() -> Path:
    """fedens' cache of derived files: ``$FEDENS_CACHE``, else ``$XDG_CACHE_HOME/fedens``, else
    ``~/.cache/fedens``. Everything in it can be deleted; it is made again when needed."""
    if folder := os.environ.get("FEDENS_CACHE"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedens"
