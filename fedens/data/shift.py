"""Records from other devices than the public split's: a covariate shift between what the
coordinator holds and what the sites hold, chosen by config (``data.shift``).

``scanners``: every site scans its records (square grey images, values in [0, 1]) on its own
device, none of them the public split's. Device ``k`` of :data:`SCANNERS` serves site
``k mod len(SCANNERS)``; the coordinator's test split is drawn from the sites' population, each
test record from a device chosen at random (seeded). The experts, trained on the public split,
meet inputs they were not fitted to, and how much each one degrades depends on the device: the
combination a site needs is learnt from its private records, and differs from site to site.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from fedens.data.datasets import Split, TaskData

Device = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (n, s, s) images -> images


def _blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(images, sigma=(0, 0.8, 0.8))


def _faded(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.45 * images + 0.3  # low contrast, a grey background


def _offset(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.roll(images, 1, axis=2)  # the sensor one pixel to the side


def _grainy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return images + rng.normal(0.0, 0.25, images.shape)


def _tilted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.rotate(images, 20, axes=(1, 2), reshape=False, order=1)


#: the sites' devices, in the order sites are given them
SCANNERS: dict[str, Device] = {"blurred": _blur, "faded": _faded, "offset": _offset, "grainy": _grainy,
                               "tilted": _tilted}
SHIFTS = ("none", "scanners")


def _scan(X: np.ndarray, device: str, rng: np.random.Generator) -> np.ndarray:
    side = int(round(np.sqrt(X.shape[1])))
    if side * side != X.shape[1]:
        raise ValueError(f"data.shift=scanners needs square images; records have {X.shape[1]} features")
    images = X.reshape(len(X), side, side).astype(np.float64)
    return np.clip(SCANNERS[device](images, rng), 0.0, 1.0).reshape(len(X), -1).astype(np.float32)


def site_device(site: int) -> str:
    """The device site ``site`` scans its records on."""
    return list(SCANNERS)[site % len(SCANNERS)]


def shift_task(task: TaskData, sites: list[np.ndarray], shift: str, seed: int) -> TaskData:
    """``task`` with its private records scanned on their site's device and its test records on
    devices drawn from the sites' (``shift="none"``: unchanged). The public split is untouched."""
    if shift == "none":
        return task
    if shift != "scanners":
        raise ValueError(f"data.shift={shift!r}: expected one of {list(SHIFTS)}")
    rng = np.random.default_rng([seed, 4242])
    private = task.private.X.copy()
    for site, records in enumerate(sites):
        if len(records):
            private[records] = _scan(task.private.X[records], site_device(site), rng)
    used = sorted({site_device(site) for site in range(len(sites))})
    drawn = rng.integers(0, len(used), len(task.test))
    test = task.test.X.copy()
    for k, device in enumerate(used):
        if (drawn == k).any():
            test[drawn == k] = _scan(task.test.X[drawn == k], device, rng)
    return TaskData(task.name, task.num_classes, task.public, Split(private, task.private.y),
                    Split(test, task.test.y))


def site_devices(shift: str, num_sites: int) -> list[str] | None:
    """The device each site scans on under ``shift`` (None: the sites' records are unshifted)."""
    return None if shift == "none" else [site_device(site) for site in range(num_sites)]
