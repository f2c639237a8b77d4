r"""SavedModel export for TensorFlow Serving: `python -m dac_tf.export`.

    python -m dac_tf.export --model_dir=runs/at_dac --checkpoint=best \
        --export_dir=export/at_dac [--version=N] [--overwrite]

writes the base network of a training run as a SavedModel in TF Serving's versioned
layout (export/at_dac/1/, ...) and prints the version directory. The export itself, its
signatures and its guarantees are the library's: `dac_tf.serving.export_run` (the same
call from Python).
"""

import dataclasses

from absl import flags

from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import flagdefs
from dac_tf.serving import export_run

_PROGRAM = "dac_tf.export"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The export program's flags (`flagdefs`): which run, which checkpoint, where to."""

    model_dir: str | None = flagdefs.flag(None, "Training run directory (has "
                                          f"{checkpoints.CONFIG_FILE}). Required.")
    checkpoint: str = flagdefs.flag("best", "Which checkpoint of the run.",
                                    choices=checkpoints.CHECKPOINTS)
    export_dir: str | None = flagdefs.flag(None, "Export base directory, e.g. "
                                           "export/NAME: the SavedModel goes to "
                                           "export/NAME/<version>/. Required.")
    # A string: a bad value gets the library's one-line error naming what is valid.
    version: str | None = flagdefs.flag(None, "Version number to write (default: the next "
                                        "free one).")
    overwrite: bool = flagdefs.flag(False, "Replace an existing --version.")
    eval_json: str | None = flagdefs.flag(
        None, "Evaluation JSON to record in the metadata (default: "
        f"model_dir/{checkpoints.eval_result_name('<checkpoint>')} if it exists).")
    verify: bool = flagdefs.flag(True, "Load the export back and check it against the "
                                 "model before moving it into place.")


def define_flags(flag_values=flags.FLAGS):
    """Defines the export flags on `flag_values` from `ExportConfig` (idempotent).

    Called only when this module is the program: the training and evaluation CLIs own
    flags with the same names (--model_dir, --checkpoint), and absl refuses a flag
    defined twice in one process.
    """
    flagdefs.define_flags(ExportConfig, flag_values, program=_PROGRAM)


@cli.program(lambda flag_values: flagdefs.read_config(ExportConfig, flag_values),
             "nothing was moved into place: an interrupted export leaves no version "
             "behind; run the same command again.")
def main(config):
    """`python -m dac_tf.export`: prints the version directory written."""
    print(export_run(config.model_dir, config.export_dir, checkpoint=config.checkpoint,
                     version=config.version, overwrite=config.overwrite,
                     eval_json=config.eval_json, verify=config.verify))


if __name__ == "__main__":
    cli.run(main, define_flags)
