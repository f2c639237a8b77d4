"""Learning-rate schedules keyed on the batch index, as the reference code sets them.

A DAC batch makes two optimizer updates (the AC step and the robust step), so
`optimizer.iterations` runs at twice the batch rate. `BatchSchedule` turns any Keras
schedule of the batch index into one of the update count; `DACModel.compile` applies it
automatically, so a schedule written for plain training keeps its meaning.
"""

import math

import keras
import tensorflow as tf

SCHEDULES = ("piecewise_at", "piecewise_trades", "cosine", "constant")


@keras.saving.register_keras_serializable(package="dac_tf")
class BatchSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates `schedule` at the batch index `iterations // updates_per_batch`.

    Args:
      schedule: a `LearningRateSchedule` (or callable) of the 0-based batch index.
      updates_per_batch: optimizer updates per batch (2 with DAC, 1 without).
    """

    def __init__(self, schedule, updates_per_batch):
        self.schedule = schedule
        self.updates_per_batch = int(updates_per_batch)

    def __call__(self, step):
        return self.schedule(step // self.updates_per_batch)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "updates_per_batch": self.updates_per_batch,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="dac_tf")
class PiecewiseAT(keras.optimizers.schedules.LearningRateSchedule):
    """The robust-overfitting code base's AT schedule, updated every batch.

    With t = (batch + 1) / steps_per_epoch the fractional epoch reached after the batch
    (the reference's `epoch + (i + 1) / len(train_batches)`): lr while t / epochs < 0.5,
    lr / 10 while < 0.75, then lr / 100.
    """

    def __init__(self, learning_rate, epochs, steps_per_epoch):
        self.learning_rate = float(learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        t = (tf.cast(step, tf.float32) + 1.0) / float(self.steps_per_epoch)
        fraction = t / float(self.epochs)
        lr = self.learning_rate
        return tf.where(fraction < 0.5, lr, tf.where(fraction < 0.75, lr / 10, lr / 100))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable(package="dac_tf")
class PiecewiseTRADES(keras.optimizers.schedules.LearningRateSchedule):
    """TRADES/MART schedule: x0.1 from epoch 75, x0.01 from 90, x0.001 from 100.

    Epochs are counted from 1 as in the reference (`for epoch in range(1, epochs + 1)`);
    the rate changes at epoch boundaries.
    """

    def __init__(self, learning_rate, steps_per_epoch, milestones=(75, 90, 100)):
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestones = tuple(int(m) for m in milestones)

    def __call__(self, step):
        epoch = tf.cast(step, tf.int64) // self.steps_per_epoch + 1
        lr = tf.constant(self.learning_rate, tf.float32)
        for milestone in self.milestones:
            lr = tf.where(epoch >= milestone, lr * 0.1, lr)
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "milestones": list(self.milestones)}


@keras.saving.register_keras_serializable(package="dac_tf")
class Cosine(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from `learning_rate` to 0 over `total_steps` batches."""

    def __init__(self, learning_rate, total_steps):
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        progress = tf.minimum(tf.cast(step, tf.float32) / float(self.total_steps), 1.0)
        return self.learning_rate * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps}


def build(name, learning_rate, epochs, steps_per_epoch):
    """A schedule of the batch index by name.

    Args:
      name: "piecewise_at", "piecewise_trades", "cosine" or "constant".
      learning_rate: the initial (maximum) learning rate.
      epochs: the run's number of epochs.
      steps_per_epoch: batches per epoch.

    Returns:
      A `LearningRateSchedule` of the 0-based batch index.
    """
    if name == "piecewise_at":
        return PiecewiseAT(learning_rate, epochs, steps_per_epoch)
    if name == "piecewise_trades":
        return PiecewiseTRADES(learning_rate, steps_per_epoch)
    if name == "cosine":
        return Cosine(learning_rate, epochs * steps_per_epoch)
    if name == "constant":
        return keras.optimizers.schedules.PiecewiseConstantDecay([0], [learning_rate] * 2)
    raise ValueError(f"lr_schedule={name!r} is not valid; use one of {', '.join(SCHEDULES)}.")
