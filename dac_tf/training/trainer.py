"""`train_and_evaluate(config)`: one training run, end to end.

Reproduces the reference protocol: the method's attack, losses, SGD with PyTorch
momentum and coupled weight decay, the per-batch learning-rate schedule, the
augmentation, an attacked evaluation after every epoch (the selection attack,
`dac_tf.protocol`; BatchNorm in inference mode) and `best` / `last` checkpoints. The
loop is one Keras `fit` over `dac_tf.callbacks` (`loop`, `callback_chain`); the run
directory: `dac_tf.checkpoints`, `dac_tf.rundir` and `run_files`; continuing a run:
`resume`.
"""

import os

from absl import logging
import keras
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import data
from dac_tf import fileio
from dac_tf import models
from dac_tf import rundir
from dac_tf import schedules
from dac_tf.model import DACModel
from dac_tf.optimizers import TorchSGD
from dac_tf.training import callback_chain
from dac_tf.training import loop
from dac_tf.training import resume
from dac_tf.training import run_files
from dac_tf.training import strategies


def build_training(config, splits, strategy, steps_per_epoch):
    """Builds the base model, the `DACModel`, its optimizer and the epoch counter inside
    `strategy`, seeded by `config.seed`.

    Returns:
      (base model, compiled DACModel, optimizer with its slots built, epoch variable).

    Raises:
      ConfigError: the architecture cannot be built for the data's images and classes.
    """
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        try:
            base = models.build(config.arch, num_classes=splits.num_classes,
                                input_shape=splits.image_shape,
                                normalization=config.normalization, **config.arch_kwargs)
        except (ValueError, TypeError) as e:   # the zoo's own checks of its arguments
            raise config_lib.ConfigError(
                f"--arch={config.arch} cannot be built for the {splits.image_shape} images "
                f"and {splits.num_classes} classes of --dataset={config.dataset} "
                f"(--normalization={config.normalization}): {fileio.first_line(e)}"
            ) from None
        model = DACModel(
            base, method=config.method, use_dac=config.use_dac, ac_step=config.ac_step,
            ac_measure=config.ac_measure, epsilon=config.epsilon, step_size=config.step_size,
            num_steps=config.num_steps, norm=config.norm, beta=config.beta,
            random_start=config.random_start, weight_decay=config.weight_decay,
            reference_bn_updates=config.reference_bn_updates, seed=config.seed)
        schedule = schedules.build(config.lr_schedule, config.lr, config.epochs,
                                   steps_per_epoch)
        optimizer = TorchSGD(learning_rate=schedule, momentum=config.momentum)
        model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
        # Build the slots now so a checkpoint restores into existing variables.
        optimizer.build(base.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    return base, model, optimizer, epoch


def _check_against_data(config, splits):
    """Flags that are valid alone but not for this data set's images."""
    if len(splits.y_train) == 0 or len(splits.y_test) == 0:
        raise data.DatasetError(f"--dataset={config.dataset}: the training or test split "
                                "is empty.")
    height, width = splits.image_shape[:2]
    if config.augment == "reflect" and config.pad >= min(height, width):
        raise config_lib.ConfigError(
            f"--pad={config.pad} is too large for the {height}x{width} images of "
            f"--dataset={config.dataset} with --augment=reflect (reflect padding needs pad "
            f"< {min(height, width)}); lower --pad or use --augment=zero or none.")


def train_and_evaluate(config):
    """Trains and evaluates one run described by `config` (a `config.TrainConfig`).

    A run directory with finished epochs is continued (`resume`), a finished one is
    reported and left alone.

    Returns:
      dict: best_epoch, best selection robust accuracy, the last epoch's metrics row,
      model_dir, and the plots written (`plots`); a finished run's has `complete` and
      the `message` saying how to train longer.

    Raises:
      ConfigError, DatasetError, RunDirError, CheckpointError, NonFiniteLossError
        (`dac_tf.errors.UserError`s), ClusterError, PeerLostError: one-line
        errors a user can fix. A start that fails before its first epoch leaves no run
        directory behind (nor a lock); an existing run is never modified by a refusal.
    """
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if (config.strategy == "mirrored" and config.cpu_replicas > 1
            and not tf.config.list_physical_devices("GPU")):
        strategies.split_cpu(config.cpu_replicas)   # before any op initialises the devices
    owner = strategies.task_writes_files(config)
    # Everything that can refuse the start runs before the first write (data included),
    # so a refused start leaves no trace.
    state = rundir.inspect(config.model_dir)
    continuing = resume.check_resumable(config, state)
    if continuing and state.finished_epoch >= config.epochs:
        return resume.complete_summary(config, state)
    splits = data.load(config.dataset, data_dir=config.data_dir, val_size=config.val_size,
                       seed=config.seed)
    _check_against_data(config, splits)
    if continuing:
        resume.check_schedule_kept(config, state, len(splits.y_train))
    strategy = strategies.make_checked_strategy(config)

    created = run_files.create_model_dir(config.model_dir)
    lock = rundir.RunLock(config.model_dir)
    try:
        if owner:
            lock.acquire()
            # Another process may have written the run since the first look.
            state = rundir.inspect(config.model_dir)
            continuing = resume.check_resumable(config, state)
            if continuing:
                resume.check_schedule_kept(config, state, len(splits.y_train))
            run_files.remove_leftovers(config.model_dir)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        try:
            return _run(config, splits, state if continuing else None, owner, strategy)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
    except BaseException:
        # A start that fails before its first epoch is saved leaves nothing behind (and
        # so does not block a corrected command); a run with saved epochs is kept.
        lock.release()
        if created and owner and not rundir.inspect(config.model_dir).has_checkpoints:
            fileio.remove_tree(created)
        raise
    finally:
        lock.release()


def _run(config, splits, resumed_state, chief, strategy):
    """Builds, restores (when `resumed_state` is a run to continue), trains, reports."""
    steps = loop.steps_per_epoch(len(splits.y_train), config.batch_size,
                                 config.max_steps_per_epoch)
    base, model, optimizer, epoch_var = build_training(config, splits, strategy, steps)
    last_ckpt = tf.train.Checkpoint(model=base, optimizer=optimizer, epoch=epoch_var)
    # Every multi-worker task takes part in a save; only the chief's lands in model_dir
    # (the others write to a scratch directory they delete), so files are never written
    # twice.
    write_dir = config.model_dir if chief else run_files.worker_scratch_dir(
        config.model_dir, strategy.cluster_resolver.task_id)
    last_manager = tf.train.CheckpointManager(
        last_ckpt, os.path.join(config.model_dir, checkpoints.LAST_DIR), max_to_keep=2)
    save_manager = last_manager if chief else tf.train.CheckpointManager(
        last_ckpt, os.path.join(write_dir, checkpoints.LAST_DIR), max_to_keep=1)
    best_ckpt = tf.train.Checkpoint(model=base, epoch=epoch_var)
    best_manager = tf.train.CheckpointManager(
        best_ckpt, os.path.join(write_dir, checkpoints.BEST_DIR), max_to_keep=1)

    select_key = rundir.selection_key(len(splits.y_val) > 0)
    rows = []
    if resumed_state is not None:
        rows = resume.restore_run(
            config, resumed_state, checkpoint=last_ckpt, last_manager=last_manager,
            save_manager=save_manager, best_manager=best_manager, epoch_var=epoch_var,
            select_key=select_key)
    if chief:
        run_files.write_run_record(config, splits)
        rundir.write_metrics(config.model_dir, rows)   # drops rows past the checkpoint

    start_epoch = int(epoch_var.numpy())
    chain = callback_chain.training_callbacks(
        config, splits, chief=chief, save_manager=save_manager, best_manager=best_manager,
        epoch_var=epoch_var, rows=rows, select_key=select_key, steps=steps,
        log_names=loop.train_log_names(model))
    dataset = data.train_dataset(
        splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed,
        augment=config.augment, pad=config.pad, start_epoch=start_epoch,
        num_epochs=config.epochs - start_epoch, max_steps_per_epoch=steps)
    # The callbacks print the progress (TrainingProgress) and one line per epoch.
    try:
        loop.fit_epochs(model, strategy, dataset, initial_epoch=start_epoch,
                        epochs=config.epochs, steps=steps, callbacks=chain, verbose=0)
    finally:
        # A task's scratch copy of the checkpoints never outlives it.
        if not chief and tf.io.gfile.exists(write_dir):
            fileio.remove_tree(write_dir)

    best_epoch, best_value = rundir.best_epoch(rows, select_key)
    summary = {"best_epoch": best_epoch, "best_" + select_key: best_value,
               "last": rows[-1] if rows else None, "model_dir": config.model_dir}
    if not chief:
        return summary
    fileio.write_json_atomic(os.path.join(config.model_dir, rundir.SUMMARY_FILE), summary)
    plots = []
    if config.report and rows:
        print("Drawing the plots (the heatmaps attack the train and test splits with the "
              "best and last checkpoints)...", flush=True)
        plots = _report(config.model_dir)
    summary["plots"] = plots
    return summary


def _report(model_dir):
    try:
        from dac_tf import plots  # imported late: matplotlib is only needed here
        return plots.make_report([model_dir])
    except Exception as e:  # plots must never cost a finished run
        logging.warning("Could not write the plots: %s", e)
        return []
