"""Learning-rate schedules of the batch index, as the reference code sets them.

`build(name, ...)` makes the CLI's `--lr_schedule` choices (also the names the
config.json of earlier runs records), each one a Keras schedule:

- "piecewise_at": the AT reference's per-batch piecewise rule, a `PiecewiseConstantDecay`
  (`piecewise_at`);
- "piecewise_trades": TRADES' and MART's per-epoch drops, a `PiecewiseConstantDecay`
  (`piecewise_trades`);
- "cosine": `CosineDecay` from the rate to 0 over the run;
- "constant".

A DAC batch makes two optimizer updates (the AC step and the robust step), so
`optimizer.iterations` runs at twice the batch rate. `BatchSchedule` turns any Keras
schedule of the batch index into one of the update count; `DACModel.compile` applies it
automatically, so a schedule written for plain training keeps its meaning.
"""

import keras

SCHEDULES = ("piecewise_at", "piecewise_trades", "cosine", "constant")
# Schedules whose rate at a batch depends on the run's number of epochs: `piecewise_at`
# drops at 50% / 75% of the run and `cosine` decays to 0 at its end, so changing
# --epochs stretches or squeezes them (every planned epoch would get another rate).
# `piecewise_trades` (drops at fixed epochs) and `constant` give every batch the same
# rate whatever --epochs is: a longer run continues the same formula.
EPOCH_DEPENDENT = ("piecewise_at", "cosine")


def depends_on_epochs(name):
    """Whether schedule `name`'s rate at a batch depends on the run's epochs."""
    return name in EPOCH_DEPENDENT


_PiecewiseConstantDecay = keras.optimizers.schedules.PiecewiseConstantDecay


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


def piecewise_at(learning_rate, epochs, steps_per_epoch):
    """The AT reference's schedule (robust-overfitting code base), set before every batch.

    dac_at_cifar10.py (TrustMLRG/AdvCertainty) sets `lr_schedule(epoch + (i + 1) /
    len(train_batches))` before batch i: with t that fractional epoch, `lr_max` while
    t / epochs < 0.5, `lr_max / 10.` while < 0.75, then `lr_max / 100.`. For the 0-based
    batch index s and T = epochs * steps_per_epoch batches, t / epochs = (s + 1) / T, so
    the rate is lr exactly while s + 1 < T / 2, i.e. s <= ceil(T / 2) - 2 (and the same
    at 3T / 4): integer boundaries, exact for any T. The reference's float t decides the
    same way: it hits a threshold exactly (a quarter epoch, exact in binary) or misses it
    by at least 1 / (4 T) of the run.

    Args:
      learning_rate: the initial rate (`--lr-max`).
      epochs: the run's number of epochs.
      steps_per_epoch: batches per epoch.

    Returns:
      A `PiecewiseConstantDecay` of the batch index.
    """
    total = int(epochs) * int(steps_per_epoch)
    # PiecewiseConstantDecay keeps values[k] while step <= boundaries[k].
    boundaries = [-(-total // 2) - 2, -(-3 * total // 4) - 2]
    lr = float(learning_rate)
    return _PiecewiseConstantDecay(boundaries, [lr, lr / 10.0, lr / 100.0])


def piecewise_trades(learning_rate, steps_per_epoch, milestones=(75, 90, 100)):
    """TRADES/MART's schedule: x0.1 from epoch 75, x0.01 from 90, x0.001 from 100.

    The reference (dac_trades_cifar10.py, dac_mart_cifar10.py, `adjust_learning_rate`)
    sets the rate before each epoch, epochs counted from 1 (`for epoch in range(1,
    args.epochs + 1)`), to `args.lr * 0.1`, `* 0.01`, `* 0.001` once epoch >= 75, 90,
    100. Batch s lies in epoch s // steps_per_epoch + 1, so the drop at epoch m starts at
    batch (m - 1) * steps_per_epoch: the boundary (the last batch at the old rate) is one
    before. The rates are the reference's products of `lr` and 1e-k, not repeated
    multiplications by 0.1 (which round to other float32 values, e.g. 0.010000001).

    Args:
      learning_rate: the initial rate (`--lr`).
      steps_per_epoch: batches per epoch.
      milestones: epochs (counted from 1) at which the rate drops tenfold.

    Returns:
      A `PiecewiseConstantDecay` of the batch index.
    """
    lr = float(learning_rate)
    milestones = sorted(int(m) for m in milestones)
    if not milestones:
        return constant(lr)
    boundaries = [(m - 1) * int(steps_per_epoch) - 1 for m in milestones]
    values = [lr] + [lr * float(f"1e-{k}") for k in range(1, len(milestones) + 1)]
    return _PiecewiseConstantDecay(boundaries, values)


def constant(learning_rate):
    """A fixed rate as a schedule, so every CLI run's optimizer has the same structure."""
    return _PiecewiseConstantDecay([0], [float(learning_rate)] * 2)


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
        return piecewise_at(learning_rate, epochs, steps_per_epoch)
    if name == "piecewise_trades":
        return piecewise_trades(learning_rate, steps_per_epoch)
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                      int(epochs) * int(steps_per_epoch))
    if name == "constant":
        return constant(learning_rate)
    raise ValueError(f"lr_schedule={name!r} is not valid; use one of {', '.join(SCHEDULES)}.")


def from_optimizer(optimizer):
    """The `LearningRateSchedule` an optimizer was given, or None for a fixed rate.

    Keras has no public getter for it (`optimizer.learning_rate` evaluates it at the
    current step), so it is rebuilt from the optimizer's config, the form `model.save`
    writes: a copy of the schedule that gives the same rate at every step.

    Args:
      optimizer: a Keras optimizer.

    Returns:
      A `LearningRateSchedule`, or None (a float rate, or a callable without arguments,
      which Keras calls without the step).

    Raises:
      ValueError: the schedule cannot be saved (no `get_config`) or found again from its
        config (a class not registered with `keras.saving.register_keras_serializable`);
        `model.save` would fail on it as well.
    """
    hint = ("DACModel needs to read the learning-rate schedule from the optimizer's "
            "config (to evaluate it per batch): give the schedule a get_config() and "
            "register its class with @keras.saving.register_keras_serializable(), as "
            "saving the model requires too")
    try:
        config = optimizer.get_config()["learning_rate"]
    # OSError: Keras reads a lambda's source, absent for one typed at a prompt.
    except (NotImplementedError, TypeError, OSError) as e:
        raise ValueError(f"{hint} ({e}).") from None
    if not isinstance(config, dict) or config.get("class_name") in ("function", "__lambda__"):
        return None
    try:
        schedule = keras.optimizers.schedules.deserialize(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{hint} ({e}).") from None
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return schedule
    return None
