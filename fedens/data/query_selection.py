"""Which public pool images the PATE student asks the teachers to label.

Every query asked is charged to every site at its worst case, so asking fewer,
better-chosen queries is how a student spends less. The choice reads only the
public, unlabelled pool (never a vote or a private record): it costs no privacy.

* ``first``: the pool's first ``n`` images, as the papers did.
* ``kmeans``: ``n`` prototypes, one per k-means cluster of the pool (in the
  space of its principal components): the pool image nearest each centre. The
  labels then cover the pool's modes instead of whatever came first, and the
  teachers agree more on prototypes, so fewer answers are wrong.
"""

from __future__ import annotations

import numpy as np

QUERY_SELECTIONS = ("first", "kmeans")


def query_order(pool: np.ndarray, num_queries: int, method: str, seed: int,
                components: int = 50) -> np.ndarray:
    """A permutation of ``range(len(pool))`` whose first ``num_queries`` entries are the queries.

    Examples
    --------
    >>> pool = np.random.default_rng(0).random((200, 64))
    >>> order = query_order(pool, 10, "kmeans", seed=0)
    >>> sorted(order.tolist()) == list(range(200))
    True
    """
    if method not in QUERY_SELECTIONS:
        raise ValueError(f"query selection must be one of {QUERY_SELECTIONS}, got {method!r}")
    if not 1 <= num_queries <= len(pool):
        raise ValueError(f"num_queries must be in [1, {len(pool)}] (the pool's size), got {num_queries}")
    if method == "first":
        return np.arange(len(pool))
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    flat = np.asarray(pool, dtype=np.float32).reshape(len(pool), -1)
    features = PCA(min(components, *flat.shape), random_state=seed).fit_transform(flat)
    kmeans = KMeans(num_queries, n_init=1, random_state=seed).fit(features)
    chosen = _nearest_distinct(features, kmeans.cluster_centers_)
    rest = np.setdiff1d(np.arange(len(pool)), chosen)
    return np.concatenate([chosen, rest])


def _nearest_distinct(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre the nearest pool point not already taken by a closer centre."""
    from sklearn.metrics import pairwise_distances

    distances = pairwise_distances(features, centres)  # (n, k)
    chosen = np.full(len(centres), -1)
    taken = np.zeros(len(features), dtype=bool)
    for centre in np.argsort(distances.min(axis=0)):  # the tightest centres choose first
        ranked = np.argsort(distances[:, centre])
        chosen[centre] = next(i for i in ranked if not taken[i])
        taken[chosen[centre]] = True
    return chosen
