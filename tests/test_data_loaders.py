"""Tests of dac_tf.data.loaders: `load`, the digits and tfds splits, the validation split."""

import collections
import os
import socket
import subprocess
import sys

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


@pytest.mark.slow
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


def test_tfds_missing_dataset_without_download(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
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
