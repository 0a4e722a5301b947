"""PATE across sites: teachers stay at their site, only vote counts come back.

Message flow (Flower Message API, custom actions):

* ``train.teachers``: each site trains one teacher per disjoint shard of its
  own data (cached in its folder: a rerun with new noise does not retrain).
* ``query.votes``: the coordinator sends a batch of public, unlabelled query
  images and the mechanism it will apply; the site reserves the mechanism's
  worst case for the batch in its ledger (one transaction: refused if it does
  not fit), then replies with its teachers' vote histogram (n, C) and the
  reservation's key: counts, not probabilities, not data.
* the coordinator sums the histograms and releases labels with the mechanism
  (Confident-GNMax by default); it is trusted to add the noise, as in PATE.
* ``query.charge``: the coordinator sends the public outcome (labels, which
  queries were answered) and each site's reservation key; each contributing
  site rebuilds the release's DpEvents itself from it and settles its
  reservation to what the release spent. A batch whose settlement failed at
  any site is dropped (its labels are not used); its reservation stays at the
  worst case, which is what the site may have spent.

Only the released labels and the privacy analysis are written to disk; the
summed vote histograms are private and stay in the coordinator's memory.
``sites.py`` is the site side, ``coordinator.py`` the coordinator's.
"""

from typing import Any

import numpy as np

RESERVATION = "reservation"  # a vote reply's release key, echoed back to settle it


def as_array(x: np.ndarray) -> Any:
    """``x`` as a Flower ``Array`` (contiguous)."""
    from flwr.app import Array

    return Array(np.ascontiguousarray(x))


#: what a query batch holds, by the pool's kind: uint8 images or unicode texts
QUERY_KEYS = ("images", "texts")


def query_array(record: Any) -> np.ndarray:
    """The query batch a ``queries`` ArrayRecord carries (its one array, images or texts)."""
    key = next((k for k in QUERY_KEYS if k in record), None)
    if key is None:
        raise ValueError(f"a query batch holds {sorted(record)}: expected one of {list(QUERY_KEYS)}")
    return record[key].numpy()
