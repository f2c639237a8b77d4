r"""SavedModel export for TensorFlow Serving: `python -m dac_tf.export`.

    python -m dac_tf.export --model_dir=runs/at_dac --checkpoint=best \
        --export_dir=export/at_dac [--version=N] [--overwrite]

writes the base network of a training run as a SavedModel in TF Serving's versioned
layout (export/at_dac/1/, ...) and prints the version directory. The export itself, its
signatures and its guarantees are the library's: `dac_tf.serving`.
"""

from absl import flags

from dac_tf import cli
from dac_tf.serving import ExportError
from dac_tf.serving import export_run


# ---------------------------------------------------------------------- CLI
def define_flags(flag_values=flags.FLAGS):
    """Defines the export flags on `flag_values` (idempotent).

    Called only when this module is the program: the training and evaluation CLIs own
    flags with the same names (--model_dir, --checkpoint), and absl refuses a flag
    defined twice in one process.
    """
    if "export_dir" in flag_values:
        return
    f = dict(flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "Training run directory (has config.json).", **f)
    flags.DEFINE_string("checkpoint", "best", "best or last.", **f)
    flags.DEFINE_string("export_dir", None, "Export base directory, e.g. export/NAME: the "
                        "SavedModel goes to export/NAME/<version>/.", **f)
    # A string, so that a bad value gets this module's one-line error, not absl's usage.
    flags.DEFINE_string("version", None, "Version number to write (default: the next free "
                        "one).", **f)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --version.", **f)
    flags.DEFINE_string("eval_json", None, "Evaluation JSON to record in the metadata "
                        "(default: model_dir/eval_<checkpoint>.json if it exists).", **f)
    flags.DEFINE_boolean("verify", True, "Load the export back and check it against the "
                         "model before moving it into place.", **f)


def _read_config(flag_values):
    for name in ("model_dir", "export_dir"):
        if not flag_values[name].value:
            raise ExportError(f"--{name} is required.")
    return {name: flag_values[name].value for name in
            ("model_dir", "export_dir", "checkpoint", "version", "overwrite", "eval_json",
             "verify")}


@cli.program(_read_config, "nothing was moved into place: an interrupted export leaves no "
             "version behind; run the same command again.")
def main(config):
    """`python -m dac_tf.export`: prints the version directory written."""
    print(export_run(config["model_dir"], config["export_dir"],
                     checkpoint=config["checkpoint"], version=config["version"],
                     overwrite=config["overwrite"], eval_json=config["eval_json"],
                     verify=config["verify"]))


if __name__ == "__main__":
    cli.run(main, define_flags)
