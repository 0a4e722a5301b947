"""Query selection for the PATE student: a permutation that puts the queries first."""

import numpy as np
import pytest

from fedens.data.query_selection import query_order


def clustered_pool(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated blobs of the given sizes, shuffled; returns (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(len(sizes), 16))
    blob = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[blob] + rng.normal(size=(len(blob), 16))
    order = rng.permutation(len(blob))
    return points[order], blob[order]


def test_first_keeps_the_pool_order():
    pool, _ = clustered_pool([30, 30])
    assert query_order(pool, 10, "first", seed=0).tolist() == list(range(60))


def test_kmeans_asks_one_prototype_per_mode_where_the_first_images_miss_the_small_ones():
    pool, blob = clustered_pool([400, 20, 20, 20, 20])
    order = query_order(pool, 5, "kmeans", seed=0)
    assert sorted(order.tolist()) == list(range(len(pool)))  # a permutation
    assert sorted(blob[order[:5]].tolist()) == [0, 1, 2, 3, 4]  # every blob asked once
    # each query is the point nearest its blob's centre: a prototype, not an outlier
    for i in order[:5]:
        members = pool[blob == blob[i]]
        distances = np.linalg.norm(members - members.mean(axis=0), axis=1)
        assert np.linalg.norm(pool[i] - members.mean(axis=0)) <= np.quantile(distances, 0.2)
    assert len(set(blob[:5].tolist())) < 5  # the pool's first five points miss some blobs


def test_kmeans_is_deterministic_for_a_seed_and_picks_distinct_images():
    pool, _ = clustered_pool([50, 50, 50])
    a, b = query_order(pool, 40, "kmeans", seed=3), query_order(pool, 40, "kmeans", seed=3)
    assert (a == b).all() and len(set(a[:40].tolist())) == 40


@pytest.mark.parametrize("method, n, message", [
    ("random", 5, "query selection must be one of ('first', 'kmeans'), got 'random'"),
    ("kmeans", 0, "num_queries must be in [1, 60] (the pool's size), got 0"),
    ("first", 61, "num_queries must be in [1, 60] (the pool's size), got 61"),
])
def test_bad_arguments_are_named(method, n, message):
    pool, _ = clustered_pool([30, 30])
    with pytest.raises(ValueError) as error:
        query_order(pool, n, method, seed=0)
    assert str(error.value) == message
