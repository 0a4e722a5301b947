"""data.shift=scanners: the sites' records and the test split from other devices than the public split."""

import numpy as np
import pytest

from fedens.data import PARTITIONS, load_task
from fedens.data.shift import SCANNERS, shift_task, site_device


def task_and_sites(num_sites=7, seed=0):
    task = load_task("digits", 0.3, 0.25, seed=seed)
    return task, PARTITIONS.split("iid", task.private.y, num_sites, seed)


def test_each_site_scans_on_its_own_device_and_the_public_split_is_untouched():
    task, sites = task_and_sites()
    shifted = shift_task(task, sites, "scanners", seed=0)
    assert shifted.public is task.public
    np.testing.assert_array_equal(shifted.private.y, task.private.y)
    assert [site_device(s) for s in range(7)] == [*SCANNERS, *list(SCANNERS)[:2]]
    for records in sites:
        before, after = task.private.X[records], shifted.private.X[records]
        assert not np.allclose(before, after)
        assert after.dtype == np.float32 and 0 <= after.min() and after.max() <= 1
    # site 0 blurs: the same total ink spread out, a smaller peak; site 2's sensor sits a pixel over
    blurred = shifted.private.X[sites[0]]
    assert blurred.max(axis=1).mean() < task.private.X[sites[0]].max(axis=1).mean()
    offset = shifted.private.X[sites[2]].reshape(-1, 8, 8)
    np.testing.assert_array_equal(offset[:, :, 1:], task.private.X[sites[2]].reshape(-1, 8, 8)[:, :, :-1])


def test_the_test_split_comes_from_the_sites_devices_and_is_seeded():
    task, sites = task_and_sites(num_sites=2)  # devices 'blurred' and 'faded' only
    shifted = shift_task(task, sites, "scanners", seed=3)
    faded = np.isclose(shifted.test.X.min(axis=1), 0.3)  # a faded record's background is grey
    assert 0.35 < faded.mean() < 0.65
    blurred = ~faded
    assert (shifted.test.X[blurred].max(axis=1) < task.test.X[blurred].max(axis=1) + 1e-6).all()
    again = shift_task(task, sites, "scanners", seed=3)
    np.testing.assert_array_equal(again.test.X, shifted.test.X)
    assert shift_task(task, sites, "none", seed=3) is task


def test_a_shift_that_cannot_apply_is_named():
    task, sites = task_and_sites()
    with pytest.raises(ValueError, match="data.shift='sideways': expected one of"):
        shift_task(task, sites, "sideways", seed=0)
    from fedens.data.datasets import Split, TaskData

    wide = TaskData("t", 2, task.public, Split(np.zeros((10, 5), np.float32), np.zeros(10, int)),
                    Split(np.zeros((4, 5), np.float32), np.zeros(4, int)))
    with pytest.raises(ValueError, match="needs square images; records have 5 features"):
        shift_task(wide, [np.arange(10)], "scanners", seed=0)
