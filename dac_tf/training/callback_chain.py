"""The callbacks of a training run, in the order they run at each epoch's end.

Validation (selection split, then test) adds its values to the logs; then the epoch's
lr and time; then the check that everything is finite (a failed epoch stops there,
unsaved); then the metrics row, `last` and `best` are written in that order (what
`rundir.resume_problems` relies on after a kill); then TensorBoard and the one summary
line per epoch.
"""

import os

import keras

from dac_tf import callbacks
from dac_tf import rundir

NON_FINITE_HINT = "lower --lr, check the data, or use --mixed_precision=float32"
TENSORBOARD_DIR = "tensorboard"


def summary_line(epoch, logs, select_key, best_epoch):
    """One line per epoch: the training values, the selection split, the best epoch."""
    split = select_key.split("_")[0]
    ac_loss = f" ac_loss {logs['ac_loss']:.4f}" if "ac_loss" in logs else ""
    return (f"epoch {epoch:>3d}  lr {logs['lr']:.4g}  loss {logs['loss']:.4f}  "
            f"train adv {logs['adv_accuracy']:.4f}  AC {logs['adv_certainty']:.4f}{ac_loss}  "
            f"{split} clean {logs[split + '_clean_accuracy']:.4f} robust "
            f"{logs[split + '_robust_accuracy']:.4f}  best epoch {best_epoch}  "
            f"{logs['epoch_seconds']:.1f}s")


def training_callbacks(config, splits, *, chief, save_manager, best_manager, epoch_var,
                       rows, select_key, steps, log_names):
    """The callback list of a run (see the module docstring for the order).

    Args:
      config: the run's `TrainConfig`.
      splits: the loaded data (`data.load`): validation and test examples.
      chief: whether this task writes the run's files (metrics, TensorBoard).
      save_manager: the `last` checkpoint manager this task saves with.
      best_manager: the `best` checkpoint manager.
      epoch_var: the checkpointed epoch counter.
      rows: the metrics rows so far (a resumed run's); appended to as epochs end.
      select_key: the log key `best` maximises (`rundir.selection_key`).
      steps: batches per epoch.
      log_names: the training step's log keys shown in the progress bar.

    Returns:
      A list of Keras callbacks.
    """
    best_epoch, best_value = rundir.best_epoch(rows, select_key)
    validation = dict(
        epsilon=config.select_epsilon, step_size=config.select_step_size,
        num_steps=config.select_steps, norm=config.norm, start=config.select_start,
        batch_size=config.eval_batch_size, num_examples=config.eval_examples or None,
        seed=config.seed, ac_measure=config.ac_measure, verbose=bool(config.verbose))
    best = callbacks.BestCheckpoint(best_manager, select_key, best_epoch, best_value)
    chain = [callbacks.StopOnNonFiniteLoss(NON_FINITE_HINT)]
    if config.verbose:
        chain.append(callbacks.TrainingProgress(config.epochs, steps, log_names))
    if len(splits.y_val):
        chain.append(callbacks.RobustValidation(splits.x_val, splits.y_val, prefix="val",
                                                **validation))
    chain += [callbacks.RobustValidation(splits.x_test, splits.y_test, prefix="test",
                                         **validation),
              callbacks.EpochInfo()]
    # An epoch that ends with a non-finite value (a validation metric, a weight, a logit
    # of the selection examples) is a failed epoch: it stops here, before it is saved.
    selection_x = splits.x_val if len(splits.y_val) else splits.x_test
    chain.append(callbacks.StopOnNonFiniteEpoch(
        selection_x[:config.eval_examples or None], batch_size=config.eval_batch_size,
        hint=NON_FINITE_HINT))

    def write_row(epoch, logs):
        rows.append(rundir.row_from_logs(epoch + 1, logs))
        rundir.write_metrics(config.model_dir, rows)

    if chief:
        chain.append(keras.callbacks.LambdaCallback(on_epoch_end=write_row))
    chain += [callbacks.EpochCheckpoint(save_manager, epoch_var), best]
    if chief:
        chain.append(callbacks.SplitTensorBoard(os.path.join(config.model_dir,
                                                             TENSORBOARD_DIR)))
    chain.append(keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(
            summary_line(epoch + 1, logs, select_key, best.best_epoch), flush=True)))
    return chain
