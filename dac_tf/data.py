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
import io
import os
import shutil
import socket
import threading
import urllib.parse

import numpy as np
import tensorflow as tf

from dac_tf import errors
from dac_tf import seeds

DATASETS = ("cifar10", "cifar100", "svhn", "digits")  # plus "npz:PATH"
AUGMENTATIONS = ("none", "reflect", "zero")

_TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
_NPZ_PREFIX = "npz:"
_TFDS_CHUNK = 10_000  # examples per read from tfds

# Where each tfds builder downloads from, as in the checksums files of tfds 4.9.10
# (image_classification/cifar.py, datasets/svhn_cropped/checksums.tsv). Used only when
# the builder cannot list its URLs itself (`url_infos`), so the offline check still
# knows which host to try. tfds 4.9.10 has its GCS mirror of prepared datasets
# switched off (gcs_utils._is_gcs_disabled), so these hosts are the only source.
_TFDS_FALLBACK_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
    "svhn_cropped": tuple(f"http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
                          for split in ("train", "test", "extra")),
}
# Offline, tfds' own HTTP client retries 10 times with exponential backoff (about
# 3.5 minutes) before it gives up; one TCP connect per download host, bounded by this
# many seconds (DNS lookup included), answers "is there a network?" before that.
_PREFLIGHT_TIMEOUT_S = 5.0
# How deep below a tfds-owned folder the pre-download listing goes. tfds creates its
# partial files at most two levels down (<name>/<config>/<version>,
# downloads/<name>/<file>.tmp.<uuid>/, downloads/extracted/<archive>/); whatever it
# writes further down sits inside a folder that is new and so removed as a whole.
_SNAPSHOT_DEPTH = 2

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


class DatasetError(errors.UserError):
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


def _tfds_error(dataset, tfds_name, what):
    """Builds the one-line error for a tfds dataset that cannot be made available.

    Args:
      dataset: the --dataset string ("svhn").
      tfds_name: the tfds builder name ("svhn_cropped").
      what: what went wrong, one sentence without the trailing period; it should name
        the folder tfds looked in.

    Returns:
      A `DatasetError` whose message is one line: the CLI prints it as is, and a
      multi-line tfds traceback would bury the fix.
    """
    message = (
        f"Dataset {dataset!r} (tfds {tfds_name!r}) {what}. Fix: on a machine with "
        f"internet run `python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{tfds_name}', data_dir='DIR').download_and_prepare()\"`, copy "
        "DIR to this machine and pass --data_dir=DIR, or use --dataset=npz:PATH.")
    return DatasetError(" ".join(message.splitlines()))


def _short(exc):
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
                raise _tfds_error(dataset, tfds_name, f"is not prepared under {location} "
                                  "and download=False")
            _download_and_prepare(builder, dataset, tfds_name, location)
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
        raise _tfds_error(dataset, tfds_name, f"could not be downloaded or loaded "
                          f"under {location} ({_short(e)})") from e

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


def _download_and_prepare(builder, dataset, tfds_name, location):
    """Runs `builder.download_and_prepare()` after checking the network, atomically.

    Offline it fails within `_PREFLIGHT_TIMEOUT_S` seconds, before tfds writes
    anything. If the download or the preparation fails later (connection lost,
    checksum mismatch, Ctrl-C, ...), whatever this attempt created under the tfds
    data_dir is removed, so neither a partial download nor a half-written dataset
    folder is left for the next run to trip over.

    Args:
      builder: the tfds `DatasetBuilder`, not prepared yet.
      dataset: the --dataset string, for the error message.
      tfds_name: the tfds builder name, for the error message.
      location: the folder tfds looks in, for the error message.

    Raises:
      DatasetError: a download host cannot be reached, or the download or the
        preparation failed.
    """
    if getattr(type(builder).download_and_prepare, "__module__", "").startswith(
            "tensorflow_datasets.testing"):
        # tfds.testing.mock_data's no-op stand-in: nothing is downloaded or written,
        # so there is no network to check and nothing to clean up.
        builder.download_and_prepare()
        return
    root = _data_dir_root(builder)
    urls = _urls_to_fetch(builder, tfds_name, os.path.join(root, "downloads"))
    for url, host, port, via_proxy in _connection_targets(urls):
        error = _connect_error(host, port, _PREFLIGHT_TIMEOUT_S)
        if error is not None:
            target = (f"the proxy {host}:{port} that {url} goes through" if via_proxy
                      else f"{host}:{port} (to fetch {url})")
            raise _tfds_error(dataset, tfds_name, f"is not prepared under {location} "
                              f"and cannot be downloaded: no network connection to "
                              f"{target}: {_short(error)}")
    footprint = _TfdsFootprint(root, builder.name)
    try:
        builder.download_and_prepare()
    except BaseException as e:  # pylint: disable=broad-except
        # BaseException: a Ctrl-C in the middle of a download leaves the same
        # partial files as a dropped connection.
        footprint.remove_new()
        if not isinstance(e, Exception):
            raise
        raise _tfds_error(dataset, tfds_name, f"is not prepared under {location} and "
                          f"its download or preparation failed ({_short(e)}); the "
                          "partial files were removed") from e


def _urls_to_fetch(builder, tfds_name, downloads):
    """The URLs `download_and_prepare` will fetch over the network.

    Those whose file tfds finds locally are left out: put in the manual folder
    (<downloads>/manual/<file name>) or still in tfds' download cache from an earlier
    attempt, they are used without a connection, and an offline machine set up that
    way must not be refused.

    Args:
      builder: the tfds `DatasetBuilder`.
      tfds_name: its name, to look up `_TFDS_FALLBACK_URLS`.
      downloads: the download folder tfds uses (<data_dir>/downloads).

    Returns:
      A sorted list of URLs.
    """
    try:
        url_infos = dict(builder.url_infos or {})
    except Exception:  # pylint: disable=broad-except
        # Reading the checksums file goes through importlib resources; if that breaks,
        # the fixed table still lets the check name the right host.
        url_infos = {}
    if not url_infos:
        return sorted(_TFDS_FALLBACK_URLS.get(tfds_name, ()))
    return sorted(url for url, info in url_infos.items()
                  if not _locally_available(url, info, downloads, builder.name))


def _locally_available(url, info, downloads, name):
    """Whether tfds would take `url`'s file from disk instead of downloading it.

    Mirrors the look-ups of tfds' DownloadManager._download_or_get_cache (tfds
    4.9.10): the manual folder by file name, then the cache by the names
    `resource.get_dl_fname` gives, with and without the dataset sub-folder. Any
    doubt counts as "not available", which only means the network is checked.
    """
    try:
        from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top

        if info.filename and os.path.exists(os.path.join(downloads, "manual",
                                                         info.filename)):
            return True
        for fname in {resource.get_dl_fname(url, info.checksum),
                      resource.get_dl_fname(url)}:
            for folder in (os.path.join(downloads, name), downloads):
                path = os.path.join(folder, fname)
                if os.path.exists(path) and os.path.exists(path + ".INFO"):
                    return True
    except Exception:  # pylint: disable=broad-except
        pass
    return False


def _connection_targets(urls):
    """One (url, host, port, via_proxy) per distinct endpoint a download connects to.

    tfds downloads with `requests`, which honours HTTP(S)_PROXY / NO_PROXY; behind
    a proxy the only connection made from this machine is to the proxy, so that is
    the one to check.
    """
    import requests  # pylint: disable=g-import-not-at-top  (a tfds dependency)

    targets = {}
    for url in urls:
        proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
        if proxy and "://" not in proxy:
            proxy = f"http://{proxy}"  # as requests reads a scheme-less proxy
        parts = urllib.parse.urlsplit(proxy or url)
        default_port = {"https": 443, "http": 80}.get(parts.scheme, 1080)
        try:
            port = parts.port or default_port
        except ValueError:  # a malformed port: let tfds report it
            continue
        if parts.hostname:
            targets.setdefault((parts.hostname, port), (url, bool(proxy)))
    return [(url, host, port, via_proxy)
            for (host, port), (url, via_proxy) in targets.items()]


def _connect_error(host, port, timeout):
    """Tries one TCP connection; returns None if it opened, else the error.

    The connection runs in a daemon thread joined with `timeout`, because
    `create_connection`'s own timeout does not cover the DNS lookup, which can hang
    much longer on a machine without network.
    """
    outcome = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as e:  # gaierror, ConnectionRefusedError, timeout, ...
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="dac_tf-preflight", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    return outcome.get("error") or TimeoutError(f"no answer within {timeout:g} s")


def _data_dir_root(builder):
    root = getattr(builder, "data_dir_root", None)
    if root is None:  # tfds before data_dir_root: data_dir is <root>/<name>/<version>
        root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
    return os.fspath(root)


class _TfdsFootprint:
    """What exists, before a download, where tfds writes for one builder.

    `remove_new` later deletes what appeared there since, and nothing that existed
    before. Only the folders tfds uses for this builder are looked at
    (<root>/<name>, <root>/downloads/<name>, <root>/downloads/extracted, plus the
    <root> and <root>/downloads folders themselves), so files that another process
    writes meanwhile for another dataset in the same data_dir are left alone. A root
    that did not exist before is removed whole, with any parent folders tfds had to
    create for it.

    Remote data_dirs (gs://...) are not tracked: nothing is removed there.
    """

    def __init__(self, root, name):
        self._local = "://" not in root
        root = os.path.abspath(root) if self._local else root
        self._downloads = os.path.join(root, "downloads")
        self._owned = (os.path.join(root, name), os.path.join(self._downloads, name),
                       os.path.join(self._downloads, "extracted"))
        # The top-most folder the attempt would create to make `root` exist.
        self._created_top = None
        path = root
        while self._local and not os.path.lexists(path):
            self._created_top = path
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        self._before = set()
        if self._local and self._created_top is None:
            if os.path.lexists(self._downloads):
                self._before.add(self._downloads)
            for owned in self._owned:
                if os.path.lexists(owned):
                    self._before.add(owned)
                    self._before.update(_listing(owned, depth=_SNAPSHOT_DEPTH - 1))

    def remove_new(self):
        """Deletes what the attempt created; best effort, never raises."""
        if not self._local:
            return
        if self._created_top is not None:
            _remove(self._created_top)
            return
        for owned in self._owned:
            self._remove_new_under(owned, _SNAPSHOT_DEPTH)
        if self._downloads not in self._before:
            try:
                os.rmdir(self._downloads)  # only if empty: it may be shared by now
            except OSError:
                pass

    def _remove_new_under(self, path, depth):
        if not os.path.lexists(path):
            return
        if path not in self._before:
            _remove(path)
            return
        if depth == 0 or os.path.islink(path) or not os.path.isdir(path):
            return
        for child in _listing(path, depth=0):
            self._remove_new_under(child, depth - 1)


def _listing(path, *, depth):
    """Paths below `path`, down to `depth` further levels; empty if unreadable."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    out = []
    for entry in entries:
        out.append(entry.path)
        if depth > 0 and entry.is_dir(follow_symlinks=False):
            out += _listing(entry.path, depth=depth - 1)
    return out


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass  # best effort: the original error is the one worth reporting


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
                  num_epochs=1, max_steps_per_epoch=0):
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
      max_steps_per_epoch: if > 0, each epoch is cut to its first batches (smoke runs
        of a paper config on little data); the next epoch still starts with its own
        first batch.

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
    steps = steps_per_epoch(num, batch_size)
    if max_steps_per_epoch:
        steps = min(steps, int(max_steps_per_epoch))
    images, labels = tf.constant(x), tf.constant(y)
    key = tf.constant([int(seed), _PIPELINE_SALT], tf.int64)

    def fold(k, data):
        return seeds.fold(k, data)

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
        plan = tf.data.Dataset.from_tensor_slices((order, offsets, flips)).batch(batch_size)
        return plan.take(steps) if max_steps_per_epoch else plan

    def make_batch(order, offsets, flips):
        batch_x = _to_float_tf(tf.gather(images, order))
        if augment != "none":
            batch_x = _augment_batch(batch_x, offsets, flips, augment, pad)
        return batch_x, tf.gather(labels, order)

    ds = tf.data.Dataset.range(start_epoch, start_epoch + num_epochs).flat_map(epoch_plan)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # flat_map hides the length; Keras and progress bars want it.
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_epochs * steps))
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
