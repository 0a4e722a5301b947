"""Division of a private split into sites, chosen by config
(``partition=iid|dirichlet|natural_id|grouped_id``).

Each partitioner is registered by name and takes the labels, the number of sites, a seed and its
own config keys (``partition.<key>``); it returns one array of record indices per site, every
record in exactly one site.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from fedens.config_schema import Rule, Schema, integer, positive
from fedens.registry import Registry

Partitioner = Callable[..., list[np.ndarray]]


class PartitionRegistry(Registry):
    """Name -> partition function, and each one's config keys (:attr:`schemas`)."""

    def __init__(self) -> None:
        super().__init__("partition")
        self.schemas: dict[str, Schema] = {}
        self._labels: dict[str, Callable[[Any], str]] = {}
        self.by_column: set[str] = set()  # partitioners that read each record's site from a column
        self._namers: dict[str, Callable[[np.ndarray], list[str]]] = {}

    def add(self, name: str, schema: Schema | None = None, label: Callable[[Any], str] | None = None,
            by_column: bool = False, site_names: Callable[[np.ndarray], list[str]] | None = None,
            ) -> Callable[[Partitioner], Partitioner]:
        """Register a partitioner; ``label(partition_cfg)`` names it with its parameters;
        ``by_column``: it takes each record's site-column value as ``groups``; ``site_names(groups)``:
        the name of each site it makes, when its sites have names."""
        def wrap(fn: Partitioner) -> Partitioner:
            self.register(name)(fn)  # type: ignore[arg-type]
            self.schemas[name] = schema or Schema()
            self._labels[name] = label or (lambda _cfg: name)
            if by_column:
                self.by_column.add(name)
            if site_names is not None:
                self._namers[name] = site_names
            return fn

        return wrap

    def site_names(self, name: str, groups: np.ndarray | None) -> list[str] | None:
        """Site ``i``'s name for each site of partitioner ``name`` (None: its sites are numbered)."""
        namer = self._namers.get(name)
        return namer(np.asarray(groups)) if namer is not None and groups is not None else None

    def describe(self, partition_cfg: Any) -> str:
        """The partition config ``partition_cfg`` (``name`` and its keys) in a few characters,
        e.g. ``dirichlet(0.5)``."""
        return self._labels[partition_cfg.name](partition_cfg)

    def split(self, name: str, y: np.ndarray, num_sites: int, seed: int, groups: np.ndarray | None = None,
              **params: Any) -> list[np.ndarray]:
        """The sites' record indices by the partitioner registered as ``name`` (``groups``: each
        record's site-column value, for a partitioner ``by_column``)."""
        if name not in self:
            raise ValueError(f"unknown partition {name!r}; choose from {sorted(self)}")
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        if name in self.by_column:
            if groups is None:
                raise ValueError(f"partition={name} reads each record's site from a column: expected "
                                 "data=local with partition.column naming it")
            return self[name](np.asarray(y), num_sites, seed, groups=np.asarray(groups), **params)
        return self[name](np.asarray(y), num_sites, seed, **params)


PARTITIONS = PartitionRegistry()


@PARTITIONS.add("iid")
def iid_partition(y: np.ndarray, num_sites: int, seed: int) -> list[np.ndarray]:
    """Equal, shuffled, disjoint shares (a seeded permutation cut into ``num_sites`` parts;
    three lines, so written here rather than through a library)."""
    if num_sites > len(y):
        raise ValueError(f"num_sites={num_sites} exceeds the {len(y)} private records")
    return np.array_split(np.random.default_rng(seed).permutation(len(y)), num_sites)


@PARTITIONS.add("dirichlet", Schema([
    positive("partition.alpha"),
    integer("partition.min_partition_size", 0, note="records every site gets at least"),
]), label=lambda p: f"dirichlet({p.alpha:g})")
def dirichlet_partition(
    y: np.ndarray,
    num_sites: int,
    seed: int,
    alpha: float,
    min_partition_size: int = 5,
) -> list[np.ndarray]:
    """Label-skewed division of records ``0..len(y)-1`` into ``num_sites`` sites.

    Uses flwr-datasets' ``DirichletPartitioner`` on a ``datasets.Dataset`` built
    in memory (no download). Every record lands in exactly one site, every site
    gets ``min_partition_size``: when flwr-datasets finds no such draw in its 10
    attempts (many sites, small ``alpha``), its draw without the minimum is
    :func:`topped_up`.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_sites * min_partition_size > len(y):
        raise ValueError(
            f"num_sites={num_sites} x min_partition_size={min_partition_size} exceeds "
            f"the {len(y)} private records"
        )
    def draw(minimum: int) -> list[np.ndarray]:
        partitioner = DirichletPartitioner(num_partitions=num_sites, partition_by="label", alpha=alpha,
                                           min_partition_size=minimum, self_balancing=False, seed=seed)
        partitioner.dataset = Dataset.from_dict({"record": np.arange(len(y)), "label": y.tolist()})
        return [np.asarray(partitioner.load_partition(site)["record"], dtype=np.int64)
                for site in range(num_sites)]

    try:
        with warnings.catch_warnings():  # flwr-datasets warns at each draw it rejects: handled here
            warnings.filterwarnings("ignore", "The specified min_partition_size", UserWarning)
            return draw(min_partition_size)
    except ValueError:  # flwr-datasets gives up after 10 draws with a site below the minimum
        return topped_up(draw(0), min_partition_size, np.random.default_rng(seed))


def topped_up(sites: list[np.ndarray], minimum: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``sites`` with every site holding at least ``minimum`` records: records chosen at random
    move from the largest site to the smallest until none is below (the division's label skew is
    kept elsewhere). Needs ``len(sites) * minimum`` records in all; written here since
    flwr-datasets' ``DirichletPartitioner`` only redraws, which fails for many sites."""
    sites = [np.asarray(s, dtype=np.int64) for s in sites]
    while True:
        sizes = np.array([len(s) for s in sites])
        small, large = int(sizes.argmin()), int(sizes.argmax())
        if sizes[small] >= minimum:
            return [np.sort(s) for s in sites]
        take = min(minimum - sizes[small], sizes[large] - minimum)  # >= 1: the records suffice
        moved = rng.choice(sizes[large], size=take, replace=False)
        sites[small] = np.concatenate([sites[small], sites[large][moved]])
        sites[large] = np.delete(sites[large], moved)


def _column_rule(expected: str) -> Rule:
    """``partition.column``: a column's name (what the partitioner reads from it in ``expected``)."""
    return Rule("partition.column", lambda v, cfg: isinstance(v, str) and v.strip() != "", expected)


@PARTITIONS.add("natural_id", Schema([
    _column_rule("the name of the column that says which site holds each record"),
]), label=lambda p: f"natural_id({p.column})", by_column=True,
    site_names=lambda groups: sorted(set(groups.tolist())))
def natural_id_partition(y: np.ndarray, num_sites: int, seed: int, groups: np.ndarray,
                         column: str) -> list[np.ndarray]:
    """One site per distinct value of the site column (flwr-datasets' ``NaturalIdPartitioner``),
    site ``i`` the ``i``-th value in sorted order; ``num_sites`` must be their number."""
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    names = sorted(set(groups.tolist()))
    if len(names) != num_sites:
        shown = ", ".join(map(repr, names[:4])) + (", ..." if len(names) > 4 else "")
        raise ValueError(f"partition.column={column!r} names {len(names)} sites ({shown}): expected "
                         f"federation.num_sites={num_sites}; set federation.num_sites={len(names)}")
    partitioner = NaturalIdPartitioner(partition_by="site")
    partitioner.dataset = Dataset.from_dict({"record": np.arange(len(y)), "site": groups.tolist()})
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, once per site
        partitioner.load_partition(0)  # maps partition ids to values on first use
        of_name = {natural: pid for pid, natural in partitioner.partition_id_to_natural_id.items()}
        return [np.sort(np.asarray(partitioner.load_partition(of_name[name])["record"], dtype=np.int64))
                for name in names]


@PARTITIONS.add("grouped_id", Schema([
    _column_rule("the name of the column whose values the sites hold disjoint sets of"),
]), label=lambda p: f"grouped_id({p.column})", by_column=True)
def grouped_id_partition(y: np.ndarray, num_sites: int, seed: int, groups: np.ndarray,
                         column: str) -> list[np.ndarray]:
    """Each site holds every record of a disjoint set of the column's values (patients, products,
    wards), the values dealt into ``num_sites`` sets of equal count (to one) in an order drawn from
    ``seed``. Written here: flwr-datasets' ``GroupedNaturalIdPartitioner`` fixes the values per
    group, not the number of groups."""
    names, of_record = np.unique(groups, return_inverse=True)
    if len(names) < num_sites:
        raise ValueError(f"partition.column={column!r} has {len(names)} distinct values, fewer than "
                         f"federation.num_sites={num_sites}: expected at least one value per site")
    site_of_name = np.empty(len(names), dtype=np.int64)
    dealt = np.array_split(np.random.default_rng(seed).permutation(len(names)), num_sites)
    for site, chosen in enumerate(dealt):
        site_of_name[chosen] = site
    site_of_record = site_of_name[of_record]
    return [np.flatnonzero(site_of_record == site) for site in range(num_sites)]
