"""Division of a private split into sites, chosen by config (``partition=iid|dirichlet``).

Each partitioner is registered by name and takes the labels, the number of sites, a seed and its
own config keys (``partition.<key>``); it returns one array of record indices per site, every
record in exactly one site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedens.config_schema import Schema, integer, positive
from fedens.registry import Registry

Partitioner = Callable[..., list[np.ndarray]]


class PartitionRegistry(Registry):
    """Name -> partition function, and each one's config keys (:attr:`schemas`)."""

    def __init__(self) -> None:
        super().__init__("partition")
        self.schemas: dict[str, Schema] = {}
        self._labels: dict[str, Callable[[Any], str]] = {}

    def add(self, name: str, schema: Schema | None = None,
            label: Callable[[Any], str] | None = None) -> Callable[[Partitioner], Partitioner]:
        """Register a partitioner; ``label(partition_cfg)`` names it with its parameters."""
        def wrap(fn: Partitioner) -> Partitioner:
            self.register(name)(fn)  # type: ignore[arg-type]
            self.schemas[name] = schema or Schema()
            self._labels[name] = label or (lambda _cfg: name)
            return fn

        return wrap

    def describe(self, partition_cfg: Any) -> str:
        """The partition config ``partition_cfg`` (``name`` and its keys) in a few characters,
        e.g. ``dirichlet(0.5)``."""
        return self._labels[partition_cfg.name](partition_cfg)

    def split(self, name: str, y: np.ndarray, num_sites: int, seed: int, **params: Any) -> list[np.ndarray]:
        """The sites' record indices by the partitioner registered as ``name``."""
        if name not in self:
            raise ValueError(f"unknown partition {name!r}; choose from {sorted(self)}")
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
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
    in memory (no download). Every record lands in exactly one site.
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
    dataset = Dataset.from_dict({"record": np.arange(len(y)), "label": y.tolist()})
    partitioner = DirichletPartitioner(
        num_partitions=num_sites,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=False,
        seed=seed,
    )
    partitioner.dataset = dataset
    try:
        return [
            np.asarray(partitioner.load_partition(site)["record"], dtype=np.int64)
            for site in range(num_sites)
        ]
    except ValueError as error:  # flwr-datasets gives up after a few draws
        raise ValueError(
            f"no draw gave each of num_sites={num_sites} sites min_partition_size={min_partition_size} "
            f"of the {len(y)} private records at alpha={alpha:g} (flwr-datasets: {error})"
        ) from None
