"""What every loader returns (`Splits`) and the error it raises (`DatasetError`)."""

import dataclasses

import numpy as np

from dac_tf import errors


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


def short_error(exc):
    """An exception as one short line ("TypeName: message"), for a `DatasetError`."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
