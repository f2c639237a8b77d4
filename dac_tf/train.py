r"""Train a robust classifier with DAC: `python -m dac_tf.train --flagfile=configs/at_prn18.cfg`.

Reads the flags once into a `dac_tf.config.TrainConfig` (every flag is a field there,
with its default, help and `--resume` rule) and runs `dac_tf.training.train_and_evaluate`
(the same call from Python): the reference protocol end to end, an attacked evaluation
after every epoch and `best` / `last` checkpoints in `--model_dir`.

A run killed at any point continues from its last finished epoch when the same command
is run again, with the same final weights as an uninterrupted run.
"""

import dataclasses
import os
import sys

from absl import flags
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import config as config_lib
from dac_tf import rundir
from dac_tf import training
from dac_tf.training import callback_chain


def define_flags(flag_values=flags.FLAGS):
    """Defines the training flags on `flag_values` (`dac_tf.config.TrainConfig`'s)."""
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


def config_from_flags(flag_values):
    """The `TrainConfig` of the parsed flags (a moved run's flags.cfg runs where it is)."""
    config = config_lib.from_flags(flag_values)
    moved = _model_dir_of_flagfile(sys.argv, flag_values)
    return dataclasses.replace(config, model_dir=moved) if moved else config


def _print_summary(summary):
    if summary.get("complete"):
        print(summary["message"], flush=True)
        return
    if "plots" not in summary:   # a multi-worker task that does not write the run
        return
    model_dir, plots = summary["model_dir"], summary["plots"]
    print(f"\nModel (best = epoch {summary['best_epoch']}, last = epoch "
          f"{summary['last']['epoch'] if summary['last'] else 0}): "
          f"{os.path.join(model_dir, checkpoints.BEST_DIR)} and "
          f"{os.path.join(model_dir, checkpoints.LAST_DIR)}\n"
          f"Metrics: {rundir.metrics_path(model_dir)} (TensorBoard: "
          f"{os.path.join(model_dir, callback_chain.TENSORBOARD_DIR)})\n"
          f"Plots: {', '.join(plots) if plots else 'none'}", flush=True)


@cli.program(config_from_flags, "the epochs finished so far are saved; run the same "
             "command again to continue from the last one.")
def main(config):
    """`python -m dac_tf.train`: reads the flags once and trains (`train_and_evaluate`)."""
    _print_summary(training.train_and_evaluate(config))


if __name__ == "__main__":
    cli.run(main, define_flags)
