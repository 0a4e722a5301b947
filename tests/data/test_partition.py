import numpy as np
import pytest

from fedens.data import dirichlet_partition, load_task


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
        dirichlet_partition(np.zeros(100, dtype=int), seed=0, **kwargs)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="nope"):
        load_task("nope", 0.3, 0.25, seed=0)
