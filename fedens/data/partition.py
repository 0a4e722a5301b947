"""Division of a private split into sites, with flwr-datasets' partitioners."""

from __future__ import annotations

import numpy as np


def dirichlet_partition(
    y: np.ndarray,
    num_sites: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 5,
) -> list[np.ndarray]:
    """Label-skewed division of records ``0..len(y)-1`` into ``num_sites`` sites.

    Uses flwr-datasets' ``DirichletPartitioner`` on a ``datasets.Dataset`` built
    in memory (no download). Every record lands in exactly one site.

    Returns
    -------
    list of int arrays, one per site, holding record indices into ``y``.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
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
    return [
        np.asarray(partitioner.load_partition(site)["record"], dtype=np.int64)
        for site in range(num_sites)
    ]
