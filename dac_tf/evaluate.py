r"""The paper's robustness table for any model: `python -m dac_tf.evaluate --model=RUN`.

    python -m dac_tf.evaluate --model=runs/at_dac --checkpoint=best \
        --attacks=clean,pgd20,pgd100,cw,autoattack --output=results/at_dac.json

Evaluates a training run (`--model=MODEL_DIR`, the `best` or `last` checkpoint) or an
exported SavedModel (`--model=EXPORT_DIR`, or an export base directory holding numbered
versions: the highest is taken) on the first `--num_examples` examples of a split, with
BatchNorm in inference mode, the true labels and inputs in [0, 1], under `clean`,
`fgsm`, `pgdK`, `cw` / `cwK` (CleverHans) and `autoattack` (native, or with
`--autoattack_impl=official|pyautoattack` the PyTorch package through
`dac_tf.torch_bridge`). `--model` may be repeated (one table row each);
`--checkpoint=last,best` gives one checkpoint per `--model`, so
`--model=R --model=R --checkpoint=last,best` gives the paper's `last (best)` pair.

This module only reads the flags (once, into a `dac_tf.evaluation.suite.EvalConfig`,
whose fields they are) and calls the evaluation library: `suite.evaluate_models(config)`
is the same run from Python. The library's pieces: the attacks and their settings
(`attacks`), the sanity checks (`checks`), model loading and fingerprints (`loading`),
one model's run (`runner`), the result record and `--resume` (`results`) and the table
(`table`).

Output (`--output=results.json`; for a single training run the default is
`MODEL_DIR/eval_<checkpoint>.json`, which `python -m dac_tf.export` records in the
export's metadata): with one `--model`, the JSON is that model's record
(`dac_tf.evaluation.results.Record`); with several, `{"format", "models": [record, ...],
"table"}`. The markdown table is printed and written next to the JSON as `.md`. The
JSON is rewritten after every attack and every AutoAttack batch; `--resume` reuses the
finished attacks of an existing output (same weights, examples and settings) and
continues an interrupted AutoAttack. An output that cannot be written is refused before
any model is loaded.

Units: `--epsilon`, `--pgd_step_size` and `--cw_step_size` are in pixel units out of
255, as the field writes them (`--epsilon=8` is 8/255), never guessed from the
magnitude; the library takes [0, 1] units. The default radius is the paper's protocol
(`dac_tf.protocol`): 8/255 on CIFAR-10, CIFAR-100 and SVHN whatever the run trained with
(TRADES and MART train at 0.031 but are evaluated at 8/255), the run's own elsewhere.
"""

from absl import flags

from dac_tf import cli
from dac_tf import flagdefs
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import suite
from dac_tf.evaluation import table

EvalConfig = suite.EvalConfig
SPLITS = suite.SPLITS
_PROGRAM = "dac_tf.evaluate"


def define_flags(flag_values=flags.FLAGS):
    """Defines the evaluation flags on `flag_values` from `EvalConfig` (idempotent).

    Called only when this module is the program (`python -m dac_tf.evaluate`, or a
    test with its own `FlagValues`): the training CLI owns flags with the same names
    (--dataset, --epsilon, ...), and absl refuses a flag defined twice in one process.
    """
    flagdefs.define_flags(EvalConfig, flag_values, program=_PROGRAM)


def config_from_flags(flag_values):
    """Reads the flags once into a validated `EvalConfig` (`suite.resolve`).

    Raises:
      EvaluationError, attacks.AttackError: a flag value or combination that cannot be
        evaluated (one line naming the flag), before any model is loaded.
    """
    try:
        config = flagdefs.read_config(EvalConfig, flag_values)
    except flagdefs.FlagError as e:
        raise EvaluationError(str(e)) from None
    return suite.resolve(config)


def _interrupted_hint(flag_values):
    return (f"the finished attacks (and AutoAttack's progress) are in "
            f"{flag_values['output'].value or 'the output JSON'}; rerun the same command "
            "with --resume to continue.")


@cli.program(config_from_flags, _interrupted_hint)
def main(config):
    """`python -m dac_tf.evaluate`: reads the flags once, evaluates, prints the table."""
    _, text = suite.evaluate_models(config)
    print(text, end="")
    print(f"Results: {config.output} (table: {table.table_path(config.output)})")


if __name__ == "__main__":
    cli.run(main, define_flags)
