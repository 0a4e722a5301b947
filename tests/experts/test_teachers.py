"""PATE teachers: grouped CNNs, one per shard, with per-image augmentation."""

import numpy as np
import pytest
import torch

from fedens.experts.teachers import TeacherCNNs, TeacherConfig, augment, label_prior_shift


def test_augment_moves_each_image_on_its_own_and_is_off_at_zero():
    x = torch.zeros(4, 3, 28, 28)
    x[..., 10:18, 12:16] = 1.0
    assert augment(x, 0.0, 0.0, np.random.default_rng(0)) is x
    moved = augment(x, 2.0, 10.0, np.random.default_rng(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)
    flat = moved.reshape(12, -1)
    assert len({tuple(row.round(decimals=4).tolist()) for row in flat}) == 12  # 12 different moves
    # a small shift and rotation keep the stroke inside the frame: its ink is kept (bilinear)
    assert torch.allclose(flat.sum(1), torch.full((12,), 32.0), rtol=0.1)


def test_a_teacher_sees_only_its_own_shard_with_augmentation_on():
    rng = np.random.default_rng(0)
    shards = [rng.random((30, 784), dtype=np.float32) for _ in range(2)]
    labels = [np.full(30, 3), np.full(30, 7)]
    config = TeacherConfig(steps=40, shift_px=2, rotate_deg=10)
    teachers = TeacherCNNs.fit(shards, labels, config, seed=0)
    assert teachers.predict(shards[0][:5]).tolist() == [[3] * 5, [7] * 5]


def test_the_label_prior_shift_is_minus_log_of_each_shards_smoothed_label_frequencies():
    shard_labels = [np.array([0, 0, 0, 1]), np.array([2])]
    shift = label_prior_shift(shard_labels, 3, strength=0.5)
    expected = -0.5 * np.log(np.array([[4, 2, 1], [1, 1, 2]]) / np.array([[7], [4]]))
    np.testing.assert_allclose(shift, expected)
    assert not label_prior_shift(shard_labels, 3, strength=0.0).any()
    with pytest.raises(ValueError, match="strength must be >= 0"):
        label_prior_shift(shard_labels, 3, strength=-1)


def test_a_logit_shift_moves_each_teachers_vote_and_only_its_own():
    rng = np.random.default_rng(0)
    shards = [rng.random((30, 784), dtype=np.float32) for _ in range(2)]
    teachers = TeacherCNNs.fit(shards, [np.full(30, 3), np.full(30, 7)], TeacherConfig(steps=40), seed=0)
    images = rng.random((5, 784), dtype=np.float32)
    shift = np.zeros((2, 10))
    shift[1, 5] = 1e3  # only teacher 1 is pushed to class 5
    assert teachers.predict(images, logit_shift=shift).tolist() == [[3] * 5, [5] * 5]
    votes = teachers.votes(images, logit_shift=shift)
    assert (votes[:, 3] == 1).all() and (votes[:, 5] == 1).all() and (votes.sum(axis=1) == 2).all()
