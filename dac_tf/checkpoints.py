"""The layout of a training run's `model_dir`, and loading a trained model from it.

    model_dir/
      flags.cfg        resolved flags (absl flagfile: `--flagfile=model_dir/flags.cfg` reruns it)
      config.json      the same as JSON, plus what loading needs (num_classes, input_shape, ...)
      checkpoints/     tf.train.CheckpointManager: model + optimizer + epoch, every epoch ("last")
      best/            the checkpoint with the best robust validation accuracy ("best")
      metrics.csv      one row per epoch
      eval_<checkpoint>.json   `python -m dac_tf.evaluate`'s result for the checkpoint
                               (`eval_result_path`), which the export records
      tensorboard/     TensorBoard summaries
      plots/           PNG figures (python -m dac_tf.report)

Only the base network's weights are needed to rebuild a model: `load_model` builds the
architecture named in config.json and restores the weights, nothing else.
"""

import os

import tensorflow as tf

from dac_tf import errors
from dac_tf import fileio
from dac_tf import models

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.cfg"
LAST_DIR = "checkpoints"
BEST_DIR = "best"
CHECKPOINTS = ("best", "last")


class CheckpointError(errors.UserError):
    """A model_dir or checkpoint that cannot be loaded (the message says why)."""


def config_path(model_dir):
    return os.path.join(model_dir, CONFIG_FILE)


def eval_result_name(checkpoint):
    """The file name of a checkpoint's evaluation result in its run: eval_<ckpt>.json."""
    return f"eval_{checkpoint}.json"


def eval_result_path(model_dir, checkpoint):
    """Where `python -m dac_tf.evaluate` writes one training run's result by default,
    and where `dac_tf.serving.export_run` looks for it."""
    return os.path.join(model_dir, eval_result_name(checkpoint))


def load_run_config(model_dir):
    """The run's config.json as a dict; CheckpointError if `model_dir` is not a run."""
    path = config_path(model_dir)
    if not tf.io.gfile.exists(path):
        raise CheckpointError(
            f"{model_dir!r} is not a dac_tf training run: {CONFIG_FILE} is missing "
            "(expected a --model_dir written by `python -m dac_tf.train`).")
    config = fileio.read_json(path, CheckpointError, "run config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object (was it edited by hand?).")
    return config


def build_model(config):
    """Builds (untrained) the base network a run config describes."""
    return models.build(config["arch"], num_classes=int(config["num_classes"]),
                        input_shape=tuple(config["input_shape"]),
                        normalization=config.get("normalization"),
                        **config.get("arch_kwargs", {}))


def checkpoint_path(model_dir, checkpoint="best"):
    """Path prefix of the `best` or `last` checkpoint of a run."""
    if checkpoint not in CHECKPOINTS:
        raise CheckpointError(
            f"--checkpoint={checkpoint!r} is not valid; use one of {', '.join(CHECKPOINTS)}.")
    directory = os.path.join(model_dir, BEST_DIR if checkpoint == "best" else LAST_DIR)
    path = tf.train.latest_checkpoint(directory) if tf.io.gfile.isdir(directory) else None
    if path is None:
        raise CheckpointError(
            f"no {checkpoint!r} checkpoint in {directory!r} (has the run finished an epoch?).")
    return path


def restore_weights(model, path):
    """Restores a training checkpoint's model weights into `model` (optimizer ignored)."""
    checkpoint = tf.train.Checkpoint(model=model)
    try:
        status = checkpoint.restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} does not match the model {model.name!r}: "
            f"{fileio.first_line(e)}"
        ) from None
    return model


def load_model(model_dir, checkpoint="best"):
    """Rebuilds a trained base network from a run directory.

    Args:
      model_dir: a `--model_dir` written by `python -m dac_tf.train`.
      checkpoint: "best" (best robust validation accuracy) or "last".

    Returns:
      (keras.Model mapping [0, 1] images to logits, run config dict).
    """
    config = load_run_config(model_dir)
    model = build_model(config)
    restore_weights(model, checkpoint_path(model_dir, checkpoint))
    return model, config
