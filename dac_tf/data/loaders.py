"""Loading a dataset into memory: tfds, scikit-learn's digits or an .npz file.

Supported `dataset` strings:

* "cifar10", "cifar100", "svhn" (tfds "svhn_cropped"): loaded with
  `tensorflow_datasets`, imported only inside `load` so that importing this module
  stays cheap and does not need tfds. A dataset not yet prepared is downloaded
  through `tfds_fetch` (a fast offline check, no partial files left).
* "digits": scikit-learn's 1,797 8x8 grayscale digits; ships with scikit-learn, so it
  needs no download. A tiny dataset for smoke runs and tests. Its train/test split is
  fixed (independent of `--seed`) so every run is judged on the same test images.
* "npz:PATH": the user's own arrays in an .npz file (`npz`).

Memory layout: `Splits` keeps images as stored, **uint8 in [0, 255]** (tfds and uint8
npz files; value v means v / 255) or **float32 in [0, 1]** (digits and float npz
files); the pipelines cast per batch.
"""

import os

import numpy as np

from dac_tf.data import npz
from dac_tf.data import tfds_fetch
from dac_tf.data.splits import DatasetError
from dac_tf.data.splits import Splits
from dac_tf.data.splits import short_error

DATASETS = ("cifar10", "cifar100", "svhn", "digits")  # plus "npz:PATH"

_TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
_TFDS_CHUNK = 10_000  # examples per read from tfds

# Used when the tfds metadata carries no label names (e.g. under tfds mock data, which
# reads the feature spec from code where CIFAR-10's names are only num_classes=10).
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                  "horse", "ship", "truck")

# A fixed RNG, deliberately not --seed: the digits test set must be the same in every
# run, or numbers from runs with different seeds would not be comparable.
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TEST_FRACTION = 0.2


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
        touching the network. With True and no network it fails within seconds (a
        short connection check to the download host comes first), and a download
        that fails later leaves no partial files behind.

    Returns:
      A `Splits`.

    Raises:
      DatasetError: unknown dataset, tfds dataset not available, invalid npz file,
        or `val_size` out of range.
    """
    if not isinstance(dataset, str):
        raise DatasetError(f"--dataset must be a string, got {dataset!r}")
    if dataset.startswith(npz.PREFIX):
        parts = npz.load_npz(dataset[len(npz.PREFIX):])
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


def _load_tfds(dataset, *, data_dir, download):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    tfds_name = _TFDS_NAMES[dataset]
    if data_dir:
        # tfds does not expand "~" (it would write to a folder named "~" in the
        # working directory), and a shell leaves --data_dir=~/x unexpanded.
        data_dir = os.path.expanduser(os.fspath(data_dir))
    location = f"data_dir={data_dir!r}" if data_dir else "the default tfds data_dir"
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        location = str(builder.data_dir)  # the versioned folder tfds looks in
        # Checked first so that download=False never touches the network: offline,
        # tfds' HTTP retries can stall for a long time on a firewalled cluster.
        if not builder.is_prepared():
            if not download:
                raise tfds_fetch.tfds_error(
                    dataset, tfds_name, f"is not prepared under {location} and "
                    "download=False")
            tfds_fetch.download_and_prepare(builder, dataset, tfds_name, location)
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
        # NonMatchingChecksumError, ...): all mean "not available".
        raise tfds_fetch.tfds_error(dataset, tfds_name, "could not be downloaded or "
                                    f"loaded under {location} ({short_error(e)})") from e

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
