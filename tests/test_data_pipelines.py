"""Tests of dac_tf.data.pipelines: deterministic, resumable batches and augmentation."""

import collections

import numpy as np
import pytest

from dac_tf import data


def _collect(ds):
    batches = [(bx.numpy(), by.numpy()) for bx, by in ds]
    return [b[0] for b in batches], [b[1] for b in batches]


def _indexed_images(num, shape=(6, 6, 1), seed=0):
    """uint8 images whose first pixel is the example's index, so batches reveal order."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(num,) + shape, dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(num)
    y = (np.arange(num) % 7).astype(np.int64)
    return x, y


def _order(batch_x):
    return np.rint(batch_x[:, 0, 0, 0] * 255).astype(int)


def test_steps_per_epoch():
    assert data.steps_per_epoch(50, 16) == 4
    assert data.steps_per_epoch(48, 16) == 3
    assert data.steps_per_epoch(1, 128) == 1
    assert data.steps_per_epoch(50000, 128) == 391


def test_train_dataset_epochs_are_permutations():
    x, y = _indexed_images(50)
    ds = data.train_dataset(x, y, batch_size=16, seed=5, num_epochs=2)
    assert int(ds.cardinality()) == 8
    xs, ys = _collect(ds)
    assert [len(b) for b in xs] == [16, 16, 16, 2] * 2  # partial last batch, no mixing
    orders = []
    for epoch in range(2):
        bx = np.concatenate(xs[4 * epoch:4 * epoch + 4])
        by = np.concatenate(ys[4 * epoch:4 * epoch + 4])
        assert bx.dtype == np.float32 and by.dtype == np.int32
        idx = _order(bx)
        assert sorted(idx) == list(range(50))
        np.testing.assert_array_equal(bx, x[idx] / np.float32(255))
        np.testing.assert_array_equal(by, y[idx])
        orders.append(idx)
    assert list(orders[0]) != list(orders[1])
    assert list(orders[0]) != list(range(50))


def test_train_dataset_same_seed_same_batches_other_seed_differs():
    x, y = _indexed_images(40)
    a = _collect(data.train_dataset(x, y, batch_size=8, seed=1, augment="zero"))
    b = _collect(data.train_dataset(x, y, batch_size=8, seed=1, augment="zero"))
    c = _collect(data.train_dataset(x, y, batch_size=8, seed=2, augment="zero"))
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(c[0]))


@pytest.mark.parametrize("augment", ["none", "zero", "reflect"])
def test_train_dataset_resume_reproduces_epoch(augment):
    x, y = _indexed_images(30, shape=(8, 8, 3))
    full_x, full_y = _collect(data.train_dataset(
        x, y, batch_size=8, seed=7, augment=augment, num_epochs=3))
    res_x, res_y = _collect(data.train_dataset(
        x, y, batch_size=8, seed=7, augment=augment, start_epoch=2, num_epochs=1))
    assert len(full_x) == 12 and len(res_x) == 4
    for u, v in zip(full_x[8:] + full_y[8:], res_x + res_y):
        np.testing.assert_array_equal(u, v)
    # Not trivially equal: epoch 1 differs from epoch 2.
    assert not np.array_equal(np.concatenate(full_x[4:8]), np.concatenate(res_x))


def _candidates(image, pad, mode):
    """All 81 shifted x 2 flipped crops of `image` padded in numpy: [162, H, W, C]."""
    h, w = image.shape[:2]
    kwargs = {"constant_values": 0} if mode == "constant" else {}
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode=mode, **kwargs)
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)]
    crops = np.stack(crops)
    return np.concatenate([crops, crops[:, :, ::-1]])


@pytest.mark.parametrize("augment,mode", [("zero", "constant"), ("reflect", "reflect")])
def test_augmentation_is_shift_and_flip_with_border(augment, mode):
    rng = np.random.default_rng(0)
    num, pad = 48, 4
    # Strictly positive pixels, so a zero-filled border is told apart from a reflection.
    x = rng.uniform(0.1, 1.0, size=(num, 8, 8, 2)).astype(np.float32)
    y = np.arange(num)
    xs, ys = _collect(data.train_dataset(x, y, batch_size=16, seed=0, augment=augment,
                                         pad=pad, num_epochs=3))
    images, labels = np.concatenate(xs), np.concatenate(ys)
    assert images.shape == (3 * num, 8, 8, 2)
    cands = {i: _candidates(x[i], pad, mode) for i in range(num)}
    seen = collections.Counter()
    for image, label in zip(images, labels):
        hits = np.flatnonzero(np.all(cands[label] == image, axis=(1, 2, 3)))
        assert hits.size, "augmented image is not a padded shift/flip of its original"
        seen[int(hits[0])] += 1
    shifts = {h % 81 for h in seen}
    flipped = sum(n for h, n in seen.items() if h >= 81 and h % 81 != 40)
    assert len(shifts) >= 40  # 144 draws over 81 shifts: crops really are random
    assert 0 < flipped < sum(seen.values())
    has_zero = bool((images == 0).any())
    assert has_zero == (augment == "zero")


def test_train_dataset_rejects_bad_arguments():
    x, y = _indexed_images(10)
    with pytest.raises(ValueError, match="augment"):
        data.train_dataset(x, y, batch_size=4, seed=0, augment="crop")
    with pytest.raises(ValueError, match="batch_size"):
        data.train_dataset(x, y, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="labels"):
        data.train_dataset(x, y[:5], batch_size=4, seed=0)
    with pytest.raises(ValueError, match="reflect"):
        data.train_dataset(x, y, batch_size=4, seed=0, augment="reflect", pad=6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_eval_dataset_keeps_order(dtype):
    x, y = _indexed_images(50)
    if dtype == np.float32:
        x = x.astype(np.float32) / 255
    xs, ys = _collect(data.eval_dataset(x, y, batch_size=16))
    assert [len(b) for b in xs] == [16, 16, 16, 2]
    assert all(b.dtype == np.float32 for b in xs) and all(b.dtype == np.int32 for b in ys)
    np.testing.assert_array_equal(np.concatenate(xs), data.to_float32(x))
    np.testing.assert_array_equal(np.concatenate(ys), y)


def test_to_float32_is_the_pipeline_conversion():
    # uint8 v means v / 255 (exactly the float32 division), floats are only cast.
    x = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4)
    expected = np.array([v / 255 for v in range(256)], np.float32).reshape(x.shape)
    np.testing.assert_array_equal(data.to_float32(x), expected)
    halves = np.full((2, 2), 0.5, np.float64)
    assert data.to_float32(halves).dtype == np.float32
    with pytest.raises(ValueError, match="uint8 or float"):
        data.to_float32(np.zeros((2, 2), np.int64))
