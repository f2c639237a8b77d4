"""The robustness evaluation library behind `python -m dac_tf.evaluate` and the report.

Modules (each fact in one place; the CLI `dac_tf.evaluate` only reads flags and calls
these):

- `specs`: the attack names (`pgd20`, `cw`, `autoattack`, ...) and their settings (what
  must match for a stored result to be reused).
- `attacks`: the CleverHans attacks, run on padded batches.
- `autoattack_runs`: AutoAttack in an evaluation (native and resumable, or the PyTorch
  package).
- `checks`: the sanity checks (logits, deterministic forward, gradients, eps = 0, ball
  and box, attack-strength order, black box vs white box).
- `loading`: a training run, SavedModel or export as a function from images to logits;
  the evaluated split; the fingerprints of weights and examples that `--resume` checks.
- `runner`: `evaluate_model` (one model, a list of attacks, one record) and
  `evaluate_path` (a model directory end to end).
- `suite`: `EvalConfig` (what `python -m dac_tf.evaluate` takes, as fields) and
  `evaluate_models` (these models into this output).
- `progress`: the progress bars (`keras.utils.Progbar` on stderr).
- `results`: the record's fields, the result file (JSON) written and read back with
  validation, and which stored results `--resume` may reuse.
- `table`: the paper's markdown table.
- `heatmaps`: the mean softmax on adversarial inputs per true class (the report draws
  it).

Two attack implementations, on purpose: evaluation reports numbers with the field's
standard attack library, CleverHans (its `loss_fn` hook gives CW-inf), and with
AutoAttack (`dac_tf.autoattack`); training keeps its own XLA-friendly PGD
(`dac_tf.attacks`: stateless seeds, `tf.while_loop`, train-mode BatchNorm, the TRADES KL
loss). What is the same computation in both lives once, in `dac_tf.attacks`,
`dac_tf.seeds` and `dac_tf.batching`.
"""

from dac_tf import errors


class EvaluationError(errors.UserError):
    """A model, data set or setting that cannot be evaluated (the message says why)."""


_SUBMODULES = ("attacks", "autoattack_runs", "checks", "heatmaps", "loading", "progress",
               "results", "runner", "specs", "suite", "table")


def __getattr__(name):
    # `dac_tf.evaluation.runner.evaluate_model(...)` after `import dac_tf`, as the README
    # writes it; a submodule (and CleverHans, for `attacks`) loads on first use.
    if name in _SUBMODULES:
        import importlib  # noqa: PLC0415
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
