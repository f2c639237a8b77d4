"""Keras callbacks for robust training: what the training CLI's loop is made of.

`RobustValidation` is what a user's own `fit` needs to see robust overfitting and to
keep the best robust model, exactly as `python -m dac_tf.train` does:

    model.fit(train_ds, epochs=200, callbacks=[
        dac_tf.callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255),
        keras.callbacks.ModelCheckpoint("best.weights.h5", monitor="val_robust_accuracy",
                                        mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.CSVLogger("metrics.csv"),
    ])

After every epoch it attacks the model with PGD (cross-entropy, BatchNorm in inference
mode: the reference's per-epoch evaluation) and adds `{prefix}_clean_accuracy`,
`{prefix}_robust_accuracy` and `{prefix}_adv_certainty` to the logs, so every callback
that runs after it (checkpointing, early stopping, CSV, TensorBoard) sees them.
`DACModel.fit` runs every `RobustValidation` first whatever its place in the list
(`ordered`); a plain `keras.Model` takes `callbacks=ordered([...])`.
Keras' monitor callbacks cannot infer the direction of these keys: pass `mode="max"`
for `robust_accuracy`/`clean_accuracy` and `mode="min"` for `adv_certainty`.

The other callbacks are the training CLI's own pieces (the non-finite loss and epoch
stops, checkpoints, progress, TensorBoard with a run per split); they are public so that a custom loop can drive the same list
(the multi-worker path does: Keras' `fit` does not run under
`MultiWorkerMirroredStrategy`).
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import data
from dac_tf import errors
from dac_tf import model as model_lib
from dac_tf import protocol


class NonFiniteLossError(errors.UserError):
    """The training loss became NaN or infinite (the message says where)."""


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
      step_size: step in [0, 1] units; default epsilon / 4 (2/255 at 8/255, the AT
        reference's).
      num_steps: PGD steps (the AT reference: 10).
      norm: "linf" or "l2".
      start: random start, "uniform" (the reference's), "normal" or "none".
      batch_size: examples per batch (padded and masked, so every example counts once).
      num_examples: attack only the first N examples (None: all); at most len(x).
      seed: seed of the random starts; a batch's start depends on (seed, epoch, batch).
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
        self.step_size = (self.epsilon / 4 if step_size is None
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
            seed = tf.constant([self.seed + 1, epoch * 1_000_003 + i], tf.int64)
            totals += self._step(images, labels, batch_weights, seed).numpy()
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
    for callback in validations:
        callback._in_order = True   # pylint: disable=protected-access
    result = validations + [c for c in items if not isinstance(c, RobustValidation)]
    if holder is not None:
        holder.callbacks = result
        return holder
    return result


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first batch whose loss is NaN or infinite.

    Keras' `TerminateOnNaN` stops the epoch, but Keras then still ends it
    (`on_epoch_end`), so checkpoint callbacks would save the non-finite weights as the
    epoch's; raising at the bad batch keeps the last good checkpoint the newest.
    """

    def __init__(self, hint="lower the learning rate, check the data, or use float32"):
        super().__init__()
        self.hint = hint
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"non-finite loss at batch {batch + 1} of epoch {self._epoch + 1}; "
                f"training stopped and the last good checkpoint is kept; {self.hint}.")


class StopOnNonFiniteEpoch(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` when an epoch ends with anything non-finite.

    A batch's loss is computed before its update, so an update that sends the weights
    to overflow (or to values whose logits overflow) passes `StopOnNonFiniteLoss`: the
    epoch ends with a finite training loss and a model that outputs NaN, and its
    validation still yields accuracies (argmax of NaN logits is class 0). This callback
    fails such an epoch when one of these is not finite:

    - a value in the epoch's logs (the validation callbacks' adversarial certainty sums
      the logits of every attacked example, so one non-finite logit makes it non-finite);
    - a variable of the model (weights and BatchNorm statistics);
    - a logit of the model on the clean images `x`, BatchNorm in inference mode.

    Put it after the validation callbacks and before every callback that saves or logs
    the epoch: raising in `on_epoch_end` keeps the previous checkpoints the newest.

    Args:
      x: images (float in [0, 1] or uint8) whose clean logits must be finite, e.g. the
        examples the validation attacks; None skips that check.
      batch_size: examples per forward pass over `x`.
      hint: what the user can change, appended to the message.
    """

    def __init__(self, x=None, *, batch_size=256,
                 hint="lower the learning rate, check the data, or use float32"):
        super().__init__()
        self.x = None if x is None else data.to_float32(np.asarray(x))
        self.batch_size = max(1, int(batch_size))
        self.hint = hint
        self._finite_logits = None

    def _logits_are_finite(self):
        if self._finite_logits is None:
            model = self.model

            @tf.function(reduce_retracing=True)
            def finite(images):
                logits = tf.cast(model(images, training=False), tf.float32)
                return tf.reduce_all(tf.math.is_finite(logits))

            self._finite_logits = finite
        return all(bool(self._finite_logits(tf.constant(self.x[i:i + self.batch_size])))
                   for i in range(0, len(self.x), self.batch_size))

    def problem(self, logs):
        """What is non-finite at the end of an epoch (a short phrase), or None."""
        bad = sorted(k for k, v in (logs or {}).items()
                     if isinstance(v, (int, float, np.number)) and not math.isfinite(v))
        if bad:
            return "non-finite " + ", ".join(f"{k} = {logs[k]}" for k in bad)
        weights = [v for v in self.model.weights
                   if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
        if weights:
            return f"non-finite weights ({', '.join(v.path for v in weights[:3])})"
        if self.x is not None and len(self.x) and not self._logits_are_finite():
            return f"non-finite logits on the {len(self.x)} validation images"
        return None

    def on_epoch_end(self, epoch, logs=None):
        problem = self.problem(logs)
        if problem is None:
            return
        kept = (f"the checkpoints of epoch {epoch} stay the newest" if epoch else
                "no checkpoint was written")
        raise NonFiniteLossError(
            f"epoch {epoch + 1} ended with {problem}; it was not saved, training stopped "
            f"and {kept}; {self.hint}.")


class EpochInfo(keras.callbacks.Callback):
    """Adds `lr` and `epoch_seconds` to the logs.

    `lr` is the learning rate the epoch's first batch trained with (a schedule may lower
    it within the epoch: `piecewise_at` at its boundary batch, `cosine` at every batch):
    the optimizer's rate read before the epoch's first update, not the rate after the
    epoch (which is the next epoch's). Put it after the validation callbacks so the time
    includes the evaluation.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.time()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["lr"] = self._lr
        logs["epoch_seconds"] = time.time() - self._began


class SplitTensorBoard(keras.callbacks.Callback):
    """Writes every epoch's logs to TensorBoard, one run per split.

    A key `val_NAME` goes to the run `validation`, `test_NAME` to the run `test` (as NAME,
    so the splits share one chart), every other key to `train`; each as the scalar
    `epoch_NAME` (Keras' naming) at step = the epoch counted from 1 (metrics.csv's).
    Unlike `keras.callbacks.TensorBoard` it adds nothing of its own: no second
    learning-rate key read after the epoch (log the epoch's own rate, `EpochInfo`'s
    `lr`), and `test_` keys in their own run instead of under `train`.

    Args:
      log_dir: the TensorBoard directory (any `tf.io.gfile` path).
    """

    RUNS = (("val_", "validation"), ("test_", "test"))

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, run):
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(f"{self.log_dir}/{run}")
        return self._writers[run]

    def on_epoch_end(self, epoch, logs=None):
        by_run = {}
        for key, value in (logs or {}).items():
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
                continue
            run, name = "train", key
            for prefix, split_run in self.RUNS:
                if key.startswith(prefix):
                    run, name = split_run, key[len(prefix):]
            by_run.setdefault(run, {})[name] = float(value)
        for run, values in by_run.items():
            writer = self._writer(run)
            with writer.as_default(step=epoch + 1):
                for name, value in values.items():
                    tf.summary.scalar(f"epoch_{name}", value)
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a `tf.train.CheckpointManager` after every epoch (`last`), numbered by the
    epochs finished, with `epoch_var` (restored on resume) set to that number.
    """

    def __init__(self, manager, epoch_var):
        super().__init__()
        self.manager, self.epoch_var = manager, epoch_var

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves a `tf.train.CheckpointManager` when `monitor` improves (strictly, so ties keep
    the earlier epoch: the rule of `dac_tf.rundir.best_epoch`).

    Args:
      manager: the `best` checkpoint manager.
      monitor: the log key to maximise (e.g. "val_robust_accuracy").
      best_epoch, best_value: the best so far (a resumed run's), epochs counted from 1.
    """

    def __init__(self, manager, monitor, best_epoch=0, best_value=-math.inf):
        super().__init__()
        self.manager, self.monitor = manager, monitor
        self.best_epoch, self.best_value = best_epoch, best_value

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and math.isfinite(value) and value > self.best_value:
            self.best_epoch, self.best_value = epoch + 1, float(value)
            self.manager.save(checkpoint_number=epoch + 1)


class TrainingProgress(keras.callbacks.Callback):
    """"Epoch e/E" and a progress bar over the batches with the training values.

    Unlike Keras' own progress bar it does not end with every log value of the epoch:
    the training CLI prints one summary line instead.

    Args:
      epochs: the run's number of epochs.
      steps: batches per epoch.
      keys: the log keys to show (default: every key of the batch logs).
    """

    def __init__(self, epochs, steps, keys=None):
        super().__init__()
        self.epochs, self.steps, self.keys = epochs, steps, keys
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        self._bar = keras.utils.Progbar(self.steps, stateful_metrics=self.keys)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        keys = self.keys if self.keys is not None else sorted(logs)
        self._bar.update(batch + 1, [(k, float(logs[k])) for k in keys if k in logs])
