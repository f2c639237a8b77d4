"""The user's own dataset: arrays in an .npz file, checked before anything trains on them.

`--dataset=npz:PATH` names an .npz file with keys x_train, y_train, x_test, y_test and
optionally class_names or num_classes. Images are uint8 in [0, 255] or float in
[0, 1], [N, H, W, C] or grayscale [N, H, W]; labels are integer class indices. Every
violation is a one-line `DatasetError` naming the file, the key and what is valid.
"""

import io
import os

import numpy as np
import tensorflow as tf

from dac_tf.data.pipelines import to_float32
from dac_tf.data.splits import DatasetError
from dac_tf.data.splits import short_error

PREFIX = "npz:"


def load_npz(path):
    """Reads and checks an .npz dataset file (local, or any `tf.io.gfile` path).

    Args:
      path: the file, as given after "npz:" ("~" is expanded).

    Returns:
      (x_train, y_train, x_test, y_test, num_classes, class_names); both image
      arrays uint8, or both float32 in [0, 1]; labels int32.

    Raises:
      DatasetError: the file is missing or unreadable, or a key is missing or invalid.
    """
    path = os.path.expanduser(path)
    spec = f"{PREFIX}{path}"
    if not path:
        raise DatasetError("--dataset=npz:PATH needs a path, e.g. --dataset=npz:/data/x.npz")
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise DatasetError(f"{spec}: file not found; expected an .npz file with keys "
                           "x_train, y_train, x_test, y_test (optional class_names).")
    try:
        # allow_pickle=False: an .npz is data, loading it must not run code.
        # Read through tf.io.gfile, so npz files on gs://, s3://, hdfs:// load too.
        with tf.io.gfile.GFile(path, "rb") as f, \
                np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in keys]
            if missing:
                raise DatasetError(
                    f"{spec}: missing key(s) {', '.join(missing)}; the file has "
                    f"{sorted(keys)} but needs x_train, y_train, x_test, y_test "
                    "(optional class_names).")
            arrays = {}
            for key in ("x_train", "y_train", "x_test", "y_test", "class_names",
                        "num_classes"):
                if key not in keys:
                    continue
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    raise DatasetError(
                        f"{spec}: key {key} cannot be read without pickle ({short_error(e)}); "
                        "store plain numeric arrays, and class_names as np.array(names, "
                        "dtype=str).") from e
    except DatasetError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetError(f"{spec}: not a readable .npz file ({short_error(e)}); create it "
                           "with np.savez(path, x_train=..., y_train=..., x_test=..., "
                           "y_test=...).") from e

    x_train = _check_npz_images(arrays["x_train"], "x_train", spec)
    x_test = _check_npz_images(arrays["x_test"], "x_test", spec)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{spec}: x_train images have shape {x_train.shape[1:]} but "
                           f"x_test images {x_test.shape[1:]}; they must match.")
    if x_train.dtype != x_test.dtype:
        # One dtype per Splits, so downstream code converts all splits the same way.
        x_train, x_test = to_float32(x_train), to_float32(x_test)
    y_train = _check_npz_labels(arrays["y_train"], "y_train", spec, len(x_train), "x_train")
    y_test = _check_npz_labels(arrays["y_test"], "y_test", spec, len(x_test), "x_test")

    num_classes, names = _npz_classes(arrays, spec, y_train, y_test)
    return x_train, y_train, x_test, y_test, num_classes, names


def _first_label_at_least(y, bound):
    index = int(np.argmax(y >= bound))
    return index, int(y[index])


def _npz_classes(arrays, spec, y_train, y_test):
    """The class count and names of an npz file, and a check of every label against it.

    The count comes from `class_names` or `num_classes` when the file has them. Only
    without either is it inferred from the labels, and then every class up to the
    largest label must occur in y_train: one stray label (100000 among digits 0-9) would
    otherwise make a 100001-class model that trains at chance, or exhausts the memory.
    """
    declared = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
            raise DatasetError(
                f"{spec}: class_names must be a non-empty 1-D string array, got dtype "
                f"{names.dtype} and shape {names.shape}.")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        declared = ("class_names", len(names))
    if "num_classes" in arrays:
        value = arrays["num_classes"]
        if value.ndim != 0 or value.dtype.kind not in "iu" or int(value) < 2:
            raise DatasetError(f"{spec}: num_classes must be an integer scalar >= 2 "
                               "(np.savez(..., num_classes=10)), got "
                               f"{value.tolist()!r} of dtype {value.dtype}.")
        if declared and declared[1] != int(value):
            raise DatasetError(f"{spec}: num_classes={int(value)} but class_names has "
                               f"{declared[1]} entries; they must agree.")
        declared = ("num_classes", int(value))
    if declared:
        source, num_classes = declared
        for key, y in (("y_train", y_train), ("y_test", y_test)):
            if y.max() >= num_classes:
                index, label = _first_label_at_least(y, num_classes)
                raise DatasetError(
                    f"{spec}: {key}[{index}] = {label} is outside the {num_classes} "
                    f"classes that {source} declares; labels must be in "
                    f"[0, {num_classes}).")
        if "class_names" not in arrays:
            names = tuple(str(i) for i in range(num_classes))
        return num_classes, names
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise DatasetError(f"{spec}: y_train and y_test contain only label 0; need at "
                           "least 2 classes (labels in [0, num_classes)).")
    present = np.unique(y_train)   # sorted; never an array of num_classes entries
    if len(present) != num_classes:
        gaps = np.flatnonzero(present != np.arange(len(present)))
        first_missing = int(gaps[0]) if len(gaps) else len(present)
        missing = num_classes - len(present)
        # The label that makes the inferred count implausible: the first one above the
        # first class that never occurs in the training set.
        key, y = (("y_train", y_train) if y_train.max() > first_missing
                  else ("y_test", y_test))
        index, label = _first_label_at_least(y, first_missing + 1)
        shown = (f"class {first_missing} never occurs" if missing == 1 else
                 f"{missing} classes, from {first_missing} on, never occur")
        raise DatasetError(
            f"{spec}: {key}[{index}] = {label} would make {num_classes} classes, but "
            f"{shown} in y_train; fix the label, or declare the classes in the file "
            "(class_names=np.array([...]) or num_classes=N).")
    return num_classes, tuple(str(i) for i in range(num_classes))


def _check_npz_images(x, key, spec):
    if x.ndim == 3:
        x = x[..., None]  # [N, H, W] grayscale
    if x.ndim != 4:
        raise DatasetError(f"{spec}: {key} has shape {x.shape}; expected [N, H, W, C] or "
                           "[N, H, W].")
    if x.size == 0:
        raise DatasetError(f"{spec}: {key} is empty (shape {x.shape}); expected at least "
                           "one image of non-zero size.")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{spec}: {key} has dtype {x.dtype}; images must be uint8 in "
                           "[0, 255] or float in [0, 1].")
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{spec}: {key} contains NaN or infinite values; float images "
                           "must be finite and in [0, 1].")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        # Never clipped: values outside [0, 1] mean the file is on another scale, and
        # clipping would silently train on different images.
        raise DatasetError(f"{spec}: {key} has values in [{lo:g}, {hi:g}]; float images "
                           "must be in [0, 1] (divide by 255 if they are in [0, 255], or "
                           "store uint8).")
    return x.astype(np.float32)


def _check_npz_labels(y, key, spec, num_images, image_key):
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # [N, 1], as keras.datasets returns them
    if y.ndim != 1:
        raise DatasetError(f"{spec}: {key} has shape {y.shape}; expected integer class "
                           "indices [N] (or [N, 1]), not one-hot.")
    if len(y) != num_images:
        raise DatasetError(f"{spec}: {key} has {len(y)} labels but {image_key} has "
                           f"{num_images} images; they must have the same length.")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DatasetError(f"{spec}: {key} contains non-integer values; labels must "
                               "be integer class indices in [0, num_classes).")
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DatasetError(f"{spec}: {key} has dtype {y.dtype}; labels must be integer "
                           "class indices in [0, num_classes).")
    if y.min() < 0 or y.max() > np.iinfo(np.int32).max:
        raise DatasetError(f"{spec}: {key} has labels in [{y.min()}, {y.max()}]; labels "
                           "must be in [0, num_classes).")
    return y.astype(np.int32)
