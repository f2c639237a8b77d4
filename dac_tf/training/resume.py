"""Continuing a run: whether a `model_dir` may be continued, and restoring it.

A run killed at any point continues from its last finished epoch when the same command
is run again, with the same final weights as an uninterrupted run: the data order and
augmentation of an epoch are a function of (seed, epoch), and the attacks' noise of
(seed, optimizer step), both restored from the checkpoint. What may change on a resumed
run is stated on `TrainConfig`'s fields (`--resume`, `config.RESUME_MAY_CHANGE`); the
checks here refuse the rest before anything is written.
"""

import os
import sys

from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import fileio
from dac_tf import rundir
from dac_tf import schedules
from dac_tf.training import loop

# The first checkpoint's name: CheckpointManager numbers them ckpt-<epoch>.
_FIRST_CHECKPOINT = "ckpt-1"


def check_resumable(config, state):
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
    may_change = config_lib.RESUME_MAY_CHANGE
    if differing:
        allowed = config.resume and all(k in may_change for k in differing)
        if not allowed:
            shown = ", ".join(f"--{k}: {state.config.get(k)!r} -> {getattr(config, k, None)!r}"
                              for k in differing)
            hint = (f"--resume may only change {', '.join(may_change)}"
                    if config.resume else "pass --resume to continue it with "
                    f"changed {', '.join(may_change)}, or choose another --model_dir")
            raise config_lib.ConfigError(
                f"--model_dir={config.model_dir} holds a run with different flags ({shown}); "
                f"{hint}.")
    return True


def check_schedule_kept(config, state, train_size):
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
    recorded_cap = int(recorded.get("max_steps_per_epoch") or 0)
    recorded_steps = loop.steps_per_epoch(train_size, config.batch_size, recorded_cap)
    steps = loop.steps_per_epoch(train_size, config.batch_size, config.max_steps_per_epoch)
    if steps != recorded_steps and config.lr_schedule != "constant":
        raise config_lib.ConfigError(
            f"--resume --max_steps_per_epoch={config.max_steps_per_epoch} gives {steps} "
            f"batches per epoch where the run has {recorded_steps}: the "
            f"--lr_schedule={config.lr_schedule} rates are a function of the batch index, "
            "so the epochs planned would train at other rates. Nothing was changed. "
            f"Resume with --max_steps_per_epoch={recorded_cap}, or start a new run "
            f"({rerun}).")


def complete_summary(config, state):
    """The summary of a rerun of a finished run (nothing is done, not even the plots),
    with the message saying how to train longer."""
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
    message = (f"{config.model_dir} is complete: {state.finished_epoch} of "
               f"{state.config.get('epochs')} epochs (best = epoch {best}, {key} "
               f"{value:.4f}). Nothing to do; to train longer, {longer}.")
    return {"best_epoch": best, "best_" + key: value, "model_dir": config.model_dir,
            "last": dict(state.rows[-1]) if state.rows else None, "complete": True,
            "message": message}


def _restore_latest(checkpoint, manager):
    """Restores the newest readable checkpoint of `manager`; a truncated or corrupt one is
    reported and skipped for the one before it.

    Returns:
      The path restored, or None when the manager lists none.

    Raises:
      CheckpointError: none of the listed checkpoints is readable.
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


def _relist_first(checkpoint, last_manager, save_manager):
    """Restores ckpt-1, which a kill left unlisted (`RunState.killed_in_first_save`), and
    saves it again through `save_manager`, which writes the index listing it (the TF2
    checkpoint API has no call that lists an existing file)."""
    path = os.path.join(last_manager.directory, _FIRST_CHECKPOINT)
    checkpoint.restore(path).assert_existing_objects_matched()
    save_manager.save(checkpoint_number=1)
    print("note: the first checkpoint was saved but not yet listed when the run was "
          "stopped; listed it again.", flush=True)
    return path


def restore_run(config, state, *, checkpoint, last_manager, save_manager, best_manager,
                epoch_var, select_key):
    """Restores the last finished epoch of the run `state` describes.

    Args:
      config: the run's `TrainConfig`.
      state: `rundir.inspect(config.model_dir)` (of a run `check_resumable` accepted).
      checkpoint: the `tf.train.Checkpoint` of model, optimizer and `epoch_var`.
      last_manager: the manager of model_dir's `last` checkpoints.
      save_manager: the manager this task saves `last` with (`last_manager` on the
        chief).
      best_manager: the `best` checkpoint manager; a kill between an epoch's `last` and
        `best` saves is repaired by saving `best` from the restored weights.
      epoch_var: the checkpointed epoch counter.
      select_key: the metrics column `best` maximises.

    Returns:
      The metrics rows of the restored epochs.

    Raises:
      RunDirError: the checkpoint index or the best checkpoint is lost.
      CheckpointError: no checkpoint is readable.
    """
    if state.killed_in_first_save:
        _relist_first(checkpoint, last_manager, save_manager)
    elif not last_manager.checkpoints:
        # Never train from scratch over a run's files (inspect saw checkpoints).
        raise rundir.RunDirError(
            f"--model_dir={config.model_dir} holds checkpoint files but "
            f"{checkpoints.LAST_DIR}/checkpoint lists none. Nothing was changed. Restore "
            "the index from a backup, or move the directory away to start afresh.")
    else:
        _restore_latest(checkpoint, last_manager)
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
    return rows
