r"""Figures of training runs: `python -m dac_tf.report --model_dir=RUN [--model_dir=RUN2]`.

    python -m dac_tf.report --model_dir=runs/cifar10_preact_resnet18_at \
        --model_dir=runs/cifar10_preact_resnet18_at_dac --output_dir=plots/at_vs_dac

draws the paper's motivation figures (robust overfitting, adversarial certainty over
epochs, the adversarial softmax heatmaps) from what the runs left in their directories
and prints the paths of the files written. The figures and what each reads are the
library's: `dac_tf.plots.make_report`, which the training program also calls when a run
finishes. The flags are the fields of `ReportConfig`.
"""

import dataclasses

from absl import flags

from dac_tf import cli
from dac_tf import flagdefs
from dac_tf.flagdefs import flag
# The library call of this program; `dac_tf.report.make_report` stays importable.
from dac_tf.plots import ReportError
from dac_tf.plots import make_report

PROGRAM = "dac_tf.report"


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """The report's flags (one field each); `make_report`'s arguments."""

    model_dir: tuple[str, ...] | None = flag(
        None, "A run directory written by dac_tf.train; repeat the flag to compare runs.",
        repeat=True)
    output_dir: str | None = flag(
        None, "Where to write the figures (default: the first --model_dir's plots/).")
    heatmaps: bool = flag(True, "Draw the adversarial softmax heatmaps (loads the "
                          "checkpoints and the data, runs PGD).")
    heatmap_examples: int = flag(1000, "Examples of each split attacked for the heatmaps.")
    label: tuple[str, ...] | None = flag(
        None, "Run labels for legends, one per --model_dir (default: AT, AT+DAC, ... from "
        "config.json).", repeat=True)


def define_flags(flag_values=flags.FLAGS):
    """Defines the report's flags (the fields of `ReportConfig`) on `flag_values`.

    Called only when this module is the program (or by a test with its own
    `FlagValues`): the training program imports `make_report` and owns --model_dir.
    """
    flagdefs.define_flags(ReportConfig, flag_values, program=PROGRAM)


def config_from_flags(flag_values):
    """A `ReportConfig` from parsed flags (raises ReportError without a --model_dir)."""
    config = flagdefs.read_config(ReportConfig, flag_values)
    if not config.model_dir:
        raise ReportError("give at least one --model_dir=RUN_DIR.")
    return config


@cli.program(config_from_flags,
             "figures already written stay; run the same command again for the rest.")
def main(config):
    """`python -m dac_tf.report`: prints the paths of the figures written."""
    paths = make_report(config.model_dir, output_dir=config.output_dir,
                        heatmaps=config.heatmaps, heatmap_examples=config.heatmap_examples,
                        labels=None if config.label is None else list(config.label))
    for path in paths:
        print(path)


if __name__ == "__main__":
    cli.run(main, define_flags)
