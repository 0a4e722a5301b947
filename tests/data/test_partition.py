import numpy as np
import pytest

from fedens.data import load_task
from fedens.data.partition import PARTITIONS, dirichlet_partition


def test_every_private_record_in_exactly_one_site():
    task = load_task("digits", public_fraction=0.3, test_fraction=0.25, seed=0)
    sites = dirichlet_partition(task.private.y, num_sites=10, alpha=0.5, seed=0)
    assert len(sites) == 10
    records = np.concatenate(sites)
    assert sorted(records.tolist()) == list(range(len(task.private)))


def test_dirichlet_sites_are_label_skewed_and_seeded():
    y = load_task("digits", 0.3, 0.25, seed=0).private.y
    skewed = dirichlet_partition(y, 10, alpha=0.1, seed=1)
    # with alpha=0.1 some site sees a label share far from the global 10%
    shares = [np.bincount(y[s], minlength=10) / len(s) for s in skewed]
    assert max(share.max() for share in shares) > 0.5
    again = dirichlet_partition(y, 10, alpha=0.1, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again, strict=True))


def test_splits_are_disjoint_and_cover_the_dataset():
    task = load_task("digits", 0.3, 0.25, seed=0)
    assert len(task.public) + len(task.private) + len(task.test) == 1797
    assert task.num_classes == 10
    assert abs(len(task.test) / 1797 - 0.25) < 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_sites": 0, "alpha": 0.5}, "num_sites"), ({"num_sites": 3, "alpha": -1}, "alpha")],
)
def test_bad_partition_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PARTITIONS.split("dirichlet", np.zeros(100, dtype=int), seed=0, **kwargs)


def test_iid_sites_are_equal_shuffled_shares():
    sites = PARTITIONS.split("iid", np.zeros(103, dtype=int), 10, seed=3)
    assert sorted(len(s) for s in sites) == [10] * 7 + [11] * 3
    assert sorted(np.concatenate(sites).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(sites), np.arange(103))  # shuffled
    again = PARTITIONS.split("iid", np.zeros(103, dtype=int), 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(sites, again, strict=True))
    with pytest.raises(ValueError, match="unknown partition 'shards'"):
        PARTITIONS.split("shards", np.zeros(10), 2, seed=0)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="nope"):
        load_task("nope", 0.3, 0.25, seed=0)


def test_every_partition_is_described_with_its_parameters():
    from omegaconf import OmegaConf

    assert PARTITIONS.describe(OmegaConf.create({"name": "iid"})) == "iid"
    assert PARTITIONS.describe(OmegaConf.create({"name": "dirichlet", "alpha": 0.25,
                                                 "min_partition_size": 5})) == "dirichlet(0.25)"


def test_grouped_id_gives_each_site_whole_disjoint_sets_of_the_columns_values():
    rng = np.random.default_rng(0)
    groups = rng.choice([f"patient-{i}" for i in range(23)], size=400)  # 23 patients, several records each
    y = rng.integers(0, 2, size=400)
    sites = PARTITIONS.split("grouped_id", y, 5, seed=3, groups=groups, column="patient")
    assert sorted(np.concatenate(sites).tolist()) == list(range(400))  # every record once
    held = [set(groups[s]) for s in sites]
    assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1:])  # no patient at two sites
    assert sorted(len(h) for h in held) == [4, 4, 5, 5, 5]  # 23 values dealt as evenly as they go
    again = PARTITIONS.split("grouped_id", y, 5, seed=3, groups=groups, column="patient")
    other = PARTITIONS.split("grouped_id", y, 5, seed=4, groups=groups, column="patient")
    assert all(np.array_equal(a, b) for a, b in zip(sites, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(sites, other, strict=True))
    with pytest.raises(ValueError, match=r"partition.column='patient' has 23 distinct values, fewer than "
                                         r"federation.num_sites=30: expected at least one value per site"):
        PARTITIONS.split("grouped_id", y, 30, seed=0, groups=groups, column="patient")


def test_dirichlet_fills_any_site_count_the_records_can_fill_and_keeps_draws_that_work():
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    y = load_task("digits", 0.3, 0.25, seed=0).private.y  # 809 records
    # 10 sites: flwr-datasets' own draw, unchanged
    partitioner = DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.5,
                                       min_partition_size=5, self_balancing=False, seed=0)
    partitioner.dataset = Dataset.from_dict({"record": np.arange(len(y)), "label": y.tolist()})
    direct = [np.asarray(partitioner.load_partition(i)["record"]) for i in range(10)]
    ours = dirichlet_partition(y, 10, seed=0, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(ours, direct, strict=True))
    for num_sites in (68, 100, 161):  # flwr-datasets alone gives up on each (10 draws)
        sites = dirichlet_partition(y, num_sites, alpha=0.5, seed=0)
        assert sorted(np.concatenate(sites).tolist()) == list(range(len(y)))
        assert min(len(s) for s in sites) >= 5
        assert max(np.bincount(y[s], minlength=10).max() / len(s) for s in sites) > 0.5  # still label-skewed
        again = dirichlet_partition(y, num_sites, alpha=0.5, seed=0)
        assert all(np.array_equal(a, b) for a, b in zip(sites, again, strict=True))
    with pytest.raises(ValueError, match=r"num_sites=162 x min_partition_size=5 exceeds the 809 private "):
        dirichlet_partition(y, 162, alpha=0.5, seed=0)
