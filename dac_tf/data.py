"""Datasets and deterministic, resumable input pipelines.

Supported `dataset` strings:

* "cifar10", "cifar100", "svhn" (tfds "svhn_cropped"): loaded with
  `tensorflow_datasets`, imported only inside `load` so that importing this module
  stays cheap and does not need tfds.
* "digits": scikit-learn's 1,797 8x8 grayscale digits; ships with scikit-learn, so it
  needs no download. A tiny dataset for smoke runs and tests. Its train/test split is
  fixed (independent of `--seed`) so every run is judged on the same test images.
* "npz:PATH": the user's own arrays in an .npz file with keys x_train, y_train,
  x_test, y_test and optionally class_names.

Memory layout: `Splits` keeps images as stored, **uint8 in [0, 255]** (tfds and uint8
npz files; value v means v / 255) or **float32 in [0, 1]** (digits and float npz
files). The cast to float32 [0, 1] happens per batch inside the tf.data pipeline, so
CIFAR-10 takes 150 MB in memory instead of 600 MB. `to_float32` is the same
conversion in numpy.

Determinism: `train_dataset` makes the order and the augmentation of epoch e a pure
function of (seed, e), using stateless random ops only, so a run resumed at epoch e
sees exactly the batches an uninterrupted run would have seen. Nothing depends on the
global TF seed or on how many random ops ran before.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

DATASETS = ("cifar10", "cifar100", "svhn", "digits")  # plus "npz:PATH"
AUGMENTATIONS = ("none", "reflect", "zero")

_TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
_NPZ_PREFIX = "npz:"
_TFDS_CHUNK = 10_000  # examples per read from tfds

# Used when the tfds metadata carries no label names (e.g. under tfds mock data, which
# reads the feature spec from code where CIFAR-10's names are only num_classes=10).
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                  "horse", "ship", "truck")

# A fixed RNG, deliberately not --seed: the digits test set must be the same in every
# run, or numbers from runs with different seeds would not be comparable.
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TEST_FRACTION = 0.2

# Second word of the stateless key, so the stream derived from --seed=s cannot collide
# with a stateless stream some other module derives from [s, 0].
_PIPELINE_SALT = 0x0DAC


class DatasetError(ValueError):
    """A dataset cannot be loaded, or its contents or the split request are invalid."""


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """A dataset in memory as numpy arrays.

    Images are uint8 in [0, 255] (meaning value / 255) or float32 in [0, 1]; the
    three image arrays of one `Splits` share a dtype. `train_dataset`, `eval_dataset`
    and `to_float32` accept either. Labels are int32 in [0, num_classes).

    Attributes:
      x_train, y_train: training images [N, H, W, C] and labels [N] (the validation
        examples removed).
      x_val, y_val: held-out validation split taken from the training set; size 0
        when `val_size=0`.
      x_test, y_test: test images and labels.
      num_classes: number of classes.
      image_shape: (H, W, C).
      class_names: one name per class.
      name: the dataset string given to `load` ("cifar10", "npz:/path/file.npz", ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple
    class_names: tuple
    name: str


def to_float32(x):
    """Converts images to float32 in [0, 1], exactly as the tf.data pipelines do.

    Args:
      x: uint8 array in [0, 255] or float array in [0, 1].

    Returns:
      float32 numpy array of the same shape.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")


def steps_per_epoch(num_examples, batch_size):
    """Number of batches in one epoch; the last one may be partial (not dropped).

    Args:
      num_examples: examples per epoch.
      batch_size: examples per batch.

    Returns:
      ceil(num_examples / batch_size).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return -(-int(num_examples) // int(batch_size))


def load(dataset, *, data_dir=None, val_size=0, seed=0, download=True):
    """Loads a dataset into memory and splits off a validation set.

    Args:
      dataset: one of `DATASETS` or "npz:PATH".
      data_dir: tfds data directory (tfds datasets only); None means the tfds default
        (~/tensorflow_datasets).
      val_size: number of training examples held out as a validation split, chosen
        at random with `seed` and removed from the training set (the
        robust-overfitting code base uses 1,000). 0 gives an empty validation split.
      seed: seed of the validation split. It does not affect the digits train/test
        split, which is fixed.
      download: for tfds datasets not yet prepared under `data_dir`, whether tfds may
        try to download them. With False a missing dataset fails at once, without
        touching the network.

    Returns:
      A `Splits`.

    Raises:
      DatasetError: unknown dataset, tfds dataset not available, invalid npz file,
        or `val_size` out of range.
    """
    if not isinstance(dataset, str):
        raise DatasetError(f"--dataset must be a string, got {dataset!r}")
    if dataset.startswith(_NPZ_PREFIX):
        parts = _load_npz(dataset[len(_NPZ_PREFIX):])
    elif dataset in _TFDS_NAMES:
        parts = _load_tfds(dataset, data_dir=data_dir, download=download)
    elif dataset == "digits":
        parts = _load_digits()
    else:
        raise DatasetError(
            f"--dataset={dataset!r} is not supported; use one of "
            f"{', '.join(DATASETS)} or npz:PATH (an .npz file with x_train, y_train, "
            "x_test, y_test)."
        )
    x_train, y_train, x_test, y_test, num_classes, class_names = parts
    x_train, y_train, x_val, y_val = _split_validation(
        x_train, y_train, val_size=val_size, seed=seed, dataset=dataset)
    return Splits(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        x_test=x_test, y_test=y_test, num_classes=int(num_classes),
        image_shape=tuple(int(d) for d in x_train.shape[1:]),
        class_names=tuple(class_names), name=dataset,
    )


def _split_validation(x, y, *, val_size, seed, dataset):
    num_train = len(x)
    if (isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer))
            or not 0 <= val_size < num_train):
        raise DatasetError(
            f"--val_size={val_size!r} is out of range for dataset {dataset!r}: it must "
            f"be an integer in [0, {num_train - 1}] (the training set has {num_train} "
            "examples; 0 disables the validation split)."
        )
    if val_size == 0:
        return x, y, x[:0], y[:0]
    permutation = np.random.default_rng(seed).permutation(num_train)
    # Sorted, so the remaining training examples keep their original relative order.
    val_idx = np.sort(permutation[:val_size])
    train_idx = np.sort(permutation[val_size:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _tfds_error(dataset, tfds_name, location, cause):
    # One line: the CLI prints it as is, and a multi-line tfds traceback buries the fix.
    reason = f" ({cause})" if cause else ""
    return DatasetError(
        f"Dataset {dataset!r} (tfds {tfds_name!r}) could not be downloaded or found "
        f"under {location}{reason}. Fix: on a machine with internet run `python -c "
        f"\"import tensorflow_datasets as tfds; tfds.load('{tfds_name}', "
        f"data_dir='DIR')\"`, copy DIR here and pass --data_dir=DIR, or use "
        "--dataset=npz:PATH."
    )


def _short(exc):
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_tfds(dataset, *, data_dir, download):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    tfds_name = _TFDS_NAMES[dataset]
    location = f"data_dir={data_dir!r}" if data_dir else "the default tfds data_dir"
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        location = str(builder.data_dir)  # the versioned folder tfds looks in
        # Checked first so that download=False never touches the network: offline,
        # tfds' HTTP retries can stall for a long time on a firewalled cluster.
        if not builder.is_prepared():
            if not download:
                raise _tfds_error(dataset, tfds_name, location, "not prepared, download=False")
            builder.download_and_prepare()
        arrays = {}
        for split in ("train", "test"):
            # Chunks, not batch_size=-1: that batches by the split size recorded in the
            # metadata, and where none is recorded (mock data, partial metadata) TF 2.21
            # aborts the process trying to reserve a sys.maxsize-element batch.
            chunks = list(tfds.as_numpy(builder.as_dataset(
                split=split, as_supervised=True, batch_size=_TFDS_CHUNK)))
            arrays[split] = tuple(np.concatenate([c[i] for c in chunks]) if chunks
                                  else np.zeros((0,)) for i in (0, 1))
    except DatasetError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        # tfds raises many unrelated types here (DatasetNotFoundError, ConnectionError,
        # ImportError of an optional download dependency, ...): all mean "not available".
        raise _tfds_error(dataset, tfds_name, location, _short(e)) from e

    label = builder.info.features["label"]
    num_classes = int(label.num_classes)
    names = tuple(str(n) for n in (label.names or ()))
    if dataset == "cifar10" and names == tuple(str(i) for i in range(10)):
        names = _CIFAR10_NAMES
    if len(names) != num_classes:
        names = tuple(str(i) for i in range(num_classes))

    out = []
    for split in ("train", "test"):
        images, labels = arrays[split]
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
            raise DatasetError(
                f"tfds {tfds_name!r} split {split!r} gave images of dtype {images.dtype} "
                f"and shape {images.shape}; expected non-empty uint8 [N, H, W, C]."
            )
        labels = labels.astype(np.int32)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(
                f"tfds {tfds_name!r} split {split!r} has labels in "
                f"[{labels.min()}, {labels.max()}]; expected [0, {num_classes})."
            )
        out += [images, labels]
    return (*out, num_classes, names)


def _load_digits():
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

    digits = sk_datasets.load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap).
    images = (digits.images.astype(np.float32) / np.float32(16.0))[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
    num_test = int(round(_DIGITS_TEST_FRACTION * len(images)))
    test_idx, train_idx = np.sort(order[:num_test]), np.sort(order[num_test:])
    names = tuple(str(n) for n in digits.target_names)
    return (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
            len(names), names)


def _load_npz(path):
    path = os.path.expanduser(path)
    spec = f"npz:{path}"
    if not path:
        raise DatasetError("--dataset=npz:PATH needs a path, e.g. --dataset=npz:/data/x.npz")
    if not os.path.isfile(path):
        raise DatasetError(f"{spec}: file not found; expected an .npz file with keys "
                           "x_train, y_train, x_test, y_test (optional class_names).")
    try:
        # allow_pickle=False: an .npz is data, loading it must not run code.
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in keys]
            if missing:
                raise DatasetError(
                    f"{spec}: missing key(s) {', '.join(missing)}; the file has "
                    f"{sorted(keys)} but needs x_train, y_train, x_test, y_test "
                    "(optional class_names).")
            arrays = {}
            for key in ("x_train", "y_train", "x_test", "y_test", "class_names"):
                if key not in keys:
                    continue
                try:
                    arrays[key] = npz[key]
                except ValueError as e:
                    raise DatasetError(
                        f"{spec}: key {key} cannot be read without pickle ({_short(e)}); "
                        "store plain numeric arrays, and class_names as np.array(names, "
                        "dtype=str).") from e
    except DatasetError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise DatasetError(f"{spec}: not a readable .npz file ({_short(e)}); create it "
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

    max_label = int(max(y_train.max(), y_test.max()))
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
            raise DatasetError(
                f"{spec}: class_names must be a non-empty 1-D string array, got dtype "
                f"{names.dtype} and shape {names.shape}.")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        num_classes = len(names)
        if max_label >= num_classes:
            key = "y_train" if y_train.max() == max_label else "y_test"
            raise DatasetError(
                f"{spec}: {key} has label {max_label} but class_names has only "
                f"{num_classes} entries; labels must be in [0, {num_classes}).")
    else:
        num_classes = max_label + 1
        if num_classes < 2:
            raise DatasetError(f"{spec}: y_train and y_test contain only label 0; "
                               "need at least 2 classes (labels in [0, num_classes)).")
        names = tuple(str(i) for i in range(num_classes))
    return x_train, y_train, x_test, y_test, num_classes, names


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


def _to_float_tf(images):
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _check_arrays(x, y, batch_size):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape [{len(x)}], got {y.shape}")
    if len(x) == 0:
        raise ValueError("cannot build a dataset from 0 examples")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x, y.astype(np.int32)


def _deterministic(ds):
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _augment_batch(images, offsets, flips, augment, pad):
    """Pads, crops at the given per-example offsets and flips the given examples."""
    mode = "REFLECT" if augment == "reflect" else "CONSTANT"
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    # Per-example crops as two batched gathers (rows, then columns): one op for the
    # whole batch instead of one crop op per image.
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    return tf.where(flips[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def train_dataset(x, y, *, batch_size, seed, augment="none", pad=4, start_epoch=0,
                  num_epochs=1):
    """Shuffled, optionally augmented training batches for a range of epochs.

    Epoch e is a pure function of (seed, e): its order is a stateless shuffle keyed
    by (seed, e), and the augmentation of the example at position p of epoch e is
    drawn from the same key, so `start_epoch=e` reproduces exactly the batches an
    uninterrupted run sees in epoch e (resuming from a checkpoint). Each epoch has
    `steps_per_epoch(N, batch_size)` batches; the last one is partial, as in the
    reference code. Batches never mix epochs.

    With Keras `fit`, pass `steps_per_epoch=steps_per_epoch(N, batch_size)` so one
    iterator runs through all the epochs of the dataset in sequence.

    The arrays are captured in the pipeline (stored once, uint8 stays uint8) and the
    float conversion and augmentation run per batch.

    Args:
      x: images [N, H, W, C], uint8 in [0, 255] or float in [0, 1].
      y: integer labels [N].
      batch_size: examples per batch.
      seed: integer seed of the shuffling and augmentation.
      augment: "none"; "reflect" (AT reference: reflect-pad `pad` pixels, random crop
        back to H x W, random horizontal flip); "zero" (TRADES / MART: the same with
        zero padding).
      pad: padding in pixels for the random crop.
      start_epoch: first epoch (0-based) to produce.
      num_epochs: number of consecutive epochs to produce.

    Returns:
      A `tf.data.Dataset` of (images float32 [B, H, W, C] in [0, 1], labels int32
      [B]) for epochs start_epoch .. start_epoch + num_epochs - 1.
    """
    x, y = _check_arrays(x, y, batch_size)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not valid; use one of "
                         f"{', '.join(AUGMENTATIONS)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            -2**63 <= seed < 2**63):
        raise ValueError(f"seed must be an integer that fits in int64, got {seed!r}")
    if start_epoch < 0 or num_epochs < 1:
        raise ValueError(f"need start_epoch >= 0 and num_epochs >= 1, got {start_epoch} "
                         f"and {num_epochs}")
    num, height, width = x.shape[0], x.shape[1], x.shape[2]
    if augment != "none":
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if augment == "reflect" and pad >= min(height, width):
            raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for "
                             f"{height}x{width} images")
    batch_size = int(batch_size)
    images, labels = tf.constant(x), tf.constant(y)
    key = tf.constant([int(seed), _PIPELINE_SALT], tf.int64)

    def fold(k, data):
        return tf.random.experimental.stateless_fold_in(
            k, tf.cast(data, tf.int64), alg="philox")

    def epoch_plan(epoch):
        epoch_key = fold(key, epoch)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num, dtype=tf.int32), seed=fold(epoch_key, 0), alg="philox")
        # Drawn for every position of the epoch at once: the draw at position p is a
        # function of (seed, epoch, p) only.
        offsets = tf.random.stateless_uniform(
            [num, 2], seed=fold(epoch_key, 1), minval=0, maxval=2 * pad + 1,
            dtype=tf.int32, alg="philox")
        flips = tf.random.stateless_uniform(
            [num], seed=fold(epoch_key, 2), minval=0, maxval=2, dtype=tf.int32,
            alg="philox") > 0
        return tf.data.Dataset.from_tensor_slices((order, offsets, flips)).batch(batch_size)

    def make_batch(order, offsets, flips):
        batch_x = _to_float_tf(tf.gather(images, order))
        if augment != "none":
            batch_x = _augment_batch(batch_x, offsets, flips, augment, pad)
        return batch_x, tf.gather(labels, order)

    ds = tf.data.Dataset.range(start_epoch, start_epoch + num_epochs).flat_map(epoch_plan)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # flat_map hides the length; Keras and progress bars want it.
    ds = ds.apply(tf.data.experimental.assert_cardinality(
        num_epochs * steps_per_epoch(num, batch_size)))
    return _deterministic(ds.prefetch(tf.data.AUTOTUNE))


def eval_dataset(x, y, *, batch_size):
    """Batches in the given order, without augmentation; the last batch is partial.

    Args:
      x: images [N, H, W, C], uint8 in [0, 255] or float in [0, 1].
      y: integer labels [N].
      batch_size: examples per batch.

    Returns:
      A `tf.data.Dataset` of (images float32 [B, H, W, C] in [0, 1], labels int32 [B]).
    """
    x, y = _check_arrays(x, y, batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(batch_size))
    ds = ds.map(lambda bx, by: (_to_float_tf(bx), by),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _deterministic(ds.prefetch(tf.data.AUTOTUNE))
