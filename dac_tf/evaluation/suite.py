"""Evaluate these models into this output: the library call behind `python -m dac_tf.evaluate`.

    from dac_tf.evaluation import suite
    config = suite.resolve(suite.EvalConfig(
        model=("runs/at_dac", "runs/at_dac"), checkpoint=("last", "best"),
        attacks="clean,pgd20,pgd100,cw,autoattack", output="results/at_dac.json"))
    records, table_markdown = suite.evaluate_models(config)

`EvalConfig` is the one statement of what an evaluation takes: which models and
checkpoints, on which data, under which attacks (`AttackSettings`, what each model is
attacked with) and into which output. Its fields are also the program's flags
(`dac_tf.flagdefs`: default, help and unit on the field; radii and steps in [0, 1] units
in the config, pixel levels /255 on the command line). `resolve` validates a config
before any model is loaded and fills in what depends on the models (one checkpoint per
model, the default output); `evaluate_models` runs `runner.evaluate_path` per model,
writes the JSON after every attack (so an interrupted run resumes with `resume=True`)
and the markdown table next to it.
"""

import dataclasses
import os
import re

from absl import logging
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import fileio
from dac_tf import flagdefs
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import attacks as attack_lib
from dac_tf.evaluation import loading
from dac_tf.evaluation import results
from dac_tf.evaluation import runner
from dac_tf.evaluation import table

SPLITS = ("test", "train")
DEFAULT_ATTACKS = "clean,pgd20,pgd100,cw,autoattack"
_AA = attack_lib.AUTOATTACK_BUDGETS


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """How each model is attacked: the attacks and their settings ([0, 1] units).

    None for `epsilon`, `norm` and the step sizes means the protocol's value for the
    model (`runner.evaluate_path`).
    """

    attacks: str = flagdefs.flag(DEFAULT_ATTACKS, "Comma list of "
                                 f"{attack_lib.VALID_ATTACKS_TEXT}.", group="attacks")
    epsilon: float | None = flagdefs.flag(
        None, "Radius. Default: 8 on cifar10, cifar100 and svhn under L-inf (the paper's "
        "and RobustBench's radius, whatever the run trained with); the run's training "
        "radius on digits, npz and under L2.", group="attacks", unit=flagdefs.PIXEL_RADIUS)
    norm: str | None = flagdefs.flag(None, "linf or l2 (default: the model's, else linf).",
                                     group="attacks")
    pgd_step_size: float | None = flagdefs.flag(
        None, "PGD step. Default epsilon/4 (2 at epsilon 8: robust-overfitting / DAC "
        "reference).", group="attacks", unit=flagdefs.PIXEL_STEP)
    pgd_restarts: int = flagdefs.flag(1, "Random restarts of PGD and CW-inf (per-example "
                                      "worst case).", group="attacks")
    cw_confidence: float = flagdefs.flag(attack_lib.DEFAULT_CW_CONFIDENCE, "Confidence "
                                         "kappa of the CW-inf loss (CAT/FAT/GAIRAT: 50).",
                                         group="attacks")
    cw_step_size: float | None = flagdefs.flag(None, "CW-inf step (default: the PGD step).",
                                               group="attacks", unit=flagdefs.PIXEL_STEP)
    batch_size: int = flagdefs.flag(runner.DEFAULT_BATCH_SIZE, "Examples per batch.",
                                    group="attacks")
    seed: int = flagdefs.flag(0, "Seed of the random starts.", group="attacks")
    jit_compile: bool = flagdefs.flag(False, "Compile the attacks with XLA.",
                                      group="attacks")
    autoattack_impl: str = flagdefs.flag(
        "native", "native: dac_tf.autoattack (TensorFlow, resumable); official: the "
        "PyTorch fra31/auto-attack package through dac_tf.torch_bridge (needs torch and "
        "autoattack); pyautoattack: its PyPI repackaging (needs torch and pyautoattack).",
        group="autoattack")
    autoattack_attacks: tuple[str, ...] = flagdefs.flag(
        tuple(attack_lib.AUTOATTACK_STANDARD), "AutoAttack components (a subset is "
        "reported as AA(...)).", group="autoattack", choices=attack_lib.AUTOATTACK_STANDARD)
    autoattack_apgd_iters: int = flagdefs.flag(
        _AA["apgd_n_iter"], "APGD iterations (standard: the default).", group="autoattack")
    autoattack_fab_iters: int = flagdefs.flag(
        _AA["fab_n_iter"], "FAB-T iterations (standard: the default).", group="autoattack")
    autoattack_square_queries: int = flagdefs.flag(
        _AA["square_n_queries"], "Square queries (standard: the default).",
        group="autoattack")
    autoattack_targets: int = flagdefs.flag(
        _AA["n_target_classes"], "Target classes of APGD-T and FAB-T (standard: the "
        "default).", group="autoattack")
    progress: bool = flagdefs.flag(True, "Progress bars on stderr.", group="output")

    def autoattack_options(self):
        """The `attacks.autoattack_settings` options of these settings."""
        return dict(sorted(dict(
            attacks=self.autoattack_attacks, apgd_n_iter=self.autoattack_apgd_iters,
            fab_n_iter=self.autoattack_fab_iters,
            square_n_queries=self.autoattack_square_queries,
            n_target_classes=self.autoattack_targets, jit_compile=self.jit_compile,
            impl=self.autoattack_impl).items()))

    def runner_kwargs(self):
        """These settings as the keyword arguments of `runner.evaluate_path` (and so of
        `runner.evaluate_model`)."""
        return dict(attacks=self.attacks, epsilon=self.epsilon, norm=self.norm,
                    batch_size=self.batch_size, seed=self.seed,
                    pgd_step_size=self.pgd_step_size, pgd_restarts=self.pgd_restarts,
                    cw_confidence=self.cw_confidence, cw_step_size=self.cw_step_size,
                    autoattack_options=self.autoattack_options(),
                    jit_compile=self.jit_compile, show_progress=self.progress)


@dataclasses.dataclass(frozen=True)
class EvalConfig(AttackSettings):
    """Which models, on which data, into which output; and how (`AttackSettings`)."""

    model: tuple[str, ...] | None = flagdefs.flag(
        None, "A training run directory (config.json), a SavedModel directory or an "
        "export base directory (highest numbered version). Repeat for one table row per "
        "model. Required.", group="models", repeat=True)
    checkpoint: tuple[str, ...] = flagdefs.flag(
        ("best",), "best or last (training runs), or a comma list with one entry per "
        "--model.", group="models", choices=checkpoints.CHECKPOINTS)
    dataset: str | None = flagdefs.flag(
        None, "Default: the model's own dataset (config.json / export metadata). One of "
        "cifar10, cifar100, svhn, digits, npz:PATH.", group="data")
    data_dir: str | None = flagdefs.flag(None, "tfds data directory.", group="data")
    split: str = flagdefs.flag("test", f"One of {', '.join(SPLITS)}.", group="data")
    num_examples: int | None = flagdefs.flag(None, "Evaluate the first N examples "
                                             "(default: all).", group="data")
    output: str | None = flagdefs.flag(
        None, "Results JSON (the markdown table goes next to it as .md). Default for one "
        f"training run: MODEL_DIR/{checkpoints.eval_result_name('<checkpoint>')} (picked "
        "up by python -m dac_tf.export); otherwise results/<model names>.json in the "
        "current directory.", group="output")
    resume: bool = flagdefs.flag(False, "Reuse finished attacks of an existing --output "
                                 "and continue an interrupted AutoAttack.", group="output")


def resolve(config):
    """Validates `config` before any model is loaded and fills in what depends on the
    models: one checkpoint per model, and the default output.

    Args:
      config: an `EvalConfig` (e.g. `flagdefs.read_config(EvalConfig, flag_values)`).

    Returns:
      The `EvalConfig` to run.

    Raises:
      EvaluationError, attacks.AttackError: a value or combination that cannot be
        evaluated (one line naming the flag).
    """
    models = tuple(config.model or ())
    if not models:
        raise EvaluationError("--model is required (a training run or SavedModel directory).")
    ckpts = tuple(config.checkpoint)
    if len(ckpts) not in (1, len(models)):
        raise EvaluationError(f"--checkpoint lists {len(ckpts)} entries for {len(models)} "
                              "--model flags; give one, or one per --model.")
    if len(ckpts) == 1:
        ckpts = ckpts * len(models)
    if config.split not in SPLITS:
        raise EvaluationError(f"--split={config.split!r} is not valid; use one of "
                              f"{', '.join(SPLITS)}.")
    if config.norm is not None and config.norm not in attack_lib.NORMS:
        raise EvaluationError(f"--norm={config.norm!r} is not valid; use one of "
                              f"{', '.join(attack_lib.NORMS)}.")
    attack_lib.parse_attacks(config.attacks)
    for name in ("num_examples", "batch_size", "pgd_restarts", "autoattack_apgd_iters",
                 "autoattack_fab_iters", "autoattack_square_queries", "autoattack_targets"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise EvaluationError(f"--{name}={value} must be at least 1.")
    if config.cw_confidence < 0:
        raise EvaluationError(f"--cw_confidence={config.cw_confidence:g} must be >= 0.")
    # Validates the AutoAttack options (the radius, seed and batch are placeholders).
    attack_lib.autoattack_settings(0.0, seed=0, batch_size=1,
                                   options=config.autoattack_options())
    return dataclasses.replace(config, model=models, checkpoint=ckpts,
                               output=config.output or default_output(models, ckpts))


def default_output(models, ckpts):
    """The output of an evaluation without one: a single training run's
    `checkpoints.eval_result_path` (where the export looks for it), else
    results/<model names>.json under the current directory (never inside an export,
    which TF Serving watches)."""
    if len(models) == 1 and tf.io.gfile.exists(checkpoints.config_path(models[0])):
        return checkpoints.eval_result_path(models[0], ckpts[0])
    names = []
    for model, ckpt in zip(models, ckpts):
        name = os.path.basename(os.path.normpath(model)) or "model"
        if tf.io.gfile.exists(checkpoints.config_path(model)):
            name += f"_{ckpt}"
        names.append(re.sub(r"[^A-Za-z0-9._-]+", "_", name))
    return os.path.join("results", "-".join(dict.fromkeys(names)) + ".json")


def prepare_output(output):
    """Checks before any attack runs that `output` can be written, and removes the
    temporary files a killed evaluation of the same output left.

    Raises:
      EvaluationError: a directory, a folder that cannot be created, or not writable
        (a read-only run directory: pass --output elsewhere).
    """
    if tf.io.gfile.isdir(output):
        raise EvaluationError(f"--output={output} is a directory; give the path of a JSON "
                              "file (the table goes next to it as .md).")
    folder = os.path.dirname(output) or "."
    try:
        tf.io.gfile.makedirs(folder)
        probe = os.path.join(folder, f"{os.path.basename(output)}{fileio.TMP_MARKER}probe")
        fileio.write_atomic(probe, "")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as e:
        raise EvaluationError(
            f"--output={output} cannot be written ({fileio.first_line(e)}); pass "
            "--output=PATH in a writable folder (a read-only run directory cannot hold "
            f"the default {checkpoints.eval_result_name('<checkpoint>')}).") from None
    prefix = os.path.basename(output) + fileio.TMP_MARKER
    for name in tf.io.gfile.listdir(folder):
        if name.startswith(prefix):
            tf.io.gfile.remove(os.path.join(folder, name))


def evaluate_models(config):
    """Evaluates every model of `config` into its output, writing the JSON as it goes.

    The JSON (one record, or `{"format", "models", "table"}` for several models) is
    rewritten after every attack and AutoAttack batch; the markdown table is written
    next to it (`table.table_path`). With `config.resume`, the finished attacks of an
    existing output that match (same weights, examples and settings) are reused.

    Args:
      config: an `EvalConfig` passed through `resolve`.

    Returns:
      (records, table markdown).

    Raises:
      EvaluationError, data.DatasetError, checkpoints.CheckpointError: a model, data
        set or output that cannot be evaluated; a missing model fails before anything
        is written.
    """
    for path in config.model:
        loading.resolve_model_path(path)   # a missing model fails before anything is written
    prepare_output(config.output)
    previous_records = []
    if config.resume and tf.io.gfile.exists(config.output):
        previous_records = results.read_results(config.output)
    elif config.resume:
        logging.info("--resume: %s does not exist yet; starting from scratch.", config.output)
    done = []
    for path, ckpt in zip(config.model, config.checkpoint):
        record = runner.evaluate_path(
            path, ckpt, dataset=config.dataset, data_dir=config.data_dir,
            split=config.split, num_examples=config.num_examples,
            previous_records=previous_records,
            on_update=lambda r: results.write_results(config.output, done + [r]),
            **config.runner_kwargs())
        done.append(record)
        results.write_results(config.output, done)
    text = table.markdown_table(done)
    fileio.write_atomic(table.table_path(config.output), text)
    return done, text
