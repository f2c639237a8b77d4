"""Tests for dac_tf.data: loaders, validation split, npz checks, deterministic pipelines."""

import collections
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dac_tf import data

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


def _rows(x, y=None):
    """Multiset of examples, each as the bytes of its image (and its label)."""
    x = np.ascontiguousarray(x)
    if y is None:
        return collections.Counter(row.tobytes() for row in x)
    return collections.Counter((row.tobytes(), int(label)) for row, label in zip(x, y))


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


# ----------------------------------------------------------------------------- import


def test_import_does_not_import_tfds():
    code = ("import sys, dac_tf.data; "
            "sys.exit(1 if 'tensorflow_datasets' in sys.modules else 0)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]


# ------------------------------------------------------------------------------- tfds


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100),
                                              ("svhn", 10)])
def test_tfds_mock_load(name, num_classes):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):
        splits = data.load(name, val_size=10, seed=3)
    assert splits.name == name
    assert splits.num_classes == num_classes
    assert len(splits.class_names) == num_classes
    assert splits.image_shape == (32, 32, 3)
    assert splits.x_train.shape == (30, 32, 32, 3)
    assert splits.x_val.shape == (10, 32, 32, 3)
    assert splits.x_test.shape == (40, 32, 32, 3)
    for x in (splits.x_train, splits.x_val, splits.x_test):
        assert x.dtype == np.uint8
        xf = data.to_float32(x)
        assert xf.dtype == np.float32 and xf.min() >= 0.0 and xf.max() <= 1.0
        assert xf.max() > 0.5  # really rescaled from [0, 255], not all zeros
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert y.dtype == np.int32
        assert y.min() >= 0 and y.max() < num_classes
    # The mocked train split is 40 distinct random images: val must be disjoint from
    # train and the two together must be the original 40 (mock test == mock train).
    train_rows, val_rows = _rows(splits.x_train), _rows(splits.x_val)
    assert not set(train_rows) & set(val_rows)
    assert train_rows + val_rows == _rows(splits.x_test)
    if name == "cifar10":
        assert splits.class_names == CIFAR10_NAMES
    # The pipeline turns them into float32 [0, 1] batches.
    bx, by = next(iter(data.eval_dataset(splits.x_test, splits.y_test, batch_size=16)))
    assert bx.dtype.name == "float32" and by.dtype.name == "int32"
    np.testing.assert_array_equal(bx.numpy(), splits.x_test[:16] / np.float32(255))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_tfds_missing_dataset_offline_is_clear_error(tmp_path, no_network):
    start = time.monotonic()
    with pytest.raises(data.DatasetError) as info:
        data.load("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert "'cifar10'" in message
    assert str(tmp_path) in message
    assert "--data_dir=DIR" in message
    assert "tfds.builder('cifar10', data_dir='DIR').download_and_prepare()" in message
    assert "www.cs.toronto.edu" in message  # the host that could not be reached
    assert "--dataset=npz:PATH" in message


def test_tfds_missing_dataset_without_download(tmp_path, no_network):
    with pytest.raises(data.DatasetError, match="svhn_cropped.*--data_dir=DIR"):
        data.load("svhn", data_dir=str(tmp_path), download=False)
    assert not os.listdir(tmp_path)  # nothing downloaded or created


def test_unknown_dataset():
    with pytest.raises(data.DatasetError, match="mnist.*cifar10, cifar100, svhn, digits"):
        data.load("mnist")


# ----------------------------------------------------------------------------- digits


def test_digits_load():
    from sklearn.datasets import load_digits
    splits = data.load("digits")
    assert splits.name == "digits"
    assert len(splits.x_train) + len(splits.x_test) == 1797
    assert len(splits.x_test) == 359
    assert splits.x_train.shape[1:] == (8, 8, 1) == splits.image_shape
    assert splits.x_val.shape == (0, 8, 8, 1) and splits.y_val.shape == (0,)
    assert splits.num_classes == 10 and splits.class_names == tuple("0123456789")
    for x in (splits.x_train, splits.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    for y in (splits.y_train, splits.y_test):
        assert y.dtype == np.int32 and y.min() == 0 and y.max() == 9
    # Train + test is exactly scikit-learn's set, scaled 0..16 -> 0..1.
    ref = load_digits()
    expected = _rows((ref.images / 16.0).astype(np.float32)[..., None], ref.target)
    got = (_rows(splits.x_train, splits.y_train) + _rows(splits.x_test, splits.y_test))
    assert got == expected


def test_digits_split_fixed_and_independent_of_seed():
    a = data.load("digits", seed=0)
    b = data.load("digits", seed=123)
    c = data.load("digits", seed=123, val_size=100)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_test, c.x_test)


# --------------------------------------------------------------------- validation split


def test_validation_split_partitions_train():
    full = data.load("digits")
    splits = data.load("digits", val_size=200, seed=0)
    assert len(splits.x_val) == len(splits.y_val) == 200
    assert len(splits.x_train) == len(full.x_train) - 200
    train = _rows(splits.x_train, splits.y_train)
    val = _rows(splits.x_val, splits.y_val)
    original = _rows(full.x_train, full.y_train)
    assert train + val == original  # union is the original train set, nothing repeated
    unique = {k for k, n in original.items() if n == 1}
    assert not set(train) & set(val) & unique
    np.testing.assert_array_equal(splits.x_test, full.x_test)  # test set untouched


def test_validation_split_depends_on_seed():
    a = data.load("digits", val_size=50, seed=0)
    a2 = data.load("digits", val_size=50, seed=0)
    b = data.load("digits", val_size=50, seed=1)
    np.testing.assert_array_equal(a.x_val, a2.x_val)
    assert _rows(a.x_val) != _rows(b.x_val)


@pytest.mark.parametrize("val_size", [-1, 1438, 5000, 1.5, True])
def test_validation_size_out_of_range(val_size):
    with pytest.raises(data.DatasetError, match=r"--val_size.*\[0, 1437\]"):
        data.load("digits", val_size=val_size)


# --------------------------------------------------------------------------- pipelines


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


# -------------------------------------------------------------------------------- npz


def _npz_arrays():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 3,
        "x_test": rng.integers(0, 256, size=(9, 6, 6, 3), dtype=np.uint8),
        "y_test": np.arange(9) % 3,
        "class_names": np.array(["cat", "dog", "fox"]),
    }


def test_npz_uint8_round_trip(tmp_path):
    arrays = _npz_arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    splits = data.load(f"npz:{path}", val_size=5, seed=0)
    assert splits.name == f"npz:{path}"
    assert splits.num_classes == 3 and splits.class_names == ("cat", "dog", "fox")
    assert splits.image_shape == (6, 6, 3)
    assert splits.x_train.dtype == np.uint8 and splits.y_train.dtype == np.int32
    assert len(splits.x_val) == 5 and len(splits.x_train) == 15
    assert (_rows(splits.x_train, splits.y_train) + _rows(splits.x_val, splits.y_val)
            == _rows(arrays["x_train"], arrays["y_train"]))
    np.testing.assert_array_equal(splits.x_test, arrays["x_test"])
    np.testing.assert_array_equal(splits.y_test, arrays["y_test"])


def test_npz_float_grayscale_and_column_labels(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "gray.npz"
    x_train = rng.uniform(0, 1, size=(12, 5, 5)).astype(np.float64)
    np.savez(path, x_train=x_train, y_train=(np.arange(12) % 4)[:, None],
             x_test=rng.uniform(0, 1, size=(4, 5, 5)), y_test=np.array([0, 1, 2, 3.0]))
    splits = data.load(f"npz:{path}")
    assert splits.x_train.shape == (12, 5, 5, 1) and splits.x_train.dtype == np.float32
    np.testing.assert_array_equal(splits.x_train[..., 0], x_train.astype(np.float32))
    assert splits.y_train.shape == (12,) and splits.num_classes == 4
    assert splits.class_names == ("0", "1", "2", "3")


def _set(key, value):
    def change(arrays):
        arrays[key] = value
    return change


def _drop(key):
    def change(arrays):
        del arrays[key]
    return change


_F = np.float32
BAD_NPZ = {
    "missing_key": (_drop("y_test"), ["y_test"]),
    "int_images": (_set("x_train", np.zeros((20, 6, 6, 3), np.int64)), ["x_train", "uint8"]),
    "float_above_one": (_set("x_test", np.full((9, 6, 6, 3), 1.5, _F)), ["x_test", "[0, 1]"]),
    "float_negative": (_set("x_train", np.full((20, 6, 6, 3), -0.1, _F)),
                       ["x_train", "[0, 1]"]),
    "nan": (_set("x_train", np.full((20, 6, 6, 3), np.nan, _F)), ["x_train", "NaN"]),
    "label_out_of_range": (_set("y_train", np.full(20, 3)), ["y_train", "class_names"]),
    "negative_label": (_set("y_test", np.full(9, -1)), ["y_test", "[0, num_classes)"]),
    "non_integer_label": (_set("y_train", np.full(20, 1.5)), ["y_train", "integer"]),
    "string_label": (_set("y_train", np.array(["a"] * 20)), ["y_train", "integer"]),
    "length_mismatch": (_set("y_train", np.zeros(19, np.int64)), ["y_train", "x_train"]),
    "empty": (_set("x_test", np.zeros((0, 6, 6, 3), np.uint8)), ["x_test", "empty"]),
    "empty_labels": (_set("y_test", np.zeros(0, np.int64)), ["y_test", "x_test"]),
    "wrong_rank": (_set("x_train", np.zeros((20, 108), np.uint8)), ["x_train", "[N, H, W, C]"]),
    "shape_mismatch": (_set("x_test", np.zeros((9, 5, 5, 3), np.uint8)), ["x_test", "match"]),
    "one_hot": (_set("y_train", np.eye(3)[np.arange(20) % 3]), ["y_train", "one-hot"]),
    "object_names": (_set("class_names", np.array(["a", 1], dtype=object)), ["class_names"]),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_npz_invalid(tmp_path, case):
    change, expected = BAD_NPZ[case]
    arrays = _npz_arrays()
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DatasetError) as info:
        data.load(f"npz:{path}")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for text in expected:
        assert text in message


def test_npz_missing_file_and_garbage(tmp_path):
    with pytest.raises(data.DatasetError, match="not found.*x_train, y_train"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(data.DatasetError, match="garbage.npz.*not a readable .npz"):
        data.load(f"npz:{garbage}")
