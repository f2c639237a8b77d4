"""Tests of dac_tf.data.npz: the user's .npz dataset and its checks."""

import collections

import numpy as np
import pytest

from dac_tf import data


def _rows(x, y=None):
    """Multiset of examples, each as the bytes of its image (and its label)."""
    x = np.ascontiguousarray(x)
    if y is None:
        return collections.Counter(row.tobytes() for row in x)
    return collections.Counter((row.tobytes(), int(label)) for row, label in zip(x, y))


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
