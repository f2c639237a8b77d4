r"""Train a robust classifier with DAC: `python -m dac_tf.train --flagfile=configs/at_prn18.cfg`.

Reproduces the reference protocol end to end: the method's attack, losses, SGD with
PyTorch momentum and coupled weight decay, the per-batch learning-rate schedule, the
augmentation, an attacked evaluation after every epoch (the selection attack,
`dac_tf.protocol`; BatchNorm in inference mode) and `best` / `last` checkpoints. The loop
is one Keras `fit` over `dac_tf.callbacks`. Flags and their reference defaults:
`dac_tf/config.py`; the run directory: `dac_tf/rundir.py` and `dac_tf/checkpoints.py`.

A run killed at any point continues from its last finished epoch when the same command
is run again, with the same final weights as an uninterrupted run: the data order and
augmentation of an epoch are a function of (seed, epoch), and the attacks' noise of
(seed, optimizer step), both restored from the checkpoint.
"""

import dataclasses
import os
import sys

from absl import flags
from absl import logging
import keras
import tensorflow as tf

from dac_tf import __version__
from dac_tf import callbacks
from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import cluster
from dac_tf import config as config_lib
from dac_tf import data
from dac_tf import fileio
from dac_tf import models
from dac_tf import rundir
from dac_tf import schedules
from dac_tf.model import DACModel
from dac_tf.optimizers import TorchSGD

# Keys that --resume may change (anything else would make a different run).
RESUME_MAY_CHANGE = config_lib.RESUME_MAY_CHANGE


def make_strategy(name, cpu_replicas=1, cluster_timeout=600.0):
    """The distribution strategy of `--strategy`.

    mirrored: `MirroredStrategy` over the visible GPUs, or over `cpu_replicas` logical
      CPUs when there is no GPU; one device when that leaves one.
    one_device: the first GPU, else the CPU.
    multi_worker: `MultiWorkerMirroredStrategy` configured by the TF_CONFIG variable; it
      waits at most `cluster_timeout` seconds for the other tasks to start, and a
      collective (a training step's all-reduce) that takes longer fails.
    """
    if name == "multi_worker":
        task = cluster.current_task()   # one-line errors for a missing or bad TF_CONFIG
        joined = cluster.watch_join(task, cluster_timeout)
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=cluster_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        joined()
        return strategy
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
                    fileio.remove_tree(os.path.join(directory, name.rstrip("/")))
                    removed.append(name)
    for name in tf.io.gfile.listdir(model_dir):
        if name.startswith(".worker_"):
            fileio.remove_tree(os.path.join(model_dir, name.rstrip("/")))
            removed.append(name)
    return removed


def _write_run_files(config, splits):
    run = config.to_json_dict()
    run.update(num_classes=splits.num_classes, input_shape=list(splits.image_shape),
               class_names=list(splits.class_names), dac_tf_version=__version__)
    fileio.write_json_atomic(checkpoints.config_path(config.model_dir), run)
    fileio.write_atomic(os.path.join(config.model_dir, checkpoints.FLAGS_FILE),
                        config_lib.flagfile_text(config))


# -------------------------------------------------------------------- training
def build_training(config, splits, strategy, steps_per_epoch):
    """Builds base model, DACModel, optimizer and checkpoint objects inside the strategy."""
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


# What a collective raises when another task of a multi-worker cluster is gone or hung.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                  tf.errors.AbortedError, tf.errors.CancelledError)


def _train_log_names(model):
    names = ["loss", "adv_accuracy", "adv_certainty"] + (["ac_loss"] if model.use_dac else [])
    if model.reference_bn_updates and model.method == "at":
        names.append("clean_accuracy")   # the reference's clean train-mode forward
    return names


def fit_epochs(model, strategy, dataset, *, initial_epoch, epochs, steps, callbacks,
               verbose):
    """Trains epochs `initial_epoch` .. `epochs - 1` with `callbacks`.

    One machine (one or several local devices): Keras' `fit`. Under
    `MultiWorkerMirroredStrategy` Keras' `fit` fails (keras-team/keras#20585), so a custom
    loop runs the same `DACModel.train_step` through `strategy.run` and drives the same
    callbacks through a `keras.callbacks.CallbackList`.

    Args:
      model: a compiled `DACModel`.
      strategy: the strategy the model was built under.
      dataset: the batches of every epoch to run, in order (`data.train_dataset`).
      initial_epoch, epochs: the epochs to run, counted from 0.
      steps: batches per epoch.
      callbacks: Keras callbacks.
      verbose: Keras' progress verbosity.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model.fit(dataset, initial_epoch=initial_epoch, epochs=epochs,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
        return

    @tf.function
    def step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    names = _train_log_names(model)
    by_name = {m.name: m for m in model.metrics}

    def logs():
        return {n: float(by_name[n].result()) for n in names}

    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    where = "the start of training"
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for metric in model.metrics:
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            for batch in range(steps):
                where = f"epoch {epoch + 1}, batch {batch + 1}"
                callback_list.on_train_batch_begin(batch)
                step(iterator)
                callback_list.on_train_batch_end(batch, logs())
            where = f"the end of epoch {epoch + 1} (evaluation, checkpoint)"
            callback_list.on_epoch_end(epoch, logs())
            if model.stop_training:
                break
        callback_list.on_train_end()
    except _PEER_FAILURES as e:
        # A dead or hung task fails the collectives of all the others (gRPC
        # unavailable after the coordination service's heartbeat, or the collective
        # timeout): one line naming it, and the exit code that asks for a retry.
        raise cluster.peer_lost_error(cluster.current_task(), e, where) from None


_NON_FINITE_HINT = "lower --lr, check the data, or use --mixed_precision=float32"


def _training_callbacks(config, splits, chief, managers, epoch_var, rows, select_key,
                        steps, log_names):
    """The training loop's callbacks, in the order they run at each epoch's end.

    Validation (selection split, then test) adds its values to the logs; then the
    epoch's lr and time; then the check that everything is finite (a failed epoch stops
    here, unsaved); then the metrics row, `last` and `best` are written in that order
    (what `rundir.resume_problems` relies on after a kill); then TensorBoard and the
    summary line.
    """
    save_manager, best_manager = managers
    best_epoch, best_value = rundir.best_epoch(rows, select_key)
    validation = dict(
        epsilon=config.select_epsilon, step_size=config.select_step_size,
        num_steps=config.select_steps, norm=config.norm, start=config.select_start,
        batch_size=config.eval_batch_size, num_examples=config.eval_examples or None,
        seed=config.seed, ac_measure=config.ac_measure, verbose=bool(config.verbose))
    best = callbacks.BestCheckpoint(best_manager, select_key, best_epoch, best_value)
    chain = [callbacks.StopOnNonFiniteLoss(_NON_FINITE_HINT)]
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
        hint=_NON_FINITE_HINT))

    def write_row(epoch, logs):
        rows.append(rundir.row_from_logs(epoch + 1, logs))
        rundir.write_metrics(config.model_dir, rows)

    if chief:
        chain.append(keras.callbacks.LambdaCallback(on_epoch_end=write_row))
    chain += [callbacks.EpochCheckpoint(save_manager, epoch_var), best]
    if chief:
        chain.append(callbacks.SplitTensorBoard(os.path.join(config.model_dir,
                                                             "tensorboard")))
    chain.append(keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(
            _summary_line(epoch + 1, logs, select_key, best), flush=True)))
    return chain


def train_and_evaluate(config):
    """Trains and evaluates one run described by `config` (a `TrainConfig`).

    Returns:
      dict: best_epoch, best selection robust accuracy, the last epoch's metrics row, and
      the paths written.

    Raises:
      ConfigError, DatasetError, RunDirError, CheckpointError, NonFiniteLossError
        (`dac_tf.errors.UserError`s), ClusterError, PeerLostError: one-line
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
    steps = _steps_per_epoch(len(splits.y_train), config.batch_size,
                             config.max_steps_per_epoch)
    if continuing:
        _check_schedule_kept(config, state, len(splits.y_train))

    strategy = _make_checked_strategy(config)

    created = _first_missing_ancestor(config.model_dir)
    try:
        tf.io.gfile.makedirs(config.model_dir)
    except (OSError, tf.errors.OpError) as e:
        # makedirs may have made some of the folders before the one that failed (a path
        # longer than PATH_MAX, a name longer than NAME_MAX): a refused start leaves none.
        _remove_empty_folders(config.model_dir, created)
        raise rundir.RunDirError(f"--model_dir={config.model_dir} cannot be created: "
                                 f"{fileio.first_line(e)}.") from None
    lock = rundir.RunLock(config.model_dir)
    try:
        if owner:
            lock.acquire()
            # Another process may have written the run since the first look.
            state = rundir.inspect(config.model_dir)
            continuing = _check_resumable(config, state)
            if continuing:
                _check_schedule_kept(config, state, len(splits.y_train))
            _remove_leftovers(config.model_dir)
            if state.killed_in_first_save:
                last_dir = os.path.join(config.model_dir, checkpoints.LAST_DIR)
                _list_first_checkpoint(last_dir)
                print("note: the first checkpoint was saved but not yet listed when the "
                      "run was stopped; listed it again.", flush=True)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        try:
            return _run(config, splits, steps, continuing, owner, strategy)
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


def _list_first_checkpoint(last_dir):
    """Writes the index of `last_dir` listing ckpt-1 (`RunState.killed_in_first_save`)."""
    first = os.path.join(last_dir, "ckpt-1")
    saved_at = tf.io.gfile.stat(first + ".index").mtime_nsec / 1e9
    # TF2 has no public call to list an existing checkpoint; the TF1 one warns that it
    # is deprecated in favour of CheckpointManager, which cannot do it.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        # CheckpointManager keeps only checkpoints saved after `last_preserved_timestamp`.
        tf.compat.v1.train.update_checkpoint_state(
            last_dir, first, all_model_checkpoint_paths=[first],
            all_model_checkpoint_timestamps=[saved_at],
            last_preserved_timestamp=saved_at - 1)
    finally:
        logger.setLevel(level)


def _steps_per_epoch(train_size, batch_size, max_steps_per_epoch):
    steps = data.steps_per_epoch(train_size, batch_size)
    return min(steps, max_steps_per_epoch) if max_steps_per_epoch else steps


def _check_schedule_kept(config, state, train_size):
    """Refuses a resume that would change the learning rate of the epochs planned.

    The schedule is a function of the batch index and, for `schedules.EPOCH_DEPENDENT`
    schedules, of the run's epochs: such a run may not change --epochs (a longer cosine
    would raise the rates of the epochs already trained), and no run but a constant-rate
    one may change its batches per epoch (--max_steps_per_epoch), which moves every
    epoch's batches to other rates. Writes nothing.

    Raises:
      ConfigError: naming the flag and what to do instead.
    """
    recorded = state.config
    planned = int(recorded.get("epochs", config.epochs))
    flagfile = os.path.join(config.model_dir, checkpoints.FLAGS_FILE)
    rerun = f"python -m dac_tf.train --flagfile={flagfile} --model_dir=NEW_DIR"
    if config.epochs != planned and schedules.depends_on_epochs(config.lr_schedule):
        raise config_lib.ConfigError(
            f"--resume --epochs={config.epochs}: --lr_schedule={config.lr_schedule} sets "
            f"the rate of every batch from --epochs, so changing the {planned} planned "
            "epochs would change the learning rate of epochs already planned. Nothing was "
            f"changed. To train {config.epochs} epochs start a new run ({rerun} "
            f"--epochs={config.epochs}); to stop earlier, stop this run after the epoch "
            "you want (every finished epoch is saved).")
    recorded_steps = _steps_per_epoch(train_size, config.batch_size,
                                      int(recorded.get("max_steps_per_epoch") or 0))
    steps = _steps_per_epoch(train_size, config.batch_size, config.max_steps_per_epoch)
    if steps != recorded_steps and config.lr_schedule != "constant":
        raise config_lib.ConfigError(
            f"--resume --max_steps_per_epoch={config.max_steps_per_epoch} gives {steps} "
            f"batches per epoch where the run has {recorded_steps}: the "
            f"--lr_schedule={config.lr_schedule} rates are a function of the batch index, "
            "so the epochs planned would train at other rates. Nothing was changed. "
            "Resume with --max_steps_per_epoch="
            f"{int(recorded.get('max_steps_per_epoch') or 0)}, or start a new run "
            f"({rerun}).")


def _remove_empty_folders(path, outermost):
    """Removes the empty folders from `path` up to `outermost` (deepest first).

    A folder that cannot be reached (a path too long), is missing or holds anything is
    left alone, and so are the folders above it.
    """
    if outermost is None:
        return
    path, outermost = os.path.normpath(path), os.path.normpath(outermost)
    chain = [path]
    while chain[-1] != outermost and os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
    if chain[-1] != outermost:
        return   # `outermost` is not above `path`: nothing of ours to remove
    for folder in chain:
        try:
            if not tf.io.gfile.isdir(folder):
                continue   # never created, or too long to reach
            if tf.io.gfile.listdir(folder):
                return
            if fileio.is_local(folder):
                os.rmdir(folder)   # fails rather than remove anything put there since
            else:
                tf.io.gfile.rmtree(folder)
        except (OSError, tf.errors.OpError):
            return


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
    if schedules.depends_on_epochs(config.lr_schedule):
        longer = (f"--lr_schedule={config.lr_schedule} is planned over the run's epochs, "
                  "so a longer run is a new one: python -m dac_tf.train --flagfile="
                  f"{os.path.join(config.model_dir, checkpoints.FLAGS_FILE)} --epochs=N "
                  "--model_dir=NEW_DIR")
    else:
        longer = ("pass --resume --epochs=N with a larger N (the added epochs follow the "
                  f"same --lr_schedule={config.lr_schedule} formula)")
    print(f"{config.model_dir} is complete: {state.finished_epoch} of "
          f"{state.config.get('epochs')} epochs (best = epoch {best}, {key} {value:.4f}). "
          f"Nothing to do; to train longer, {longer}.", flush=True)
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


def _make_checked_strategy(config):
    """The strategy of `config`, with the checks that need it: every multi-worker task
    runs the same flags, and the batch covers every replica. Runs before anything is
    written, so a task that gives up waiting for its peers leaves nothing behind."""
    strategy = make_strategy(config.strategy, config.cpu_replicas, config.cluster_timeout)
    if config.strategy == "multi_worker":
        identity = {k: v for k, v in config.to_json_dict().items()
                    if k in config_lib.FLAG_NAMES and k not in config_lib.RESUME_IGNORED}
        identity["model_dir"] = config.model_dir   # every task reads the chief's run
        cluster.check_same_flags(strategy, cluster.current_task(), identity)
    if config.batch_size < strategy.num_replicas_in_sync:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size} is smaller than the "
            f"{strategy.num_replicas_in_sync} replicas training it (GPUs, --cpu_replicas or "
            "workers): the global batch is split over them; use --batch_size >= "
            f"{strategy.num_replicas_in_sync}.")
    return strategy


def _run(config, splits, steps, continuing, chief, strategy):
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

    select_key = rundir.selection_key(len(splits.y_val) > 0)
    rows = []
    if continuing and not last_manager.checkpoints:
        # Never train from scratch over a run's files (inspect saw checkpoints).
        raise rundir.RunDirError(
            f"--model_dir={config.model_dir} holds checkpoint files but "
            f"{checkpoints.LAST_DIR}/checkpoint lists none. Nothing was changed. Restore "
            "the index from a backup, or move the directory away to start afresh.")
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
        rundir.write_metrics(config.model_dir, rows)   # drops rows past the checkpoint

    start_epoch = int(epoch_var.numpy())
    chain = _training_callbacks(config, splits, chief, (save_manager, best_manager),
                                epoch_var, rows, select_key, steps, _train_log_names(model))
    dataset = data.train_dataset(
        splits.x_train, splits.y_train, batch_size=config.batch_size, seed=config.seed,
        augment=config.augment, pad=config.pad, start_epoch=start_epoch,
        num_epochs=config.epochs - start_epoch, max_steps_per_epoch=steps)
    # The callbacks print the progress (TrainingProgress) and one line per epoch.
    try:
        fit_epochs(model, strategy, dataset, initial_epoch=start_epoch,
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
    print(f"\nModel (best = epoch {best_epoch}, last = epoch {len(rows)}): "
          f"{os.path.join(config.model_dir, checkpoints.BEST_DIR)} and "
          f"{os.path.join(config.model_dir, checkpoints.LAST_DIR)}\n"
          f"Metrics: {rundir.metrics_path(config.model_dir)} "
          f"(TensorBoard: {os.path.join(config.model_dir, 'tensorboard')})\n"
          f"Plots: {', '.join(plots) if plots else 'none'}", flush=True)
    return summary


def _summary_line(epoch, logs, select_key, best):
    """One line per epoch: the training values, the selection split, the best epoch."""
    split = select_key.split("_")[0]
    ac_loss = f" ac_loss {logs['ac_loss']:.4f}" if "ac_loss" in logs else ""
    return (f"epoch {epoch:>3d}  lr {logs['lr']:.4g}  loss {logs['loss']:.4f}  "
            f"train adv {logs['adv_accuracy']:.4f}  AC {logs['adv_certainty']:.4f}{ac_loss}  "
            f"{split} clean {logs[split + '_clean_accuracy']:.4f} robust "
            f"{logs[split + '_robust_accuracy']:.4f}  best epoch {best.best_epoch}  "
            f"{logs['epoch_seconds']:.1f}s")


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
                    and tf.io.gfile.exists(checkpoints.config_path(directory))):
                return directory
    return None


def _config_from_flags(flag_values):
    config = config_lib.from_flags(flag_values)
    moved = _model_dir_of_flagfile(sys.argv, flag_values)
    return dataclasses.replace(config, model_dir=moved) if moved else config


@cli.program(_config_from_flags, "the epochs finished so far are saved; run the same "
             "command again to continue from the last one.")
def main(config):
    """`python -m dac_tf.train`: reads the flags once and trains (`train_and_evaluate`)."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    train_and_evaluate(config)


if __name__ == "__main__":
    cli.run(main, define_flags)
