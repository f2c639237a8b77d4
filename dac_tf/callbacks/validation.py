"""`RobustValidation`: clean and PGD accuracy and adversarial certainty every epoch.

After every epoch it attacks the model with PGD (cross-entropy, BatchNorm in inference
mode: the reference's per-epoch evaluation) and adds `{prefix}_clean_accuracy`,
`{prefix}_robust_accuracy` and `{prefix}_adv_certainty` to the logs, so every callback
that runs after it (checkpointing, early stopping, CSV, TensorBoard) sees them.
`DACModel.fit` runs every `RobustValidation` first whatever its place in the list
(`ordered`); a plain `keras.Model` takes `callbacks=ordered([...])`.
Keras' monitor callbacks cannot infer the direction of these keys: pass `mode="max"`
for `robust_accuracy`/`clean_accuracy` and `mode="min"` for `adv_certainty`.
"""

import math
import zlib

import keras
import numpy as np
import tensorflow as tf

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import errors
from dac_tf import model as model_lib
from dac_tf import protocol
from dac_tf import seeds


# The second word of the validation attacks' stream key `[seed, _SEED_STREAM]`, apart
# from the training streams of the same seed (data pipeline, DACModel's attacks).
_SEED_STREAM = zlib.crc32(b"dac_tf.callbacks.RobustValidation") & 0x7FFFFFFF
# The default step as a fraction of the radius: the AT reference's selection attack.
_REFERENCE_STEP_FRACTION = protocol.SELECTION_PROTOCOLS["at"].step_fraction
# The direction of each key `RobustValidation` logs (after its prefix), for Keras'
# monitor callbacks: Keras 3 infers `mode="auto"` only for "loss" and compiled metrics.
MONITOR_MODES = {"clean_accuracy": "max", "robust_accuracy": "max", "adv_certainty": "min"}


def _to_unit_floats(images, labels, weights):
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    return images, labels, weights


def _global_sums(strategy, step, *args):
    per_replica = strategy.run(step, args=args)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


class RobustValidationError(errors.UserError):
    """Data or settings `RobustValidation` cannot use, or a callback list it cannot
    serve (the message says what to change)."""


def _check_images(x):
    """Validation images as given: uint8 0..255, or float in [0, 1] (nothing else)."""
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise RobustValidationError(
            f"RobustValidation: x must be a non-empty batch of images [N, H, W, C]; got "
            f"shape {x.shape}.")
    if x.dtype == np.uint8:
        return x   # 0..255 by its type: divided by 255 as it is batched
    if not np.issubdtype(x.dtype, np.floating):
        raise RobustValidationError(
            f"RobustValidation: x has dtype {x.dtype}; pass float images in [0, 1] (or "
            "uint8 0..255, which is divided by 255), e.g. x.astype('float32') / 255.")
    x = x.astype(np.float32, copy=False)
    low, high = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RobustValidationError("RobustValidation: x contains NaN or infinite values.")
    if high > 1 and low >= 0 and high <= 255:
        raise RobustValidationError(
            f"RobustValidation: x holds values up to {high:g}, which looks like 0..255 "
            "pixels; pass x / 255 (the models and the attack radius work on [0, 1]).")
    if low < 0 or high > 1:
        raise RobustValidationError(
            f"RobustValidation: x holds values in [{low:g}, {high:g}]; images must be in "
            "[0, 1] (the attack clips to that box, so other values give wrong numbers).")
    return x


def _check_labels(y, num_images):
    """Integer class labels [N] (or [N, 1], flattened)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = (" (one-hot labels? pass np.argmax(y, axis=1))" if y.ndim == 2 else "")
        raise RobustValidationError(
            f"RobustValidation: y must be integer class labels of shape [N] or [N, 1]; "
            f"got shape {y.shape}{hint}.")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        whole = np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0))
        hint = ("pass y.astype('int64')" if whole else
                "class labels cannot have fractions")
        raise RobustValidationError(
            f"RobustValidation: y has dtype {y.dtype}; it must hold integer class "
            f"labels ({hint}).")
    if len(y) != num_images:
        raise RobustValidationError(
            f"RobustValidation: x has {num_images} images but y has {len(y)} labels; "
            "give one label per image.")
    if len(y) and int(y.min()) < 0:
        raise RobustValidationError(
            f"RobustValidation: y[{int(np.argmin(y))}] = {int(y.min())}; class labels "
            "must be >= 0.")
    return y.astype(np.int32)


def _whole_number(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise RobustValidationError(
            f"RobustValidation: {name}={value!r} must be an integer >= {minimum}.")
    return int(value)


class RobustValidation(keras.callbacks.Callback):
    """Clean and PGD accuracy and adversarial certainty on held-out data, every epoch.

    Everything is checked here, at construction (and the labels against the model's
    classes when training starts), so a mistake never costs an epoch of training.

    Args:
      x: images [N, H, W, C]: float in [0, 1], or uint8 0..255 (divided by 255). Float
        images on the 0..255 scale are refused (pass x / 255).
      y: integer class labels [N] or [N, 1] (flattened); float labels are refused.
      epsilon: attack radius in [0, 1] units (8/255 for the CIFAR protocol); a value
        above 1 is refused as a unit mistake (`dac_tf.protocol.unit_value`).
      step_size: step in [0, 1] units; default the AT reference's fraction of the
        radius, `protocol.SELECTION_PROTOCOLS["at"].step_fraction` (1/4: 2/255 at 8/255).
      num_steps: PGD steps (the AT reference: 10).
      norm: "linf" or "l2".
      start: random start, "uniform" (the reference's), "normal" or "none".
      batch_size: examples per batch (padded and masked, so every example counts once).
      num_examples: attack only the first N examples (None: all); at most len(x).
      seed: seed of the random starts; a batch's start depends on (seed, epoch, batch)
        only (`batch_seed`).
      prefix: log keys are `{prefix}_clean_accuracy`, `{prefix}_robust_accuracy`,
        `{prefix}_adv_certainty` ("val", "test", ...).
      ac_measure: "std" (the reference code's) or "var" (the paper's Definition 1).
      verbose: 1 shows a progress bar over the batches.

    Raises:
      RobustValidationError (a `dac_tf.errors.UserError`, also a ValueError): bad data
        or settings, with what to pass instead.

    Order: Keras calls callbacks in list order, so a callback reading these keys
    (`ModelCheckpoint`, `EarlyStopping`, `ReduceLROnPlateau`, `CSVLogger`, `TensorBoard`)
    must come after this one. `DACModel.fit` moves every `RobustValidation` to the front
    of its list itself; with a plain `keras.Model`, pass
    `callbacks=dac_tf.callbacks.ordered([...])`, else `fit` is refused when it starts
    (an unordered list would only warn and silently turn best-model selection off).
    """

    def __init__(self, x, y, *, epsilon, step_size=None, num_steps=10, norm="linf",
                 start="uniform", batch_size=256, num_examples=None, seed=0, prefix="val",
                 ac_measure="std", verbose=0):
        super().__init__()
        certainty.validate_measure(ac_measure)
        if norm not in attacks.NORMS:
            raise RobustValidationError(f"RobustValidation: norm={norm!r} is not valid; "
                                        f"use one of {', '.join(attacks.NORMS)}.")
        if start not in attacks.STARTS:
            raise RobustValidationError(f"RobustValidation: start={start!r} is not valid; "
                                        f"use one of {', '.join(attacks.STARTS)}.")
        if not isinstance(prefix, str) or not prefix:
            raise RobustValidationError(f"RobustValidation: prefix={prefix!r} must be a "
                                        "non-empty string (\"val\", \"test\").")
        self.epsilon = protocol.unit_value("epsilon", epsilon)
        self.step_size = (self.epsilon * _REFERENCE_STEP_FRACTION if step_size is None
                          else protocol.unit_value("step_size", step_size))
        self.num_steps = _whole_number("num_steps", num_steps, 0)
        self.batch_size = _whole_number("batch_size", batch_size, 1)
        self.seed = _whole_number("seed", seed, 0)
        num_examples = _whole_number("num_examples", num_examples, 1, allow_none=True)
        x = _check_images(x)
        y = _check_labels(y, len(x))
        if num_examples is not None:
            if num_examples > len(x):
                raise RobustValidationError(
                    f"RobustValidation: num_examples={num_examples} but only {len(x)} "
                    "examples were given; pass at most that (or None for all).")
            x, y = x[:num_examples], y[:num_examples]
        self.x, self.y = x, y
        self.norm, self.start = norm, start
        self.prefix, self.ac_measure, self.verbose = prefix, ac_measure, verbose
        self._step = None
        self._strategy = None
        self._in_order = False   # set by `ordered` (DACModel.fit), read at train start

    def on_train_begin(self, logs=None):
        in_order, self._in_order = self._in_order, False
        if not in_order and not isinstance(self.model, model_lib.DACModel):
            raise RobustValidationError(
                f"RobustValidation: Keras runs callbacks in list order, so a "
                f"ModelCheckpoint, EarlyStopping, CSVLogger, ... listed before it would "
                f"not see {self.prefix}_robust_accuracy; with a plain keras.Model pass "
                f"callbacks=dac_tf.callbacks.ordered([...]) (DACModel.fit orders them "
                "itself).")
        num_classes = _num_classes(getattr(self.model, "base_model", self.model))
        if num_classes is not None and int(self.y.max()) >= num_classes:
            index = int(np.argmax(self.y >= num_classes))
            raise RobustValidationError(
                f"RobustValidation: y[{index}] = {int(self.y[index])} but the model has "
                f"{num_classes} classes; labels must be in [0, {num_classes}).")

    def _make_step(self, strategy):
        model = self.model

        def step(images, labels, weights, seed):
            logits_fn = lambda t: tf.cast(model(t, training=False), tf.float32)  # noqa: E731
            clean_logits = logits_fn(images)
            adv = attacks.pgd(logits_fn, images, labels, epsilon=self.epsilon,
                              step_size=self.step_size, num_steps=self.num_steps,
                              norm=self.norm, loss="ce", start=self.start, seed=seed)
            adv_logits = logits_fn(adv)

            def correct(z):
                hits = tf.equal(tf.argmax(z, -1, output_type=tf.int32), labels)
                return tf.reduce_sum(tf.cast(hits, tf.float32) * weights)

            ac = certainty.per_example_certainty(adv_logits, self.ac_measure)
            return tf.stack([correct(clean_logits), correct(adv_logits),
                             tf.reduce_sum(ac * weights), tf.reduce_sum(weights)])

        return tf.function(lambda *args: _global_sums(strategy, step, *args),
                           reduce_retracing=True)

    def batch_seed(self, epoch, batch):
        """The stateless seed of the random starts of one batch of one epoch:
        `seeds.fold` of this callback's stream key with (epoch, batch)."""
        key = tf.constant([self.seed, _SEED_STREAM], tf.int64)
        return seeds.fold(key, epoch, batch)

    def evaluate(self, epoch=0):
        """The three values (a dict without the prefix) for the model as it is now."""
        strategy = getattr(self.model, "distribute_strategy", None) or \
            tf.distribute.get_strategy()
        if self._step is None or self._strategy is not strategy:
            self._step, self._strategy = self._make_step(strategy), strategy
        # Full batches only: the last one is padded with copies of its first example at
        # weight 0, so every replica gets examples and the function is traced once.
        n = len(self.x)
        size = min(self.batch_size, n)
        padded = -(-n // size) * size
        index = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])
        weights = (np.arange(padded) < n).astype(np.float32)
        dataset = tf.data.Dataset.from_tensor_slices(
            (self.x[index], self.y[index], weights)).batch(size).map(_to_unit_floats)
        dataset = strategy.experimental_distribute_dataset(dataset)
        bar = keras.utils.Progbar(padded // size, verbose=1 if self.verbose else 0,
                                  unit_name="batch")
        totals = np.zeros(4)
        for i, (images, labels, batch_weights) in enumerate(dataset):
            totals += self._step(images, labels, batch_weights,
                                 self.batch_seed(epoch, i)).numpy()
            bar.update(i + 1)
        clean, robust, ac_sum, count = totals
        return {"clean_accuracy": clean / count, "robust_accuracy": robust / count,
                "adv_certainty": ac_sum / count}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.verbose:
            print(f"{self.prefix}: PGD-{self.num_steps} on {len(self.x)} examples",
                  flush=True)
        for key, value in self.evaluate(epoch).items():
            logs[f"{self.prefix}_{key}"] = float(value)


def _num_classes(model):
    try:
        return int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None   # a subclassed model without symbolic outputs


def ordered(callbacks):
    """The callbacks with every `RobustValidation` first, the rest in their order.

    Keras calls callbacks in list order at each epoch's end, and `RobustValidation`
    adds its keys to the epoch's logs then, so callbacks that read them
    (`ModelCheckpoint`, `EarlyStopping`, `ReduceLROnPlateau`, `CSVLogger`,
    `TensorBoard`) must run after it. `DACModel.fit` applies this to its `callbacks`
    itself; for a plain `keras.Model` pass `callbacks=dac_tf.callbacks.ordered([...])`.

    Args:
      callbacks: a list of Keras callbacks (or a `keras.callbacks.CallbackList`, whose
        list is reordered in place), or None.

    Returns:
      A new list (the same `CallbackList`; None for None).
    """
    if callbacks is None:
        return None
    holder = callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else None
    items = list(holder.callbacks if holder is not None else callbacks)
    validations = [c for c in items if isinstance(c, RobustValidation)]
    check_monitor_modes(items, {f"{v.prefix}_{key}": mode for v in validations
                                for key, mode in MONITOR_MODES.items()})
    for callback in validations:
        callback._in_order = True   # pylint: disable=protected-access
    result = validations + [c for c in items if not isinstance(c, RobustValidation)]
    if holder is not None:
        holder.callbacks = result
        return holder
    return result


def check_monitor_modes(callbacks, modes):
    """Refuses, before training, a monitor callback whose direction Keras cannot infer.

    `ModelCheckpoint`, `EarlyStopping` and `ReduceLROnPlateau` with `mode="auto"` infer
    the direction only for "loss" and compiled metrics; on any other key Keras raises
    at the first epoch's end, after a whole epoch of training. This raises at once.

    Args:
      callbacks: the callbacks (anything with `monitor` and `mode` attributes is checked).
      modes: {log key: "max" or "min"} for the keys whose direction Keras cannot infer.

    Raises:
      RobustValidationError: naming the callback, the key and the mode to pass.
    """
    for callback in callbacks:
        monitor, mode = getattr(callback, "monitor", None), getattr(callback, "mode", None)
        if mode == "auto" and isinstance(monitor, str) and monitor in modes:
            raise RobustValidationError(
                f"{type(callback).__name__}(monitor={monitor!r}) needs "
                f"mode={modes[monitor]!r}: Keras cannot infer the direction of this key "
                "and would fail after the first epoch.")
