"""The files a training run owns in its `model_dir`, apart from what the epochs write.

Creating the directory (and removing what a refused start created), the run's record
(config.json and flags.cfg), and cleaning what killed writers left. The layout itself
is `dac_tf.checkpoints`'; the metrics, the lock and `inspect` are `dac_tf.rundir`'s.
"""

import os

import tensorflow as tf

from dac_tf import __version__
from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import fileio
from dac_tf import rundir

# The scratch folder of a non-chief multi-worker task (its copy of every save).
WORKER_SCRATCH_PREFIX = ".worker_"


def worker_scratch_dir(model_dir, task_id):
    return os.path.join(model_dir, f"{WORKER_SCRATCH_PREFIX}{task_id}")


def first_missing_ancestor(path):
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


def remove_empty_folders(path, outermost):
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


def create_model_dir(model_dir):
    """Creates `model_dir` and its missing parents.

    Returns:
      The outermost folder created (None when `model_dir` existed): what a start that
      fails before its first epoch removes again.

    Raises:
      RunDirError: the folder cannot be created; none of the folders made on the way is
        left behind (a path longer than PATH_MAX, a name longer than NAME_MAX).
    """
    created = first_missing_ancestor(model_dir)
    try:
        tf.io.gfile.makedirs(model_dir)
    except (OSError, tf.errors.OpError) as e:
        remove_empty_folders(model_dir, created)
        raise rundir.RunDirError(f"--model_dir={model_dir} cannot be created: "
                                 f"{fileio.first_line(e)}.") from None
    return created


def remove_leftovers(model_dir):
    """Deletes what killed processes leave: temporary files, TensorFlow's `ckpt-N_temp`
    checkpoint folders, and the scratch folders of multi-worker tasks.

    Returns:
      The names removed.
    """
    removed = fileio.remove_temporaries(model_dir)
    for sub in (checkpoints.LAST_DIR, checkpoints.BEST_DIR):
        directory = os.path.join(model_dir, sub)
        if tf.io.gfile.isdir(directory):
            for name in tf.io.gfile.listdir(directory):
                if "_temp" in name:
                    fileio.remove_tree(os.path.join(directory, name.rstrip("/")))
                    removed.append(name)
    for name in tf.io.gfile.listdir(model_dir):
        if name.startswith(WORKER_SCRATCH_PREFIX):
            fileio.remove_tree(os.path.join(model_dir, name.rstrip("/")))
            removed.append(name)
    return removed


def write_run_record(config, splits):
    """Writes config.json (the config plus what loading needs) and flags.cfg (a
    flagfile that reruns the run)."""
    run = config.to_json_dict()
    run.update(num_classes=splits.num_classes, input_shape=list(splits.image_shape),
               class_names=list(splits.class_names), dac_tf_version=__version__)
    fileio.write_json_atomic(checkpoints.config_path(config.model_dir), run)
    fileio.write_atomic(os.path.join(config.model_dir, checkpoints.FLAGS_FILE),
                        config_lib.flagfile_text(config))
