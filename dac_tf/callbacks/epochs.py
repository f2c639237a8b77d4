"""The epoch-level pieces of a training run, as Keras callbacks.

Stops at a non-finite loss or a non-finite epoch (before anything saves it), the
epoch's learning rate and time in the logs, `last` and `best` checkpoints, TensorBoard
with one run per split, and a progress bar. `python -m dac_tf.train` runs them
(`dac_tf.training.callback_chain`); they are public so that a user's `fit` or a custom
loop can drive the same list (the multi-worker path does: Keras' `fit` does not run
under `MultiWorkerMirroredStrategy`).
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from dac_tf import data
from dac_tf import errors


class NonFiniteLossError(errors.UserError):
    """The training loss became NaN or infinite (the message says where)."""


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
