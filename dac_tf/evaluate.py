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

This module only reads the flags (once, into an `EvalConfig`) and calls the evaluation
library, `dac_tf.evaluation`: the attacks and their settings (`attacks`), the sanity
checks (`checks`), model loading and fingerprints (`loading`), the run itself
(`runner`), the result record and `--resume` (`results`) and the table (`table`).

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

import dataclasses
import os
import re

from absl import flags
from absl import logging
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import fileio
from dac_tf import protocol
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import attacks as attack_lib
from dac_tf.evaluation import loading
from dac_tf.evaluation import results
from dac_tf.evaluation import runner
from dac_tf.evaluation import table

# The Python API the README documents as `dac_tf.evaluate.*`; they live in the library.
evaluate_model = runner.evaluate_model
load_logits_fn = loading.load_logits_fn

SPLITS = ("test", "train")
DEFAULT_ATTACKS = "clean,pgd20,pgd100,cw,autoattack"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The CLI's flags, read once (units: epsilon and step sizes in [0, 1])."""
    models: tuple
    checkpoints: tuple
    output: str
    attacks: str = DEFAULT_ATTACKS
    dataset: str = None
    data_dir: str = None
    split: str = "test"
    epsilon: float = None
    norm: str = None
    pgd_step_size: float = None
    pgd_restarts: int = 1
    cw_confidence: float = attack_lib.DEFAULT_CW_CONFIDENCE
    cw_step_size: float = None
    num_examples: int = None
    batch_size: int = runner.DEFAULT_BATCH_SIZE
    seed: int = 0
    resume: bool = False
    jit_compile: bool = False
    autoattack_options: tuple = ()
    show_progress: bool = True


_AA = attack_lib.AUTOATTACK_BUDGETS
# (kind, name, default, help): every flag once; `config_from_flags` reads these names.
_FLAGS = (
    ("multi_string", "model", None, "A training run directory (config.json), a SavedModel "
     "directory or an export base directory (highest numbered version). Repeat for one "
     "table row per model."),
    ("string", "checkpoint", "best", "best or last (training runs), or a comma list with "
     "one entry per --model."),
    ("string", "dataset", None, "Default: the model's own dataset (config.json / export "
     "metadata). One of cifar10, cifar100, svhn, digits, npz:PATH."),
    ("string", "data_dir", None, "tfds data directory."),
    ("string", "split", "test", f"One of {', '.join(SPLITS)}."),
    ("string", "attacks", DEFAULT_ATTACKS, f"Comma list of {attack_lib.VALID_ATTACKS_TEXT}."),
    ("float", "epsilon", None, "Radius in pixel units /255 (8 = 8/255). Default: 8 on "
     "cifar10, cifar100 and svhn under L-inf (the paper's and RobustBench's radius, "
     "whatever the run trained with); the run's training radius on digits, npz and "
     "under L2."),
    ("string", "norm", None, "linf or l2 (default: the model's, else linf)."),
    ("float", "pgd_step_size", None, "PGD step, pixel units /255. Default epsilon/4 (2 at "
     "epsilon 8: robust-overfitting / DAC reference)."),
    ("integer", "pgd_restarts", 1, "Random restarts of PGD and CW-inf (per-example worst "
     "case)."),
    ("float", "cw_confidence", attack_lib.DEFAULT_CW_CONFIDENCE, "Confidence kappa of the "
     "CW-inf loss (CAT/FAT/GAIRAT: 50)."),
    ("float", "cw_step_size", None, "CW-inf step, pixel units /255 (default: the PGD "
     "step)."),
    ("integer", "num_examples", None, "Evaluate the first N examples (default: all)."),
    ("integer", "batch_size", runner.DEFAULT_BATCH_SIZE, "Examples per batch."),
    ("integer", "seed", 0, "Seed of the random starts."),
    ("string", "output", None, "Results JSON (the markdown table goes next to it as .md). "
     "Default for one training run: MODEL_DIR/eval_<checkpoint>.json (picked up by "
     "python -m dac_tf.export); otherwise results/<model names>.json in the current "
     "directory."),
    ("boolean", "resume", False, "Reuse finished attacks of an existing --output and "
     "continue an interrupted AutoAttack."),
    ("boolean", "jit_compile", False, "Compile the attacks with XLA."),
    ("string", "autoattack_impl", "native", "native: dac_tf.autoattack (TensorFlow, "
     "resumable); official: the PyTorch fra31/auto-attack package through "
     "dac_tf.torch_bridge (needs torch and autoattack); pyautoattack: its PyPI "
     "repackaging (needs torch and pyautoattack)."),
    ("string", "autoattack_attacks", ",".join(attack_lib.AUTOATTACK_STANDARD), "AutoAttack "
     "components (a subset is reported as AA(...))."),
    ("integer", "autoattack_apgd_iters", _AA["apgd_n_iter"], "APGD iterations (standard: "
     f"{_AA['apgd_n_iter']})."),
    ("integer", "autoattack_fab_iters", _AA["fab_n_iter"], "FAB-T iterations (standard: "
     f"{_AA['fab_n_iter']})."),
    ("integer", "autoattack_square_queries", _AA["square_n_queries"], "Square queries "
     f"(standard: {_AA['square_n_queries']})."),
    ("integer", "autoattack_targets", _AA["n_target_classes"], "Target classes of APGD-T "
     f"and FAB-T (standard: {_AA['n_target_classes']})."),
    ("boolean", "progress", True, "Progress bars on stderr."),
)


def define_flags(flag_values=flags.FLAGS):
    """Defines the evaluation flags on `flag_values` (idempotent).

    Called only when this module is the program (`python -m dac_tf.evaluate`, or a
    test with its own `FlagValues`): the training CLI owns flags with the same names
    (--dataset, --epsilon, ...), and absl refuses a flag defined twice in one process.
    """
    if "attacks" in flag_values:
        return
    for kind, name, default, help_text in _FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)


def _pixels(name, value, radius=True):
    try:
        return protocol.from_pixels(name, value, radius=radius)
    except protocol.UnitError as e:
        raise EvaluationError(str(e)) from None


def config_from_flags(flag_values):
    """Reads and validates the flags into an `EvalConfig`.

    Raises:
      EvaluationError, attack_lib.AttackError: a flag value or combination that cannot be
        evaluated (one line naming the flag), before any model is loaded.
    """
    v = {name: flag_values[name].value for _, name, _, _ in _FLAGS}
    models = tuple(v["model"] or ())
    if not models:
        raise EvaluationError("--model is required (a training run or SavedModel directory).")
    ckpts = tuple(c.strip() for c in (v["checkpoint"] or "").split(","))
    for c in ckpts:
        if c not in checkpoints.CHECKPOINTS:
            raise EvaluationError(f"--checkpoint={v['checkpoint']!r} is not valid; use one of "
                                  f"{', '.join(checkpoints.CHECKPOINTS)} (or a comma list, one "
                                  "per --model).")
    if len(ckpts) not in (1, len(models)):
        raise EvaluationError(f"--checkpoint lists {len(ckpts)} entries for {len(models)} "
                              "--model flags; give one, or one per --model.")
    if len(ckpts) == 1:
        ckpts = ckpts * len(models)
    output = v["output"] or default_output_of(models, ckpts)
    if v["split"] not in SPLITS:
        raise EvaluationError(f"--split={v['split']!r} is not valid; use one of "
                              f"{', '.join(SPLITS)}.")
    if v["norm"] is not None and v["norm"] not in attack_lib.NORMS:
        raise EvaluationError(f"--norm={v['norm']!r} is not valid; use one of "
                              f"{', '.join(attack_lib.NORMS)}.")
    attack_lib.parse_attacks(v["attacks"])   # fail before any model is loaded
    for name in ("num_examples", "batch_size", "pgd_restarts", "autoattack_apgd_iters",
                 "autoattack_fab_iters", "autoattack_square_queries", "autoattack_targets"):
        if v[name] is not None and v[name] < 1:
            raise EvaluationError(f"--{name}={v[name]} must be at least 1.")
    if v["cw_confidence"] < 0:
        raise EvaluationError(f"--cw_confidence={v['cw_confidence']:g} must be >= 0.")
    epsilon = _pixels("epsilon", v["epsilon"])
    pgd_step = _pixels("pgd_step_size", v["pgd_step_size"], radius=False)
    cw_step = _pixels("cw_step_size", v["cw_step_size"], radius=False)
    aa_attacks = tuple(a.strip() for a in v["autoattack_attacks"].split(",") if a.strip())
    aa_options = dict(attacks=aa_attacks, apgd_n_iter=v["autoattack_apgd_iters"],
                      fab_n_iter=v["autoattack_fab_iters"],
                      square_n_queries=v["autoattack_square_queries"],
                      n_target_classes=v["autoattack_targets"], jit_compile=v["jit_compile"],
                      impl=v["autoattack_impl"])
    attack_lib.autoattack_settings(0.0, seed=0, batch_size=1, options=aa_options)  # validates
    return EvalConfig(
        models=models, checkpoints=ckpts, output=output, attacks=v["attacks"],
        dataset=v["dataset"], data_dir=v["data_dir"], split=v["split"], epsilon=epsilon,
        norm=v["norm"], pgd_step_size=pgd_step, pgd_restarts=v["pgd_restarts"],
        cw_confidence=v["cw_confidence"], cw_step_size=cw_step,
        num_examples=v["num_examples"], batch_size=v["batch_size"], seed=v["seed"],
        resume=v["resume"], jit_compile=v["jit_compile"],
        autoattack_options=tuple(sorted(aa_options.items())), show_progress=v["progress"])


def default_output(model_dir, checkpoint):
    """Where one training run's results go without --output: `model_dir/eval_<ckpt>.json`.

    `python -m dac_tf.export` records this file in the export's metadata.
    """
    return os.path.join(model_dir, f"eval_{checkpoint}.json")


def default_output_of(models, ckpts):
    """The --output default: MODEL_DIR/eval_<checkpoint>.json for one training run (where
    the export looks for it), else results/<model names>.json under the current
    directory (never inside an export, which TF Serving watches)."""
    if len(models) == 1 and tf.io.gfile.exists(checkpoints.config_path(models[0])):
        return default_output(models[0], ckpts[0])
    names = []
    for model, ckpt in zip(models, ckpts):
        name = os.path.basename(os.path.normpath(model)) or "model"
        if tf.io.gfile.exists(checkpoints.config_path(model)):
            name += f"_{ckpt}"
        names.append(re.sub(r"[^A-Za-z0-9._-]+", "_", name))
    return os.path.join("results", "-".join(dict.fromkeys(names)) + ".json")


def _prepare_output(output):
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
            "the default eval_<checkpoint>.json).") from None
    prefix = os.path.basename(output) + fileio.TMP_MARKER
    for name in tf.io.gfile.listdir(folder):
        if name.startswith(prefix):
            tf.io.gfile.remove(os.path.join(folder, name))


def run(config):
    """Evaluates every --model of `config`, writing the JSON and the table as it goes.

    Args:
      config: an `EvalConfig`.

    Returns:
      (records, table markdown).
    """
    for path in config.models:
        loading.resolve_model_path(path)   # a missing model fails before anything is written
    _prepare_output(config.output)
    previous_records = []
    if config.resume and tf.io.gfile.exists(config.output):
        previous_records = results.read_results(config.output)
    elif config.resume:
        logging.info("--resume: %s does not exist yet; starting from scratch.", config.output)
    done = []
    for path, ckpt in zip(config.models, config.checkpoints):
        record = runner.evaluate_path(
            path, ckpt, attacks=config.attacks, dataset=config.dataset,
            data_dir=config.data_dir, split=config.split, num_examples=config.num_examples,
            epsilon=config.epsilon, norm=config.norm, previous_records=previous_records,
            on_update=lambda r: results.write_results(config.output, done + [r]),
            batch_size=config.batch_size, seed=config.seed,
            pgd_step_size=config.pgd_step_size, pgd_restarts=config.pgd_restarts,
            cw_confidence=config.cw_confidence, cw_step_size=config.cw_step_size,
            autoattack_options=dict(config.autoattack_options),
            jit_compile=config.jit_compile, show_progress=config.show_progress)
        done.append(record)
        results.write_results(config.output, done)
    text = table.markdown_table(done)
    fileio.write_atomic(table.table_path(config.output), text)
    return done, text


def _interrupted_hint(flag_values):
    return (f"the finished attacks (and AutoAttack's progress) are in "
            f"{flag_values['output'].value or 'the output JSON'}; rerun the same command "
            "with --resume to continue.")


@cli.program(config_from_flags, _interrupted_hint)
def main(config):
    """`python -m dac_tf.evaluate`: reads the flags once, evaluates, prints the table."""
    _, text = run(config)
    print(text, end="")
    print(f"Results: {config.output} (table: {table.table_path(config.output)})")


if __name__ == "__main__":
    cli.run(main, define_flags)
