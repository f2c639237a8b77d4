"""What a run directory holds (`inspect`), and whether it may be resumed."""

import dataclasses
import os

import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import fileio
from dac_tf.rundir import RunDirError
from dac_tf.rundir.metrics import METRICS_FILE
from dac_tf.rundir.metrics import best_epoch
from dac_tf.rundir.metrics import read_metrics


@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run directory holds.

    Attributes:
      exists: the directory exists.
      config: config.json as a dict, or None.
      last_epochs: epochs of the `last` checkpoints listed in checkpoints/checkpoint.
      checkpoint_files: epochs of ckpt-N files in checkpoints/, listed or not.
      best_epochs: epochs of the checkpoints in best/.
      rows: metrics.csv rows (`read_metrics`).
    """

    exists: bool
    config: dict | None
    last_epochs: tuple
    checkpoint_files: tuple
    best_epochs: tuple
    rows: tuple

    @property
    def finished_epoch(self):
        """The newest epoch with a `last` checkpoint, 0 when none."""
        return max(self.last_epochs, default=0)

    @property
    def has_checkpoints(self):
        return bool(self.last_epochs or self.checkpoint_files or self.best_epochs)

    @property
    def killed_in_first_save(self):
        """The first `last` checkpoint is on disk but not yet listed in its index.

        TensorFlow's CheckpointManager writes ckpt-N's files, then rewrites the index
        (`checkpoint`); a kill in between leaves ckpt-1 unlisted, with no index at all.
        Later saves cannot end like this (the index still lists the earlier ones), and a
        lost index of several checkpoints is refused as damage.
        """
        return self.checkpoint_files == (1,) and not self.last_epochs


def _checkpoint_epochs(directory):
    """Epochs of the ckpt-N.index files in `directory` (listed or not)."""
    epochs = set()
    if tf.io.gfile.isdir(directory):
        for name in tf.io.gfile.listdir(directory):
            stem, ext = os.path.splitext(name.rstrip("/"))
            if ext == ".index" and stem.startswith("ckpt-") and stem[5:].isdigit():
                epochs.add(int(stem[5:]))
    return tuple(sorted(epochs))


def _listed_epochs(directory):
    state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    if state is None:
        return ()
    epochs = []
    for path in state.all_model_checkpoint_paths:
        stem = os.path.basename(path)
        if stem.startswith("ckpt-") and stem[5:].isdigit():
            epochs.append(int(stem[5:]))
    return tuple(sorted(epochs))


def inspect(model_dir):
    """Reads what `model_dir` holds (see `RunState`); never writes.

    Raises:
      RunDirError: config.json or metrics.csv exist but cannot be read.
    """
    if not tf.io.gfile.exists(model_dir):
        return RunState(False, None, (), (), (), ())
    if not tf.io.gfile.isdir(model_dir):
        raise RunDirError(f"--model_dir={model_dir} is a file, not a directory; choose "
                          "another --model_dir.")
    config_path = checkpoints.config_path(model_dir)
    config = None
    if tf.io.gfile.exists(config_path):
        config = fileio.read_json(config_path, RunDirError, "run config")
        if not isinstance(config, dict):
            raise RunDirError(f"{config_path} is not a JSON object; restore it from a "
                              "backup, or move the run directory away to start afresh.")
    last_dir = os.path.join(model_dir, checkpoints.LAST_DIR)
    return RunState(
        exists=True, config=config, last_epochs=_listed_epochs(last_dir),
        checkpoint_files=_checkpoint_epochs(last_dir),
        best_epochs=_checkpoint_epochs(os.path.join(model_dir, checkpoints.BEST_DIR)),
        rows=tuple(read_metrics(model_dir)))


def resume_problems(state):
    """What keeps a run directory with checkpoints from being resumed.

    Args:
      state: `inspect(model_dir)`.

    Returns:
      A list of one-line problems (empty: the directory is consistent). Each says what
      is missing; resuming over any of them would retrain or reselect over real results.
    """
    if not state.has_checkpoints:
        return []
    problems = []
    if state.config is None:
        problems.append(f"{checkpoints.CONFIG_FILE} is missing")
    if state.checkpoint_files and not state.last_epochs and not state.killed_in_first_save:
        problems.append(f"{checkpoints.LAST_DIR}/checkpoint (the index of the checkpoints "
                        f"ckpt-{', ckpt-'.join(map(str, state.checkpoint_files))}) is missing")
    finished = state.finished_epoch
    epochs = {r["epoch"] for r in state.rows}
    # The loop writes the metrics row of an epoch before its checkpoint, so every
    # checkpointed epoch has a row unless the file was damaged.
    missing_rows = [e for e in range(1, finished + 1) if e not in epochs]
    if missing_rows:
        what = "is missing" if not state.rows else (
            f"lacks the rows of epoch(s) {', '.join(map(str, missing_rows))}")
        problems.append(f"{METRICS_FILE} {what} (the checkpoints reach epoch {finished})")
    return problems


def best_checkpoint_status(rows, restored_epoch, best_epochs, select_key):
    """Whether best/ holds the best of the epochs up to `restored_epoch`.

    The loop saves an epoch's `last` checkpoint before its `best` one, so a kill between
    the two leaves best/ one epoch behind while the restored `last` holds exactly the
    weights best/ should hold.

    Returns:
      ("ok" | "resave" | "missing", best epoch): "resave" when the best epoch is the
      restored one (save best/ from it), "missing" when an earlier best epoch's
      checkpoint is gone (its weights cannot be recovered).
    """
    best, _ = best_epoch([r for r in rows if r["epoch"] <= restored_epoch], select_key)
    if not best or best in best_epochs:
        return "ok", best
    return ("resave" if best == restored_epoch else "missing"), best
