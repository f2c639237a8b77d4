"""Datasets and deterministic, resumable input pipelines.

`load` reads a dataset into memory as a `Splits` ("cifar10", "cifar100", "svhn" via
tfds; "digits" from scikit-learn; "npz:PATH"); `train_dataset` and `eval_dataset`
turn its arrays into `tf.data` batches, epoch e of training a pure function of
(seed, e). The modules, one concern each:

* `loaders`: `load`, the validation split, digits and tfds splits.
* `npz`: the user's .npz file and its checks.
* `tfds_fetch`: downloading a tfds dataset (fast offline check, cleanup on failure).
* `pipelines`: `train_dataset`, `eval_dataset`, augmentation, `to_float32`.
* `splits`: `Splits` and `DatasetError`.

Importing this package does not import `tensorflow_datasets`.
"""

from dac_tf.data.loaders import DATASETS
from dac_tf.data.loaders import load
from dac_tf.data.pipelines import AUGMENTATIONS
from dac_tf.data.pipelines import eval_dataset
from dac_tf.data.pipelines import steps_per_epoch
from dac_tf.data.pipelines import to_float32
from dac_tf.data.pipelines import train_dataset
from dac_tf.data.splits import DatasetError
from dac_tf.data.splits import Splits

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DatasetError",
    "Splits",
    "eval_dataset",
    "load",
    "steps_per_epoch",
    "to_float32",
    "train_dataset",
]
