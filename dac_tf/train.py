r"""Train a robust classifier with DAC: `python -m dac_tf.train --flagfile=configs/at_prn18.cfg`.

Reproduces the reference protocol end to end: the method's attack, losses, SGD with
PyTorch momentum and coupled weight decay, the per-batch learning-rate schedule, the
augmentation, an attacked evaluation after every epoch (PGD with the training attack's
settings, BatchNorm in inference mode) and `best` / `last` checkpoints. Flags and their
reference defaults: `dac_tf/config.py`; the run directory's layout: `dac_tf/checkpoints.py`.

A run killed at any point continues from its last finished epoch when the same command
is run again, with the same final weights as an uninterrupted run: the data order and
augmentation of an epoch are a function of (seed, epoch), and the attacks' noise of
(seed, optimizer step), both restored from the checkpoint.
"""

import dataclasses
import math
import os
import sys
import time

from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from dac_tf import __version__
from dac_tf import attacks
from dac_tf import certainty
from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import cluster
from dac_tf import config as config_lib
from dac_tf import data
from dac_tf import errors
from dac_tf import fileio
from dac_tf import models
from dac_tf import rundir
from dac_tf import schedules
from dac_tf.model import DACModel
from dac_tf.optimizers import TorchSGD

# Keys that --resume may change (anything else would make a different run).
RESUME_MAY_CHANGE = config_lib.RESUME_MAY_CHANGE


class TrainingError(errors.UserError):
    """Training cannot go on (e.g. a non-finite loss); the message says where."""


def make_strategy(name, cpu_replicas=1):
    """The distribution strategy of `--strategy`.

    mirrored: `MirroredStrategy` over the visible GPUs, or over `cpu_replicas` logical
      CPUs when there is no GPU; one device when that leaves one.
    one_device: the first GPU, else the CPU.
    multi_worker: `MultiWorkerMirroredStrategy` configured by the TF_CONFIG variable.
    """
    if name == "multi_worker":
        cluster.current_task()   # one-line errors for a missing or bad TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" and not gpus and cpu_replicas > 1:
        _split_cpu(cpu_replicas)
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus[:cpu_replicas]])
    if name == "mirrored" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def _split_cpu(count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:   # devices already initialised: use what exists
        pass
    if len(tf.config.list_logical_devices("CPU")) < count:
        raise config_lib.ConfigError(
            f"--cpu_replicas={count}: TensorFlow was initialised before the CPU could be "
            "split; start a fresh process.")


# --------------------------------------------------------------- run directory
def _task_writes_files(config):
    """Whether this process owns the run directory (all but non-chief multi-worker tasks).

    Read from TF_CONFIG before any strategy exists, so the lock is taken first.
    """
    return config.strategy != "multi_worker" or cluster.current_task().is_chief


def _check_resumable(config, state):
    """Whether `config` continues the run in `state` (an `rundir.inspect`); writes nothing.

    Returns:
      True if model_dir holds finished epochs that `config` may continue; False for a
      fresh start (nothing there, or a start that never finished an epoch).

    Raises:
      RunDirError: the directory holds checkpoints but lacks what resuming needs.
      ConfigError: it holds a run with other flags.
    """
    problems = rundir.resume_problems(state)
    if not state.has_checkpoints and state.rows:
        problems.append(f"{checkpoints.LAST_DIR}/ is empty but {rundir.METRICS_FILE} has "
                        f"{len(state.rows)} epoch(s)")
    if problems:
        raise rundir.RunDirError(
            f"--model_dir={config.model_dir} cannot be resumed: {'; '.join(problems)}. "
            "Nothing was changed. Restore the missing files from a backup, or move the "
            "directory away (or choose another --model_dir) to start afresh.")
    if not state.has_checkpoints:
        return False   # no finished epoch: any flags may start it afresh
    differing = config_lib.differing_keys(state.config, config)
    if differing:
        allowed = config.resume and all(k in RESUME_MAY_CHANGE for k in differing)
        if not allowed:
            shown = ", ".join(f"--{k}: {state.config.get(k)!r} -> {getattr(config, k, None)!r}"
                              for k in differing)
            hint = (f"--resume may only change {', '.join(RESUME_MAY_CHANGE)}"
                     if config.resume else "pass --resume to continue it with "
                     f"changed {', '.join(RESUME_MAY_CHANGE)}, or choose another --model_dir")
            raise config_lib.ConfigError(
                f"--model_dir={config.model_dir} holds a run with different flags ({shown}); "
                f"{hint}.")
    return True


def _remove_leftovers(model_dir):
    """Deletes what killed processes leave: temporary files, TensorFlow's `ckpt-N_temp`
    checkpoint folders, and the scratch folders of multi-worker tasks."""
    removed = fileio.remove_temporaries(model_dir)
    for sub in (checkpoints.LAST_DIR, checkpoints.BEST_DIR):
        directory = os.path.join(model_dir, sub)
        if tf.io.gfile.isdir(directory):
            for name in tf.io.gfile.listdir(directory):
                if "_temp" in name:
                    tf.io.gfile.rmtree(os.path.join(directory, name.rstrip("/")))
                    removed.append(name)
    for name in tf.io.gfile.listdir(model_dir):
        if name.startswith(".worker_"):
            tf.io.gfile.rmtree(os.path.join(model_dir, name.rstrip("/")))
            removed.append(name)
    return removed


def _write_run_files(config, splits):
    run = config.to_json_dict()
    run.update(num_classes=splits.num_classes, input_shape=list(splits.image_shape),
               class_names=list(splits.class_names), dac_tf_version=__version__)
    fileio.write_json_atomic(checkpoints.config_path(config.model_dir), run)
    fileio.write_atomic(os.path.join(config.model_dir, checkpoints.FLAGS_FILE),
                        config_lib.flagfile_text(config))


def read_metrics(model_dir):
    """metrics.csv rows (`rundir.read_metrics`)."""
    return rundir.read_metrics(model_dir)


# ------------------------------------------------------------------ evaluation
def make_robust_evaluator(model, config, strategy):
    """The per-epoch evaluation that selects `best`: clean and PGD accuracy and AC, BN in
    inference mode, the cross-entropy loss, and the selection attack of `config`
    (`config.selection`; by default the AT reference's PGD-10, step eps/4, uniform start,
    at the evaluation radius: `dac_tf.protocol`).

    Returns:
      evaluate(x, y, epoch) -> dict(clean_accuracy, robust_accuracy, ac).
    """

    def step(images, labels, seed):
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.int32)
        logits_fn = lambda t: tf.cast(model(t, training=False), tf.float32)  # noqa: E731
        clean_logits = logits_fn(images)
        adv = attacks.pgd(logits_fn, images, labels, epsilon=config.select_epsilon,
                          step_size=config.select_step_size, num_steps=config.select_steps,
                          norm=config.norm, loss="ce", start=config.select_start, seed=seed)
        adv_logits = logits_fn(adv)
        correct = lambda z: tf.reduce_sum(  # noqa: E731
            tf.cast(tf.equal(tf.argmax(z, -1, output_type=tf.int32), labels), tf.float32))
        return tf.stack([
            correct(clean_logits), correct(adv_logits),
            tf.reduce_sum(certainty.per_example_certainty(adv_logits, config.ac_measure)),
            tf.cast(tf.shape(labels)[0], tf.float32)])

    @tf.function(reduce_retracing=True)
    def distributed_step(images, labels, seed):
        per_replica = strategy.run(step, args=(images, labels, seed))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def evaluate(x, y, epoch):
        if config.eval_examples:
            x, y = x[:config.eval_examples], y[:config.eval_examples]
        ds = strategy.experimental_distribute_dataset(
            data.eval_dataset(x, y, batch_size=config.eval_batch_size))
        totals = np.zeros(4)
        for i, (images, labels) in enumerate(ds):
            seed = tf.constant([config.seed + 1, epoch * 1_000_003 + i], tf.int64)
            totals += distributed_step(images, labels, seed).numpy()
        clean, robust, ac_sum, count = totals
        return {"clean_accuracy": clean / count, "robust_accuracy": robust / count,
                "ac": ac_sum / count}

    return evaluate


# -------------------------------------------------------------------- training
def build_training(config, splits, strategy, steps_per_epoch):
    """Builds base model, DACModel, optimizer and checkpoint objects inside the strategy."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        try:
            base = models.build(config.arch, num_classes=splits.num_classes,
                                input_shape=splits.image_shape,
                                normalization=None if config.normalization == "none"
                                else config.normalization, **config.arch_kwargs)
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


class _StopOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` at the first batch whose loss is not finite and remembers which."""

    def __init__(self):
        super().__init__()
        self.bad_batch = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_batch = batch
            self.model.stop_training = True


def _fit_epoch(model, config):
    """One epoch with `model.fit` (single machine: one or several local devices)."""

    def run(train_ds, steps):
        stopper = _StopOnNonFinite()
        history = model.fit(train_ds, epochs=1, steps_per_epoch=steps, shuffle=False,
                            verbose=config.verbose, callbacks=[stopper])
        return {k: float(v[-1]) for k, v in history.history.items()}, stopper.bad_batch

    return run


def _custom_loop_epoch(model, strategy, config):
    """One epoch with a custom loop: `strategy.run(model.train_step)` per batch.

    Keras' `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585); the
    loop runs the same `DACModel.train_step`, so both paths share every line of the step.
    """

    @tf.function
    def step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    names = ["loss", "adv_accuracy", "adv_certainty"] + (["ac_loss"] if model.use_dac else [])
    if model.reference_bn_updates and model.method == "at":
        names.append("clean_accuracy")   # the reference's clean train-mode forward

    def run(train_ds, steps):
        for metric in model.metrics:
            metric.reset_state()
        iterator = iter(strategy.experimental_distribute_dataset(train_ds))
        bar = keras.utils.Progbar(steps, verbose=config.verbose, stateful_metrics=names)
        for i in range(steps):
            step(iterator)
            loss = float(model.loss_tracker.result())
            if not math.isfinite(loss):
                return {"loss": loss}, i
            bar.update(i + 1, [(n, float(m.result())) for n, m in _named(model, names)])
        return {n: float(m.result()) for n, m in _named(model, names)}, None

    return run


def _named(model, names):
    by_name = {m.name: m for m in model.metrics}
    return [(n, by_name[n]) for n in names]


def _epoch_row(epoch, lr, logs, val, test, seconds):
    row = {"epoch": epoch, "lr": lr, "train_loss": logs.get("loss"),
           "train_adv_accuracy": logs.get("adv_accuracy"),
           "train_ac": logs.get("adv_certainty"), "train_ac_loss": logs.get("ac_loss"),
           "train_clean_accuracy": logs.get("clean_accuracy"), "epoch_seconds": seconds}
    for prefix, result in (("val", val), ("test", test)):
        if result is not None:
            row[f"{prefix}_clean_accuracy"] = result["clean_accuracy"]
            row[f"{prefix}_robust_accuracy"] = result["robust_accuracy"]
            row[f"{prefix}_ac"] = result["ac"]
    return row


def train_and_evaluate(config):
    """Trains and evaluates one run described by `config` (a `TrainConfig`).

    Returns:
      dict: best_epoch, best selection robust accuracy, the last epoch's metrics row, and
      the paths written.

    Raises:
      ConfigError, DatasetError, RunDirError, CheckpointError, TrainingError: one-line
        errors a user can fix. A start that fails before its first epoch leaves no run
        directory behind (nor a lock); an existing run is never modified by a refusal.
    """
    if config.strategy == "mirrored" and config.cpu_replicas > 1 and not tf.config.list_physical_devices("GPU"):
        _split_cpu(config.cpu_replicas)   # before any op initialises the devices
    owner = _task_writes_files(config)
    # Everything that can refuse the start runs before the first write (data included),
    # so a refused start leaves no trace.
    state = rundir.inspect(config.model_dir)
    continuing = _check_resumable(config, state)
    if continuing and state.finished_epoch >= config.epochs:
        return _complete(config, state)
    splits = data.load(config.dataset, data_dir=config.data_dir, val_size=config.val_size,
                       seed=config.seed)
    if len(splits.y_train) == 0 or len(splits.y_test) == 0:
        raise data.DatasetError(f"--dataset={config.dataset}: the training or test split "
                                "is empty.")
    _check_against_data(config, splits)
    steps = data.steps_per_epoch(len(splits.y_train), config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)

    created = _first_missing_ancestor(config.model_dir)
    try:
        tf.io.gfile.makedirs(config.model_dir)
    except (OSError, tf.errors.OpError) as e:
        raise rundir.RunDirError(f"--model_dir={config.model_dir} cannot be created: "
                                 f"{fileio.first_line(e)}.") from None
    lock = rundir.RunLock(config.model_dir)
    try:
        if owner:
            lock.acquire()
            # Another process may have written the run since the first look.
            continuing = _check_resumable(config, rundir.inspect(config.model_dir))
            _remove_leftovers(config.model_dir)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        try:
            return _run(config, splits, steps, continuing, owner)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
    except BaseException:
        # A start that fails before its first epoch is saved leaves nothing behind (and
        # so does not block a corrected command); a run with saved epochs is kept.
        lock.release()
        if created and owner and not rundir.inspect(config.model_dir).has_checkpoints:
            tf.io.gfile.rmtree(created)
        raise
    finally:
        lock.release()


def _first_missing_ancestor(path):
    """The outermost folder of `path` that does not exist yet (what makedirs creates),
    or None when `path` exists."""
    path = os.path.normpath(path)
    missing = None
    while path and not tf.io.gfile.exists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _check_against_data(config, splits):
    """Flags that are valid alone but not for this data set's images."""
    height, width = splits.image_shape[:2]
    if config.augment == "reflect" and config.pad >= min(height, width):
        raise config_lib.ConfigError(
            f"--pad={config.pad} is too large for the {height}x{width} images of "
            f"--dataset={config.dataset} with --augment=reflect (reflect padding needs pad "
            f"< {min(height, width)}); lower --pad or use --augment=zero or none.")


def _complete(config, state):
    """A rerun of a finished run: report it, change nothing (not even the plots)."""
    key = rundir.selection_key(config.val_size > 0)
    best, value = rundir.best_epoch(state.rows, key)
    print(f"{config.model_dir} is complete: {state.finished_epoch} of "
          f"{state.config.get('epochs')} epochs (best = epoch {best}, {key} {value:.4f}). "
          "Nothing to do; to train longer pass --resume --epochs=N with a larger N.",
          flush=True)
    return {"best_epoch": best, "best_" + key: value, "model_dir": config.model_dir,
            "last": dict(state.rows[-1]) if state.rows else None, "complete": True}


def _restore_latest(checkpoint, manager):
    """Restores the newest readable checkpoint of `manager`; a truncated or corrupt one is
    reported and skipped for the one before it.

    Returns:
      The path restored, or None when there is none.
    """
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # noqa: BLE001 -- a damaged file raises all sorts (IndexError...)
            print(f"warning: checkpoint {path} is unreadable ({fileio.first_line(e)}); "
                  "trying the one before it.", file=sys.stderr, flush=True)
    if manager.checkpoints:
        raise checkpoints.CheckpointError(
            f"no readable checkpoint in {manager.directory}; move the directory away to "
            "start the run afresh.")
    return None


def _run(config, splits, steps, continuing, chief):
    strategy = make_strategy(config.strategy, config.cpu_replicas)
    if config.batch_size < strategy.num_replicas_in_sync:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size} is smaller than the "
            f"{strategy.num_replicas_in_sync} replicas training it (GPUs, --cpu_replicas or "
            "workers): the global batch is split over them; use --batch_size >= "
            f"{strategy.num_replicas_in_sync}.")
    base, model, optimizer, epoch_var = build_training(config, splits, strategy, steps)
    last_ckpt = tf.train.Checkpoint(model=base, optimizer=optimizer, epoch=epoch_var)
    # Every multi-worker task takes part in a save; only the chief's lands in model_dir
    # (the others write to a scratch directory they delete), so files are never written
    # twice.
    write_dir = config.model_dir if chief else os.path.join(
        config.model_dir, f".worker_{strategy.cluster_resolver.task_id}")
    last_manager = tf.train.CheckpointManager(
        last_ckpt, os.path.join(config.model_dir, checkpoints.LAST_DIR), max_to_keep=2)
    save_manager = last_manager if chief else tf.train.CheckpointManager(
        last_ckpt, os.path.join(write_dir, checkpoints.LAST_DIR), max_to_keep=1)
    best_ckpt = tf.train.Checkpoint(model=base, epoch=epoch_var)
    best_manager = tf.train.CheckpointManager(
        best_ckpt, os.path.join(write_dir, checkpoints.BEST_DIR), max_to_keep=1)

    has_val = len(splits.y_val) > 0
    select_key = rundir.selection_key(has_val)
    rows = []
    if continuing and _restore_latest(last_ckpt, last_manager):
        restored = int(epoch_var.numpy())
        rows = [r for r in rundir.read_metrics(config.model_dir) if r["epoch"] <= restored]
        status, best = rundir.best_checkpoint_status(
            rows, restored, rundir.inspect(config.model_dir).best_epochs, select_key)
        if status == "missing":
            raise rundir.RunDirError(
                f"--model_dir={config.model_dir} cannot be resumed: "
                f"{checkpoints.BEST_DIR}/ lacks the checkpoint of epoch {best}, the best "
                f"epoch by {select_key} in {rundir.METRICS_FILE}. Nothing was changed. "
                "Restore it from a backup, or move the directory away to start afresh.")
        if status == "resave":   # killed between the epoch's last and best saves
            best_manager.save(checkpoint_number=restored)
        print(f"Resuming {config.model_dir} from epoch {restored}.", flush=True)
    if chief:
        _write_run_files(config, splits)
    best_epoch, best_value = rundir.best_epoch(rows, select_key)

    evaluate = make_robust_evaluator(base, config, strategy)
    writer = tf.summary.create_file_writer(os.path.join(write_dir, "tensorboard"))
    run_epoch = (_custom_loop_epoch(model, strategy, config) if config.strategy == "multi_worker"
                 else _fit_epoch(model, config))
    start_epoch = int(epoch_var.numpy())
    for epoch in range(start_epoch, config.epochs):
        began = time.time()
        train_ds = data.train_dataset(
            splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed,
            augment=config.augment, pad=config.pad, start_epoch=epoch, num_epochs=1).take(steps)
        if config.verbose:
            print(f"Epoch {epoch + 1}/{config.epochs}", flush=True)
        logs, bad_batch = run_epoch(train_ds, steps)
        if bad_batch is not None or not all(math.isfinite(v) for v in logs.values()):
            where = f"batch {bad_batch + 1} of " if bad_batch is not None else ""
            raise TrainingError(
                f"non-finite loss at {where}epoch {epoch + 1}; training stopped. The last "
                f"good checkpoint ({last_manager.latest_checkpoint or 'none yet'}) and the "
                "best one are kept; lower --lr, check the data, or use float32.")
        lr = float(optimizer.learning_rate)   # the rate of the epoch's last batch
        val = evaluate(splits.x_val, splits.y_val, epoch) if has_val else None
        test = evaluate(splits.x_test, splits.y_test, epoch)
        seconds = time.time() - began
        row = _epoch_row(epoch + 1, lr, logs, val, test, seconds)
        rows.append(row)

        # Order matters for resuming after a kill at any point: the metrics row first
        # (rows beyond the restored checkpoint are dropped), then `last`, then `best`
        # (a missing best of the restored epoch is saved again from `last`).
        epoch_var.assign(epoch + 1)
        if chief:
            rundir.write_metrics(config.model_dir, rows)
        save_manager.save(checkpoint_number=epoch + 1)
        if row[select_key] > best_value:
            best_epoch, best_value = epoch + 1, row[select_key]
            best_manager.save(checkpoint_number=epoch + 1)
        with writer.as_default(step=epoch + 1):
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    tf.summary.scalar(key, value)
        print(_summary_line(row, has_val, best_epoch), flush=True)

    summary = {"best_epoch": best_epoch, "best_" + select_key: best_value,
               "last": rows[-1] if rows else None, "model_dir": config.model_dir}
    plots = []
    if not chief:
        tf.io.gfile.rmtree(write_dir)
        return summary
    fileio.write_json_atomic(os.path.join(config.model_dir, rundir.SUMMARY_FILE), summary)
    if config.report and rows:
        plots = _report(config.model_dir)
    summary["plots"] = plots
    print(f"\nModel (best = epoch {best_epoch}, last = epoch {len(rows)}): "
          f"{os.path.join(config.model_dir, checkpoints.BEST_DIR)} and "
          f"{os.path.join(config.model_dir, checkpoints.LAST_DIR)}\n"
          f"Metrics: {rundir.metrics_path(config.model_dir)} "
          f"(TensorBoard: {os.path.join(config.model_dir, 'tensorboard')})\n"
          f"Plots: {', '.join(plots) if plots else 'none'}", flush=True)
    return summary


def _summary_line(row, has_val, best_epoch):
    split = "val" if has_val else "test"
    ac_loss = "" if row.get("train_ac_loss") is None else f" ac_loss {row['train_ac_loss']:.4f}"
    return (f"epoch {row['epoch']:>3d}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train adv {row['train_adv_accuracy']:.4f}  AC {row['train_ac']:.4f}{ac_loss}  "
            f"{split} clean {row[split + '_clean_accuracy']:.4f} robust "
            f"{row[split + '_robust_accuracy']:.4f}  best epoch {best_epoch}  "
            f"{row['epoch_seconds']:.1f}s")


def _report(model_dir):
    try:
        from dac_tf import report  # imported late: matplotlib is only needed here
        return report.make_report([model_dir])
    except Exception as e:  # plots must never cost a finished run
        logging.warning("Could not write the plots: %s", e)
        return []


def define_flags(flag_values=flags.FLAGS):
    """Defines the training flags on `flag_values` (`dac_tf.config` owns them)."""
    config_lib.define_flags(flag_values)


def _model_dir_of_flagfile(argv, flag_values):
    """`--flagfile=RUN/flags.cfg` without `--model_dir` reruns RUN where it now is.

    flags.cfg does not record --model_dir, so a run directory can be moved or copied.
    """
    if flag_values["model_dir"].present:
        return None
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            path = arg[len("--flagfile="):]
            directory = os.path.dirname(os.path.abspath(path))
            if (os.path.basename(path) == checkpoints.FLAGS_FILE
                    and os.path.exists(checkpoints.config_path(directory))):
                return directory
    return None


@cli.guard("the epochs finished so far are saved; run the same command again to "
           "continue from the last one.")
def main(argv, flag_values=None):
    """`python -m dac_tf.train`: reads the flags once and trains (`train_and_evaluate`)."""
    if len(argv) > 1:
        raise config_lib.ConfigError(f"unexpected arguments: {' '.join(argv[1:])} (flags "
                                     "are written --name=value).")
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # TF's checkpoint INFO lines drown the log
    config = config_lib.from_flags(flag_values)
    moved = _model_dir_of_flagfile(sys.argv, flag_values)
    if moved:
        config = dataclasses.replace(config, model_dir=moved)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    train_and_evaluate(config)


if __name__ == "__main__":
    cli.run(main, define_flags)
