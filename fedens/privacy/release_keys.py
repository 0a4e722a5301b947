"""Release keys: the name under which a site's ledger records one release.

A ledger charges a key once: sending a release's very output again is post-processing and costs
nothing. So a key must name *everything* that determines the output: the mechanism and its
noise parameters, the site's records, the settings and shared files the computation reads, the
seed, and the software that computes it. :func:`release_key` hashes all of it; what a caller
leaves out is a privacy bug (a key that omitted the noise multiplier let a re-run with other
noise pass as the same release). Where the site computes the release itself it also records the
sha256 of the output under the key, so even an output that differs for a reason no key names
(another BLAS kernel, say) is charged as the new release it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np

#: the distributions whose code computes a release at a site
_SOFTWARE = ("fedens", "numpy", "torch", "opacus", "scikit-learn", "dp-accounting")


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """``{distribution: version}`` of the code that computes releases (absent ones omitted)."""
    found = {}
    for name in _SOFTWARE:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_state(state: Mapping[str, Any]) -> str:
    """sha256 of a ``{name: tensor or array}`` state, by sorted name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        digest.update(name.encode())
        digest.update(sha256_arrays(array).encode())
    return digest.hexdigest()


def release_key(kind: str, label: str, **parts: Any) -> str:
    """``kind/label/<sha256>``: the sha256 of ``parts`` (JSON, keys sorted; floats by repr) and
    :func:`software_versions`. ``label`` (e.g. ``site-0/round-3``) only makes the key readable.

    Examples
    --------
    >>> a = release_key("dpsgd", "site-0/round-1", noise_multiplier=1.0, data_sha256="ab")
    >>> b = release_key("dpsgd", "site-0/round-1", noise_multiplier=0.9, data_sha256="ab")
    >>> a != b and a.startswith("dpsgd/site-0/round-1/")
    True
    """
    material = json.dumps({"parts": parts, "software": software_versions()}, sort_keys=True,
                          default=_plain)
    return f"{kind}/{label}/{hashlib.sha256(material.encode()).hexdigest()[:40]}"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return sha256_arrays(value)
    raise TypeError(f"release key part of type {type(value).__name__} is not plain data: {value!r}")
