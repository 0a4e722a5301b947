"""Amazon fine-food reviews, offline: modeldata's ``small_fine_foods`` (MIT; 4,000 training and
1,000 test reviews, each of its own product, scored "great" or "other"), read from the lazy-load
database of Debian's ``r-cran-modeldata`` 1.1.0 that ``scripts/setup`` extracts into fedens' cache.

R keeps a package's data as one file of compressed serialized objects (``Rdata.rdb``) and an
index of their offsets (``Rdata.rdx``). The ``rdata`` package reads R's serialization; the
database's framing is R's own (``src/main/serialize.c``: a 4-byte length, a type byte, then the
object, 'Z' meaning raw LZMA2 at preset 9e) and is read here by hand.
"""

from __future__ import annotations

import gzip
import lzma
import os
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from fedens.files import cache_root, sha256_file

DEB = "r-cran-modeldata_1.1.0-1_all.deb"
#: the files of that package this reads, pinned: another release is refused
SHA256 = {"Rdata.rdb": "2ecef5e8da0f782ae4e3f65d928fe769702accffd8981cc358a3097f6736f58f",
          "Rdata.rdx": "c23e1be60f2730fb526ce158a307e154c91a953169fcb8e73350c4e032e14538"}
SYSTEM_DIR = Path("/usr/lib/R/site-library/modeldata/data")  # apt install r-cran-modeldata
LABELS = ("great", "other")


def modeldata_dir() -> Path:
    """The folder holding modeldata's ``Rdata.rdb`` and ``Rdata.rdx``: ``$FEDENS_MODELDATA``, else
    fedens' cache (``scripts/setup`` fills it), else Debian's install. FileNotFoundError says how
    to get it; ValueError names a file that is not the pinned one."""
    candidates = [Path(os.environ["FEDENS_MODELDATA"])] if os.environ.get("FEDENS_MODELDATA") else []
    candidates += [cache_root() / "data" / "r-cran-modeldata-1.1.0", SYSTEM_DIR]
    for folder in candidates:
        if all((folder / name).is_file() for name in SHA256):
            for name, want in SHA256.items():
                if (found := sha256_file(folder / name)) != want:
                    raise ValueError(f"{folder / name} has sha256 {found[:16]}..., expected {want[:16]}... "
                                     f"(r-cran-modeldata 1.1.0-1)")
            return folder
    raise FileNotFoundError(f"modeldata's fine-food reviews are missing (looked in "
                            f"{', '.join(str(c) for c in candidates)}): run ./scripts/setup, which "
                            f"extracts them from Debian's {DEB}")


def _unserialized(data: bytes) -> Any:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS" for bare objects
        return rdata.conversion.convert(rdata.parser.parse_data(data))


def _lazy_load(folder: Path, names: tuple[str, ...]) -> list[Any]:
    """The objects ``names`` of the lazy-load database in ``folder``."""
    index = _unserialized(gzip.decompress((folder / "Rdata.rdx").read_bytes()))["variables"]
    objects = []
    with (folder / "Rdata.rdb").open("rb") as f:
        for name in names:
            offset, length = (int(x) for x in index[name])
            f.seek(offset)
            blob = f.read(length)
            if blob[4:5] != b"Z":
                raise ValueError(f"{folder / 'Rdata.rdb'}: object {name!r} has compression type "
                                 f"{blob[4:5]!r}, expected b'Z' (LZMA2)")
            objects.append(_unserialized(lzma.decompress(
                blob[5:], format=lzma.FORMAT_RAW,
                filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])))
    return objects


@cache
def fine_food_reviews() -> tuple[Any, Any]:
    """``(training, testing)``: pandas DataFrames with columns ``product``, ``review`` (text)
    and ``score`` ("great" | "other"), in modeldata's order."""
    training, testing = (
        frame.assign(product=frame["product"].astype(str), review=frame["review"].astype(str),
                     score=frame["score"].astype(str)).reset_index(drop=True)
        for frame in _lazy_load(modeldata_dir(), ("training_data", "testing_data")))
    return training, testing
