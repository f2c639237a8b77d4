r"""Robustness evaluation: the paper's table for any model.

    python -m dac_tf.evaluate --model=runs/at_dac --checkpoint=best \
        --attacks=clean,pgd20,pgd100,cw,autoattack --output=results/at_dac.json

Evaluates a training run (`--model=MODEL_DIR`, the `best` or `last` checkpoint) or an
exported SavedModel (`--model=EXPORT_DIR`, or an export base directory holding numbered
versions: the highest is taken) on the first `--num_examples` examples of a split, with
BatchNorm in inference mode, the true labels and inputs in [0, 1]:

- `clean`; `fgsm`; `pgdK` (L-inf, or `--norm=l2`; step `--pgd_step_size`, default eps/4
  = 2/255 at 8/255 as the robust-overfitting / DAC reference code; uniform random start;
  `--pgd_restarts` with the per-example worst case); `cw` (CW-inf: PGD on the
  Carlini-Wagner loss, confidence 50, 30 steps of eps/4, the CAT/FAT/GAIRAT setting;
  `cwK` for K steps). These run through CleverHans (`dac_tf.eval_attacks` says how, and
  what CleverHans does and does not do on Keras 3).
- `autoattack`: the standard version (APGD-CE, APGD-T, FAB-T, Square) of the native
  TensorFlow implementation in `dac_tf.autoattack`, or with `--autoattack_impl=official`
  the PyTorch package fra31/auto-attack (`--autoattack_impl=pyautoattack`: its PyPI
  repackaging `pyautoattack`) run on the TF model through `dac_tf.torch_bridge` (needs
  torch and that package installed; not resumable). A subset
  (`--autoattack_attacks`) or reduced budgets are never silent: the column then reads
  e.g. "AA(apgd-ce,apgd-t)" or "AutoAttack*".

The accuracy under each attack is the fraction of examples whose attacked input is
classified correctly (AutoAttack's, as the official code counts it: correct clean and
not broken); `worst_case_accuracy` counts an example only if it is correct clean and
survives every attack run. `--model` may be repeated (one table row each, e.g. AT vs
AT+DAC); `--checkpoint=last,best` gives one checkpoint per `--model`, so
`--model=R --model=R --checkpoint=last,best` gives the paper's `last (best)` pair.
Batches are padded to full size and the padding is masked out of every count.

Output (`--output=results.json`; for a single training run the default is
`MODEL_DIR/eval_<checkpoint>.json`, which `python -m dac_tf.export` records in the
export's metadata): with one `--model`, the JSON is that model's record;
with several, `{"format", "models": [record, ...], "table"}`. A record holds `model`,
`dataset`, `split`, `epsilon` ([0, 1]) and `epsilon_255`, `epsilon_source` ("flag",
"benchmark": 8/255 on CIFAR-10/100 and SVHN, "training": the run's own radius on other
data, `dac_tf.protocol.evaluation_epsilon`), `training_epsilon`, `norm`, `num_examples`,
`accuracy` (attack name as given -> robust accuracy in [0, 1]), `clean_accuracy`,
`worst_case_accuracy`, `robust_flags` (per example, "1" = robust: one string per attack,
plus `__clean__` and `__worst_case__`), `seconds`, `attack_settings`,
`autoattack_components` and `autoattack`,
`adversarial_certainty` (the paper's diagnostic: mean over examples of the unbiased std of
the logits on the first PGD attack's adversarial examples), `sanity_checks` and
`complete`. The markdown table (percentages, two decimals; one row per model) is printed
to stdout and written next to the JSON as `.md`. The JSON is rewritten after every attack
and every AutoAttack batch; `--resume` reuses the finished attacks of an existing output
(if their settings and the clean predictions are unchanged) and continues an interrupted
AutoAttack from its saved state.

Units: `--epsilon`, `--pgd_step_size` and `--cw_step_size` are in pixel units out of
255, as the field writes them (`--epsilon=8` is 8/255), never guessed from the magnitude;
the library functions take [0, 1] units. The default radius is the paper's protocol
(`dac_tf.protocol`): 8/255 on CIFAR-10, CIFAR-100 and SVHN whatever the run trained with
(TRADES and MART train at 0.031 but are evaluated at 8/255), the run's own elsewhere.
"""

import dataclasses
import hashlib
import os
import re
import time

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import cli
from dac_tf import data
from dac_tf import errors
from dac_tf import eval_attacks
from dac_tf import export
from dac_tf import fileio
from dac_tf import protocol
from dac_tf import torch_bridge

FORMAT = "dac_tf.evaluate/1"
SPLITS = ("test", "train")
# The batch size of the DAC reference's AutoAttack script (eval_autoattack.py, bs=200).
DEFAULT_BATCH_SIZE = 200
DEFAULT_ATTACKS = "clean,pgd20,pgd100,cw,autoattack"
AUTOATTACK_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
AUTOATTACK_BUDGETS = dict(apgd_n_iter=100, fab_n_iter=100, square_n_queries=5000,
                          n_target_classes=9)
_WHITE_BOX_AA = ("apgd-ce", "apgd-t", "fab-t")
AUTOATTACK_IMPLS = ("native", "official", "pyautoattack")
# --autoattack_impl -> the PyTorch package torch_bridge runs
_TORCH_PACKAGES = {"official": "autoattack", "pyautoattack": "pyautoattack"}


class EvaluationError(errors.UserError):
    """A model, data set or setting that cannot be evaluated (the message says why)."""


# ------------------------------------------------------------------------ loading
def resolve_model_path(path):
    """What `--model=PATH` points at.

    Args:
      path: a training run (has config.json), a SavedModel (has saved_model.pb) or an
        export base directory whose numbered subdirectories are SavedModels.

    Returns:
      (kind, path): kind "model_dir" or "saved_model"; for an export base, the path of
      its highest version.

    Raises:
      EvaluationError: none of these.
    """
    if not path or not os.path.isdir(path):
        raise EvaluationError(f"--model={path!r}: no such directory.")
    if os.path.isfile(checkpoints.config_path(path)):
        return "model_dir", path
    if os.path.isfile(os.path.join(path, export.SAVED_MODEL_FILE)):
        return "saved_model", path
    # The export's own notion of a version (TF Serving's: "01" is version 1).
    versions = {v: d for v, d in export.list_versions(path).items()
                if os.path.isfile(os.path.join(path, d, export.SAVED_MODEL_FILE))}
    if versions:
        return "saved_model", os.path.join(path, versions[max(versions)])
    raise EvaluationError(
        f"--model={path!r} is neither a training run ({checkpoints.CONFIG_FILE}) nor a "
        f"SavedModel ({export.SAVED_MODEL_FILE}, or numbered versions holding one).")


class _SavedModelLogits:
    """Calls a SavedModel's serving signature; holds the loaded object (its variables)."""

    def __init__(self, loaded, signature_key="serving_default"):
        if signature_key not in loaded.signatures:
            raise EvaluationError(f"the SavedModel has no {signature_key!r} signature "
                                  f"(has {', '.join(loaded.signatures) or 'none'}).")
        self.loaded = loaded
        self.signature = loaded.signatures[signature_key]
        inputs = self.signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise EvaluationError(f"the {signature_key!r} signature takes {sorted(inputs)}; "
                                  "expected one image input")
        self.input_name = next(iter(inputs))
        self.input_spec = inputs[self.input_name]
        outputs = self.signature.structured_outputs
        if "logits" in outputs:
            self.output_name = "logits"
        elif len(outputs) == 1:
            self.output_name = next(iter(outputs))
        else:
            raise EvaluationError(f"the {signature_key!r} signature returns "
                                  f"{sorted(outputs)} and no 'logits'.")

    def __call__(self, x):
        return self.signature(**{self.input_name: x})[self.output_name]


def _read_json(path):
    return fileio.read_json(path, EvaluationError, "JSON file")


def _label(path, kind, checkpoint):
    name = os.path.basename(os.path.normpath(path))
    if kind == "saved_model" and name.isdigit():
        name = f"{os.path.basename(os.path.dirname(os.path.normpath(path)))}/{name}"
    return f"{name} ({checkpoint})" if kind == "model_dir" else name


def load_logits_fn(path, checkpoint="best"):
    """Loads a model as a function from [0, 1] images to logits (inference mode).

    Args:
      path: see `resolve_model_path`.
      checkpoint: "best" or "last" (training runs only).

    Returns:
      (logits_fn, metadata): `logits_fn(images float32 [B, H, W, C]) -> logits [B, K]`,
      differentiable w.r.t. the images; metadata a dict with `kind`, `path`, `label`,
      `checkpoint` and, where the run config / export metadata give them, `dataset`,
      `epsilon` ([0, 1] units), `norm`, `input_shape`, `num_classes`, `arch`.

    Raises:
      EvaluationError, checkpoints.CheckpointError: the model cannot be loaded.
    """
    kind, resolved = resolve_model_path(path)
    meta = dict(kind=kind, path=os.path.abspath(resolved), checkpoint=None)
    if kind == "model_dir":
        model, config = checkpoints.load_model(resolved, checkpoint)
        fn = _keras_logits_fn(model)
        meta.update(checkpoint=checkpoint,
                    checkpoint_path=checkpoints.checkpoint_path(resolved, checkpoint),
                    **{k: config.get(k) for k in ("dataset", "epsilon", "norm", "input_shape",
                                                  "num_classes", "arch", "method", "use_dac")})
    else:
        try:
            loaded = tf.saved_model.load(resolved)
        except (OSError, ValueError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EvaluationError(f"cannot load the SavedModel {resolved!r}: {first}") from None
        fn = _SavedModelLogits(loaded)
        metadata_path = os.path.join(resolved, export.METADATA_FILE)
        extra = _read_json(metadata_path) if os.path.isfile(metadata_path) else {}
        meta.update({k: extra.get(k) for k in ("dataset", "epsilon", "norm", "input_shape",
                                                "num_classes", "arch", "method", "use_dac")})
        if meta["input_shape"] is None and fn.input_spec.shape.rank == 4:
            dims = fn.input_spec.shape.as_list()[1:]
            meta["input_shape"] = dims if None not in dims else None
    meta["label"] = _label(resolved, kind, checkpoint)
    return fn, meta


def _keras_logits_fn(model):
    def logits_fn(x):
        return model(x, training=False)
    logits_fn.model = model   # keeps the model alive with the function
    return logits_fn


# --------------------------------------------------------------------- evaluation
def _flags_str(flags_):
    return "".join("1" if f else "0" for f in np.asarray(flags_, bool))


def _str_flags(s):
    return np.frombuffer(s.encode("ascii"), np.uint8) == ord("1")


def autoattack_settings(epsilon, *, seed, batch_size, options=None):
    """The settings of one AutoAttack run (what must match for its result to be reused).

    Args:
      epsilon: L-inf budget in [0, 1] units.
      seed: integer seed.
      batch_size: examples per attack batch.
      options: overrides: `impl` ("native": `dac_tf.autoattack`; "official" or
        "pyautoattack": that PyTorch package through `dac_tf.torch_bridge`), `attacks`
        (components, in
        order) and the budgets
        `apgd_n_iter`, `fab_n_iter`, `square_n_queries`, `n_target_classes`
        (for tests and smoke runs; anything non-default marks the result non-standard).

    Returns:
      A JSON-serialisable dict.
    """
    options = dict(options or {})
    unknown = set(options) - {"attacks", "jit_compile", "impl", *AUTOATTACK_BUDGETS}
    if unknown:
        raise EvaluationError(f"unknown AutoAttack options {sorted(unknown)}.")
    components = tuple(options.pop("attacks", AUTOATTACK_STANDARD))
    bad = [c for c in components if c not in AUTOATTACK_STANDARD]
    if bad or not components or len(set(components)) != len(components):
        raise EvaluationError(f"--autoattack_attacks={','.join(components)} must be distinct "
                              f"names among {', '.join(AUTOATTACK_STANDARD)}.")
    options.pop("jit_compile", None)
    impl = options.pop("impl", "native")
    if impl not in AUTOATTACK_IMPLS:
        raise EvaluationError(f"--autoattack_impl={impl!r} is not valid; use one of "
                              f"{', '.join(AUTOATTACK_IMPLS)}.")
    budgets = {k: int(options.get(k, v)) for k, v in AUTOATTACK_BUDGETS.items()}
    return dict(kind="autoattack", impl=impl, norm="linf", epsilon=float(epsilon),
                seed=int(seed), batch_size=int(batch_size), attacks=list(components), **budgets)


def autoattack_label(components, settings):
    """The table header of an AutoAttack column; never "AutoAttack" for a subset."""
    if tuple(components) != AUTOATTACK_STANDARD:
        return f"AA({','.join(components)})"
    if any(settings[k] != v for k, v in AUTOATTACK_BUDGETS.items()):
        return "AutoAttack*"
    return "AutoAttack"


def _versions():
    import keras  # noqa: PLC0415 (only for the version string)
    try:
        import cleverhans  # noqa: PLC0415
        ch = getattr(cleverhans, "__version__", None)
    except ImportError:
        ch = None
    if ch is None:
        try:
            from importlib import metadata  # noqa: PLC0415
            ch = metadata.version("cleverhans")
        except Exception:  # pylint: disable=broad-except
            ch = "unknown"
    return dict(tensorflow=tf.__version__, keras=keras.__version__, cleverhans=ch)


def _pre_checks(logits_fn, x, y, norm):
    checks = [eval_attacks.check_logits(logits_fn(tf.constant(x))),
              eval_attacks.check_deterministic(logits_fn, x),
              eval_attacks.check_gradients(logits_fn, x, y),
              eval_attacks.check_eps_zero(logits_fn, x, y, norm=norm)]
    return checks


def _reusable(previous, name, settings, clean_flags):
    """The stored result of `name` if it was made with `settings` on the same predictions."""
    if not previous:
        return None
    if previous.get("robust_flags", {}).get("__clean__") != clean_flags:
        return None
    if previous.get("attack_settings", {}).get(name) != settings:
        return None
    if name not in previous.get("robust_flags", {}):
        return None
    return previous


def evaluate_model(logits_fn, x, y, *, attacks, epsilon, batch_size=DEFAULT_BATCH_SIZE,
                   seed=0, norm="linf", pgd_step_size=None, pgd_restarts=1,
                   cw_confidence=eval_attacks.DEFAULT_CW_CONFIDENCE, cw_step_size=None,
                   autoattack_options=None, jit_compile=False, info=None, previous=None,
                   on_update=None, show_progress=True, sanity_checks=True):
    """Evaluates one model under a list of attacks; the library form of the CLI.

    Args:
      logits_fn: float32 images [B, H, W, C] in [0, 1] -> logits, BatchNorm in inference
        mode (`load_logits_fn`, or `lambda x: model(x, training=False)`). Reuse the same
        object across calls to reuse its traced graphs.
      x: images [N, H, W, C], float in [0, 1] or uint8 (value / 255).
      y: int labels [N].
      attacks: comma-separated string or sequence of names: clean, fgsm, pgdK, cw, cwK,
        autoattack (`eval_attacks.parse_attacks`).
      epsilon: radius in [0, 1] units (8/255 for the paper's CIFAR-10 numbers).
      batch_size: examples per batch; the last batch is padded and masked.
      seed: integer seed of every random start. A batch's noise depends only on the
        seed, the attack family (pgd, cw) and the batch index, so it changes with
        `batch_size`, and PGD-100 starts where PGD-20 starts.
      norm: "linf" or "l2" (AutoAttack: linf only).
      pgd_step_size: PGD step in [0, 1] units; None: epsilon / 4.
      pgd_restarts: random restarts of PGD and CW (per-example worst case).
      cw_confidence: kappa of the CW-inf loss.
      cw_step_size: CW-inf step; None: the PGD step.
      autoattack_options: `autoattack_settings` overrides (components, budgets) and
        `jit_compile`.
      jit_compile: compile the CleverHans attacks with XLA.
      info: extra keys stored in the record (model, dataset, split, ...).
      previous: a record of an earlier run on the same model and data (`--resume`):
        attacks with the same settings are reused, a partial AutoAttack continues.
      on_update: called with the record after the clean pass, every attack and every
        AutoAttack batch (to write it to disk).
      show_progress: progress bars on stderr.
      sanity_checks: run the checks on the first batch (cheap) before the attacks.

    Returns:
      The record (a JSON-serialisable dict; see the module docstring).

    Raises:
      eval_attacks.AttackError, EvaluationError: bad attack names or settings.
    """
    specs = eval_attacks.parse_attacks(attacks)
    if not (isinstance(epsilon, (int, float, np.floating)) and 0 <= epsilon <= 1):
        raise EvaluationError(f"epsilon={epsilon!r} must be in [0, 1] (pixel units / 255).")
    if norm not in eval_attacks.NORMS:
        raise EvaluationError(f"--norm={norm!r} is not valid; use one of "
                              f"{', '.join(eval_attacks.NORMS)}.")
    if int(batch_size) < 1:
        raise EvaluationError(f"--batch_size={batch_size} must be at least 1.")
    if any(s.kind == "autoattack" for s in specs) and norm != "linf":
        raise EvaluationError("--attacks=autoattack needs --norm=linf (the native "
                              "AutoAttack implements the L-inf threat model only).")
    x = data.to_float32(x)
    y = np.asarray(y).astype(np.int32)
    if x.ndim != 4 or len(x) != len(y):
        raise EvaluationError(f"expected images [N, H, W, C] and labels [N], got "
                              f"{x.shape} and {y.shape}.")
    n = len(x)
    if n == 0:
        raise EvaluationError("no examples to evaluate.")
    batch_size = int(min(int(batch_size), n))
    common = dict(epsilon=float(epsilon), norm=norm, step_size=pgd_step_size,
                  restarts=int(pgd_restarts), cw_confidence=float(cw_confidence),
                  cw_step_size=cw_step_size, seed=int(seed), batch_size=batch_size)
    settings = {}
    for spec in specs:
        if spec.kind == "autoattack":
            settings[spec.name] = autoattack_settings(epsilon, seed=seed, batch_size=batch_size,
                                                      options=autoattack_options)
        else:
            settings[spec.name] = eval_attacks.attack_settings(spec, **common)
    for impl in {s.get("impl") for s in settings.values()} & set(_TORCH_PACKAGES):
        # fail now, not after hours of other attacks
        torch_bridge.check_available(_TORCH_PACKAGES[impl])

    record = dict(info or {})
    record.update(
        format=FORMAT, epsilon=float(epsilon), epsilon_255=float(epsilon) * 255, norm=norm,
        num_examples=n, attacks=[s.name for s in specs], seed=int(seed),
        batch_size=batch_size, columns={}, accuracy={}, seconds={}, attack_settings={},
        robust_flags={}, attack_checks={}, certainty_by_attack={}, sanity_checks=[],
        autoattack_components=[], autoattack=None, complete=False, versions=_versions())

    def update():
        if on_update is not None:
            on_update(record)

    def progress(title):
        return eval_attacks.Progress(title) if show_progress else None

    # Checks on one batch before any number is computed.
    first = slice(0, batch_size)
    logits0 = np.asarray(logits_fn(tf.constant(x[first])))
    if logits0.ndim != 2 or logits0.shape[0] != batch_size:
        raise EvaluationError(f"the model returned shape {logits0.shape}; expected "
                              f"logits [{batch_size}, num_classes].")
    if int(y.max()) >= logits0.shape[1]:
        raise EvaluationError(f"labels go up to {int(y.max())} but the model has "
                              f"{logits0.shape[1]} outputs (wrong --dataset?).")
    pre_checks = _pre_checks(logits_fn, x[first], y[first], norm) if sanity_checks else []
    for check in pre_checks:
        if not check["passed"]:
            logging.warning("sanity check %s failed: %s", check["name"], check["detail"])

    # The clean pass always runs: it is cheap, the worst case includes it, and its
    # predictions tell whether stored results (--resume) belong to this model and data.
    t0 = time.perf_counter()
    clean_settings = eval_attacks.attack_settings(eval_attacks.AttackSpec("clean", "clean"),
                                                  **common)
    clean = eval_attacks.run_batched(
        eval_attacks.make_batch_fn(logits_fn, clean_settings, jit_compile),
        x, y, batch_size=batch_size, progress=progress("clean"))
    clean_seconds = time.perf_counter() - t0
    clean_flags = _flags_str(clean["correct"])
    record["clean_accuracy"] = float(clean["correct"].mean())
    record["robust_flags"]["__clean__"] = clean_flags
    clean_certainty = float(clean["certainty"].mean())
    if previous and previous.get("robust_flags", {}).get("__clean__") not in (None, clean_flags):
        logging.warning("the stored results were made with other clean predictions (another "
                        "model, checkpoint or data); recomputing every attack.")
    elif previous and previous.get("autoattack_state"):
        # Carried along so that a second interruption (before AutoAttack resumes) keeps it.
        record["autoattack_state"] = previous["autoattack_state"]
        record["autoattack_state_settings"] = previous.get("autoattack_state_settings")

    def store(spec, flags_, seconds, label, check=None, certainty=None):
        record["accuracy"][spec.name] = float(np.mean(flags_))
        record["robust_flags"][spec.name] = _flags_str(flags_)
        record["seconds"][spec.name] = float(seconds)
        record["attack_settings"][spec.name] = settings[spec.name]
        record["columns"][spec.name] = label
        if check is not None:
            record["attack_checks"][spec.name] = check
        if certainty is not None:
            record["certainty_by_attack"][spec.name] = certainty

    for spec in specs:
        name = spec.name
        old = _reusable(previous, name, settings[name], clean_flags)
        if old is not None:
            logging.info("%s: reusing the stored result", name)
            record["accuracy"][name] = old["accuracy"][name]
            record["robust_flags"][name] = old["robust_flags"][name]
            record["seconds"][name] = old["seconds"][name]
            record["attack_settings"][name] = settings[name]
            record["columns"][name] = old.get("columns", {}).get(
                name, eval_attacks.column_label(spec))
            for key in ("attack_checks", "certainty_by_attack"):
                if name in old.get(key, {}):
                    record[key][name] = old[key][name]
            if spec.kind == "autoattack":
                record["autoattack"] = old.get("autoattack")
                record["autoattack_components"] = old.get("autoattack_components")
            update()
            continue
        if spec.kind == "clean":
            store(spec, clean["correct"], clean_seconds, "Clean", certainty=clean_certainty)
        elif spec.kind == "autoattack":
            _run_autoattack(logits_fn, x, y, spec, settings[spec.name], record, previous,
                            autoattack_options, update, show_progress)
        else:
            t0 = time.perf_counter()
            out = eval_attacks.run_batched(
                eval_attacks.make_batch_fn(logits_fn, settings[name], jit_compile), x, y,
                batch_size=batch_size, seed_base=eval_attacks.attack_seed(seed, spec.kind),
                progress=progress(name))
            check = eval_attacks.check_in_ball(name, out, epsilon, norm)
            if not check["passed"]:
                logging.warning("sanity check %s failed: %s", check["name"], check["detail"])
            store(spec, out["correct"], time.perf_counter() - t0,
                  eval_attacks.column_label(spec), check, float(out["certainty"].mean()))
        update()

    _finish(record, specs, clean["correct"], clean_certainty, pre_checks, n)
    update()
    return record


def _run_torch_autoattack(logits_fn, x, y, spec, settings, record):
    t0 = time.perf_counter()
    out = torch_bridge.run_official_autoattack(
        logits_fn, x, y, epsilon=settings["epsilon"], seed=settings["seed"],
        batch_size=settings["batch_size"], attacks=tuple(settings["attacks"]),
        package=_TORCH_PACKAGES[settings["impl"]],
        **{k: settings[k] for k in AUTOATTACK_BUDGETS})
    components = out["components"]
    label = autoattack_label(components, settings)
    record["autoattack_components"] = components
    record["autoattack"] = dict(impl=settings["impl"], package=out["package"],
                                package_version=out["package_version"],
                                standard=label == "AutoAttack",
                                components=components, max_linf=out["max_linf"],
                                config={k: settings[k] for k in AUTOATTACK_BUDGETS})
    record["accuracy"][spec.name] = float(np.mean(out["robust_flags"]))
    record["robust_flags"][spec.name] = _flags_str(out["robust_flags"])
    record["seconds"][spec.name] = time.perf_counter() - t0
    record["attack_settings"][spec.name] = settings
    record["columns"][spec.name] = label


def _run_autoattack(logits_fn, x, y, spec, settings, record, previous, options, update,
                    show_progress):
    if settings["impl"] in _TORCH_PACKAGES:
        _run_torch_autoattack(logits_fn, x, y, spec, settings, record)
        return
    from dac_tf.autoattack import run_standard_autoattack  # noqa: PLC0415 (heavy import)

    name = spec.name
    state = None
    same_predictions = (previous or {}).get("robust_flags", {}).get("__clean__") == \
        record["robust_flags"]["__clean__"]
    if previous and previous.get("autoattack_state") and same_predictions and \
            previous.get("autoattack_state_settings") == settings:
        state = previous["autoattack_state"]
        logging.info("autoattack: resuming after %s", ", ".join(state.get("completed", []))
                     or "the clean pass")
    bars = {}

    def on_state(s):
        record["autoattack_state"] = s
        record["autoattack_state_settings"] = settings
        current = s.get("current")
        if show_progress and current:
            attack = current["attack"]
            done_attacks = s.get("completed", [])
            prev = done_attacks[-1] if done_attacks else "clean"
            todo = int(_str_flags(s["flags"][prev]).sum())
            total = -(-todo // settings["batch_size"])
            if attack not in bars:
                bars[attack] = eval_attacks.Progress(f"{name}:{attack}")
            bars[attack](current["batches_done"], total, current.get("seconds"))
        update()

    result = run_standard_autoattack(
        logits_fn, x, y, epsilon=settings["epsilon"], seed=settings["seed"],
        batch_size=settings["batch_size"], attacks=tuple(settings["attacks"]), state=state,
        progress=on_state, apgd_n_iter=settings["apgd_n_iter"],
        fab_n_iter=settings["fab_n_iter"], square_n_queries=settings["square_n_queries"],
        n_target_classes=settings["n_target_classes"],
        jit_compile=bool((options or {}).get("jit_compile", False)))
    components = list(result.components)
    label = autoattack_label(components, settings)
    record["autoattack_components"] = components
    record["autoattack"] = dict(
        impl="native", standard=bool(result.is_standard), components=components,
        accuracy_by_component={k: float(v) for k, v in result.accuracy.items()},
        n_attacked={k: int(v) for k, v in result.n_attacked.items()},
        seconds_by_component={k: float(v) for k, v in result.seconds.items()},
        flags_by_component={k: _flags_str(v) for k, v in result.flags.items()},
        config=dict(result.config))
    record["accuracy"][name] = float(result.robust_accuracy)
    record["robust_flags"][name] = _flags_str(result.robust_flags)
    record["seconds"][name] = float(sum(result.seconds.values()))
    record["attack_settings"][name] = settings
    record["columns"][name] = label
    record.pop("autoattack_state", None)
    record.pop("autoattack_state_settings", None)
    if not result.is_standard:
        logging.warning("AutoAttack was not the standard version (components %s, settings "
                        "%s); the table column reads %r.", components, settings, label)


def _finish(record, specs, clean_correct, clean_certainty, pre_checks, n):
    """Worst case, adversarial certainty and the checks that compare attacks."""
    if not any(s.kind == "autoattack" for s in specs):
        record.pop("autoattack_state", None)   # carried from a run that had it
        record.pop("autoattack_state_settings", None)
    flags_ = {s.name: _str_flags(record["robust_flags"][s.name]) for s in specs}
    worst = np.asarray(clean_correct, bool).copy()
    for f in flags_.values():
        worst &= f
    record["worst_case_accuracy"] = float(worst.mean())
    record["robust_flags"]["__worst_case__"] = _flags_str(worst)

    pgd_names = [s.name for s in specs if s.kind == "pgd"]
    ac_attack = pgd_names[0] if pgd_names else None
    record["adversarial_certainty"] = dict(
        measure="std", attack=ac_attack,
        value=record["certainty_by_attack"].get(ac_attack) if ac_attack else None,
        clean=clean_certainty, by_attack=dict(record["certainty_by_attack"]))
    if ac_attack is None:
        record["adversarial_certainty"]["note"] = (
            "no pgdK attack was run, so there are no PGD adversarial examples to measure")

    comparisons = eval_attacks.check_monotone(
        [s for s in specs if s.kind in ("fgsm", "pgd")], record["accuracy"], n)
    aa = next((s for s in specs if s.kind == "autoattack"), None)
    aa_record = record.get("autoattack") or {}
    if aa is not None and "square" in aa_record.get("components", []) and \
            "flags_by_component" in aa_record:
        by_comp = {k: _str_flags(v) for k, v in record["autoattack"]["flags_by_component"].items()}
        white = np.asarray(clean_correct, bool).copy()
        for s in specs:
            if s.kind in ("fgsm", "pgd", "cw"):
                white &= flags_[s.name]
        ran_white = [c for c in record["autoattack"]["components"] if c in _WHITE_BOX_AA]
        if ran_white:
            white &= by_comp[ran_white[-1]]
        comparisons.append(eval_attacks.check_black_box(white, by_comp["square"], n))
    for check in comparisons:
        if check["passed"] is False:
            logging.warning("sanity check %s failed: %s", check["name"], check["detail"])
    record["sanity_checks"] = (
        list(pre_checks)
        + [record["attack_checks"][s.name] for s in specs if s.name in record["attack_checks"]]
        + comparisons)
    record["complete"] = True


# ----------------------------------------------------------------------- reporting
def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def _eps_text(record):
    norm = "L-inf" if record["norm"] == "linf" else "L2"
    return f"{norm} eps = {protocol.pixels_text(record['epsilon'])}"


def markdown_table(records):
    """The paper's table: one row per model, robust accuracy in % with two decimals.

    Args:
      records: results of `evaluate_model` (with `model_label`, `dataset`, `split`).

    Returns:
      Markdown text: a caption line, the table, then notes (non-standard AutoAttack,
      adversarial certainty, failed sanity checks).
    """
    names = []
    for r in records:
        for a in r.get("attacks", []):
            if a not in names:
                names.append(a)

    def setting(r):
        return (r.get("dataset"), r.get("split"), r.get("num_examples"), _eps_text(r))

    same = len({setting(r) for r in records}) == 1
    labels = {}
    for a in names:
        labels[a] = next((r["columns"][a] for r in records if a in r.get("columns", {})),
                         eval_attacks.column_label(eval_attacks.parse_attacks(a)[0]))
    header = ["Model"] + ([] if same else ["Data", "eps"]) + [labels[a] for a in names]
    header.append("Worst case")
    lines = []
    if records and same:
        r = records[0]
        data_text = " ".join(str(r[k]) for k in ("dataset", "split") if r.get(k))
        lines.append(f"Robust accuracy (%): {data_text + ', ' if data_text else ''}"
                     f"{r['num_examples']} examples, {_eps_text(r)}.")
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in records:
        row = [r.get("model_label", r.get("model", "model"))]
        if not same:
            row += [f"{r.get('dataset')} {r.get('split')} ({r['num_examples']})", _eps_text(r)]
        row += [_pct(r.get("accuracy", {}).get(a)) for a in names]
        row.append(_pct(r.get("worst_case_accuracy")))
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for r in records:
        label = r.get("model_label", r.get("model", "model"))
        aa = r.get("autoattack")
        if aa and not aa.get("standard"):
            cfg = {k: r["attack_settings"][n][k] for n in r["attack_settings"]
                   if r["attack_settings"][n].get("kind") == "autoattack"
                   for k in AUTOATTACK_BUDGETS}
            notes.append(f"{label}: AutoAttack not the standard version: components "
                         f"{','.join(aa['components'])}, budgets {cfg}.")
        ac = r.get("adversarial_certainty") or {}
        if ac.get("value") is not None:
            notes.append(f"{label}: adversarial certainty (std of the logits) on "
                         f"{ac['attack']} examples {ac['value']:.4f} (clean {ac['clean']:.4f}).")
        failed = [c for c in r.get("sanity_checks", []) if c.get("passed") is False]
        for c in failed:
            notes.append(f"{label}: WARNING sanity check {c['name']} failed: {c['detail']}.")
        if not r.get("complete", False):
            notes.append(f"{label}: incomplete (interrupted; rerun with --resume).")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def results_document(records):
    """The JSON written to --output: the record itself for one model, else a list."""
    if len(records) == 1:
        return records[0]
    return dict(format=FORMAT, models=records, table=markdown_table(records))


# Keys --resume reads from a stored record, and their types.
_RECORD_TYPES = dict(robust_flags=dict, attack_settings=dict, accuracy=dict, seconds=dict,
                     columns=dict)


def read_results(path):
    """The records of an --output file, one model or several, as a list.

    Raises:
      EvaluationError: not a result file, or one whose records were damaged or edited
        so that --resume cannot trust them.
    """
    doc = _read_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("models"), list):
        records = doc["models"]
    elif isinstance(doc, dict) and doc.get("format") == FORMAT:
        records = [doc]
    else:
        raise EvaluationError(f"{path} is not a dac_tf.evaluate result file.")
    for i, record in enumerate(records):
        bad = [k for k, t in _RECORD_TYPES.items()
               if not isinstance(record, dict) or not isinstance(record.get(k, t()), t)]
        if not bad and not all(isinstance(v, str) and set(v) <= {"0", "1"}
                               for v in record.get("robust_flags", {}).values()):
            bad = ["robust_flags"]
        if bad:
            raise EvaluationError(
                f"{path}: record {i + 1} has an invalid {', '.join(bad)} (edited or "
                "damaged); --resume cannot reuse it. Delete the file or pass another "
                "--output to evaluate afresh.")
    return records


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


def table_path(output):
    return os.path.splitext(output)[0] + ".md"


# ----------------------------------------------------------------------------- CLI
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
    cw_confidence: float = eval_attacks.DEFAULT_CW_CONFIDENCE
    cw_step_size: float = None
    num_examples: int = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    resume: bool = False
    jit_compile: bool = False
    autoattack_options: tuple = ()
    show_progress: bool = True


def define_flags(flag_values=flags.FLAGS):
    """Defines the evaluation flags on `flag_values` (idempotent).

    Called only when this module is the program (`python -m dac_tf.evaluate`): the
    training CLI owns flags with the same names (--dataset, --epsilon, ...), and absl
    refuses a flag defined twice in one process.
    """
    if "attacks" in flag_values:
        return
    f = dict(flag_values=flag_values)
    flags.DEFINE_multi_string("model", None, "A training run directory (config.json), a "
                              "SavedModel directory or an export base directory (highest "
                              "numbered version). Repeat for one table row per model.", **f)
    flags.DEFINE_string("checkpoint", "best", "best or last (training runs), or a comma "
                        "list with one entry per --model.", **f)
    flags.DEFINE_string("dataset", None, "Default: the model's own dataset (config.json / "
                        "export metadata). One of cifar10, cifar100, svhn, digits, npz:PATH.",
                        **f)
    flags.DEFINE_string("data_dir", None, "tfds data directory.", **f)
    flags.DEFINE_string("split", "test", f"One of {', '.join(SPLITS)}.", **f)
    flags.DEFINE_string("attacks", DEFAULT_ATTACKS, "Comma list of "
                        f"{eval_attacks.VALID_ATTACKS_TEXT}.", **f)
    flags.DEFINE_float("epsilon", None, "Radius in pixel units /255 (8 = 8/255). Default: "
                       "8 on cifar10, cifar100 and svhn under L-inf (the paper's and "
                       "RobustBench's radius, whatever the run trained with); the run's "
                       "training radius on digits, npz and under L2.", **f)
    flags.DEFINE_string("norm", None, "linf or l2 (default: the model's, else linf).", **f)
    flags.DEFINE_float("pgd_step_size", None, "PGD step, pixel units /255. Default "
                       "epsilon/4 (2 at epsilon 8: robust-overfitting / DAC reference).", **f)
    flags.DEFINE_integer("pgd_restarts", 1, "Random restarts of PGD and CW-inf "
                         "(per-example worst case).", **f)
    flags.DEFINE_float("cw_confidence", eval_attacks.DEFAULT_CW_CONFIDENCE,
                       "Confidence kappa of the CW-inf loss (CAT/FAT/GAIRAT: 50).", **f)
    flags.DEFINE_float("cw_step_size", None, "CW-inf step, pixel units /255 (default: the "
                       "PGD step).", **f)
    flags.DEFINE_integer("num_examples", None, "Evaluate the first N examples (default: "
                         "all).", **f)
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Examples per batch.", **f)
    flags.DEFINE_integer("seed", 0, "Seed of the random starts.", **f)
    flags.DEFINE_string("output", None, "Results JSON (the markdown table goes next to it "
                        "as .md). Default for one training run: MODEL_DIR/eval_<checkpoint>"
                        ".json (picked up by python -m dac_tf.export); otherwise "
                        "results/<model names>.json in the current directory.", **f)
    flags.DEFINE_boolean("resume", False, "Reuse finished attacks of an existing --output "
                         "and continue an interrupted AutoAttack.", **f)
    flags.DEFINE_boolean("jit_compile", False, "Compile the attacks with XLA.", **f)
    flags.DEFINE_string("autoattack_impl", "native", "native: dac_tf.autoattack "
                        "(TensorFlow, resumable); official: the PyTorch fra31/auto-attack "
                        "package through dac_tf.torch_bridge (needs torch and autoattack); "
                        "pyautoattack: its PyPI repackaging (needs torch and pyautoattack).",
                        **f)
    flags.DEFINE_string("autoattack_attacks", ",".join(AUTOATTACK_STANDARD),
                        "AutoAttack components (a subset is reported as AA(...)).", **f)
    flags.DEFINE_integer("autoattack_apgd_iters", 100, "APGD iterations (standard: 100).",
                         **f)
    flags.DEFINE_integer("autoattack_fab_iters", 100, "FAB-T iterations (standard: 100).",
                         **f)
    flags.DEFINE_integer("autoattack_square_queries", 5000, "Square queries (standard: "
                         "5000).", **f)
    flags.DEFINE_integer("autoattack_targets", 9, "Target classes of APGD-T and FAB-T "
                         "(standard: 9).", **f)
    flags.DEFINE_boolean("progress", True, "Progress bars on stderr.", **f)


def _pixels(name, value, radius=True):
    try:
        return protocol.from_pixels(name, value, radius=radius)
    except protocol.UnitError as e:
        raise EvaluationError(str(e)) from None


def config_from_flags(flag_values):
    """Reads and validates the flags into an `EvalConfig` (one-line EvaluationErrors)."""
    v = {name: flag_values[name].value for name in flag_values if name in _FLAG_NAMES}
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
    if v["norm"] is not None and v["norm"] not in eval_attacks.NORMS:
        raise EvaluationError(f"--norm={v['norm']!r} is not valid; use one of "
                              f"{', '.join(eval_attacks.NORMS)}.")
    eval_attacks.parse_attacks(v["attacks"])   # fail before any model is loaded
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
    autoattack_settings(0.0, seed=0, batch_size=1, options=aa_options)  # validates
    return EvalConfig(
        models=models, checkpoints=ckpts, output=output, attacks=v["attacks"],
        dataset=v["dataset"], data_dir=v["data_dir"], split=v["split"], epsilon=epsilon,
        norm=v["norm"], pgd_step_size=pgd_step, pgd_restarts=v["pgd_restarts"],
        cw_confidence=v["cw_confidence"], cw_step_size=cw_step,
        num_examples=v["num_examples"], batch_size=v["batch_size"], seed=v["seed"],
        resume=v["resume"], jit_compile=v["jit_compile"],
        autoattack_options=tuple(sorted(aa_options.items())), show_progress=v["progress"])


_FLAG_NAMES = (
    "model", "checkpoint", "dataset", "data_dir", "split", "attacks", "epsilon", "norm",
    "pgd_step_size", "pgd_restarts", "cw_confidence", "cw_step_size", "num_examples",
    "batch_size", "seed", "output", "resume", "jit_compile", "autoattack_impl",
    "autoattack_attacks",
    "autoattack_apgd_iters", "autoattack_fab_iters", "autoattack_square_queries",
    "autoattack_targets", "progress")


def load_split(dataset, split, *, data_dir=None, num_examples=None):
    """The first `num_examples` images (float32 [0, 1]) and labels of a split."""
    splits = data.load(dataset, data_dir=data_dir, val_size=0)
    x, y = (splits.x_test, splits.y_test) if split == "test" else (splits.x_train,
                                                                  splits.y_train)
    if num_examples is not None:
        if num_examples > len(x):
            raise EvaluationError(f"--num_examples={num_examples} exceeds the {len(x)} "
                                  f"examples of {dataset} {split}.")
        x, y = x[:num_examples], y[:num_examples]
    return data.to_float32(x), np.asarray(y, np.int32), splits


def _fingerprint_files(paths):
    """sha256 over the bytes of `paths` (what identifies a model's weights)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode())
        with tf.io.gfile.GFile(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_fingerprint(meta):
    """A fingerprint of the weights `load_logits_fn` loaded (see its metadata).

    For a run, the checkpoint's `.index` file (it holds a checksum of every tensor) and
    its name; for a SavedModel, `saved_model.pb` and the variables index. A `last`
    checkpoint that moved on (ckpt-2 -> ckpt-3) or a re-export gets a new fingerprint.
    """
    if meta["kind"] == "model_dir":
        return _fingerprint_files([meta["checkpoint_path"] + ".index"])
    files = [os.path.join(meta["path"], export.SAVED_MODEL_FILE)]
    index = os.path.join(meta["path"], "variables", "variables.index")
    if tf.io.gfile.exists(index):
        files.append(index)
    return _fingerprint_files(files)


def data_fingerprint(x, y):
    """sha256 of the evaluated examples (float32 images and int32 labels)."""
    digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int32).tobytes())
    return digest.hexdigest()


# What must be equal for a stored result to be reused by --resume; the attack settings
# are compared per attack by `evaluate_model`.
_RESUME_KEYS = ("model_path", "checkpoint", "model_fingerprint", "dataset", "split",
                "num_examples", "data_fingerprint")


def _matching_previous(previous_records, info):
    """The stored record of the same weights on the same examples, or None.

    A record of the same --model whose weights or examples changed since is reported
    and recomputed, never reused.
    """
    for r in previous_records:
        if all(r.get(k) == info.get(k) for k in _RESUME_KEYS):
            return r
    for r in previous_records:
        if r.get("model_path") == info.get("model_path") and r.get(
                "checkpoint") == info.get("checkpoint"):
            changed = [k for k in _RESUME_KEYS if r.get(k) != info.get(k)]
            logging.warning(
                "--resume: the stored results of %s were made with another %s (stored %s, "
                "now %s); recomputing every attack.", info.get("model_label"),
                " and ".join(k.replace("_", " ") for k in changed),
                r.get("checkpoint_path") or "?", info.get("checkpoint_path") or "?")
    return None


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
        resolve_model_path(path)   # a missing model fails before anything is written
    _prepare_output(config.output)
    previous_records = []
    if config.resume and tf.io.gfile.exists(config.output):
        previous_records = read_results(config.output)
    elif config.resume:
        logging.info("--resume: %s does not exist yet; starting from scratch.", config.output)
    done = []

    def write(records):
        fileio.write_json_atomic(config.output, results_document(records))

    for path, ckpt in zip(config.models, config.checkpoints):
        logits_fn, meta = load_logits_fn(path, ckpt)
        dataset = config.dataset or meta.get("dataset")
        if not dataset:
            raise EvaluationError(f"--model={path} does not record its dataset; pass "
                                  "--dataset.")
        x, y, splits = load_split(dataset, config.split, data_dir=config.data_dir,
                                  num_examples=config.num_examples)
        if meta.get("input_shape") and list(meta["input_shape"]) != list(splits.image_shape):
            raise EvaluationError(f"--model={path} takes images {tuple(meta['input_shape'])} "
                                  f"but {dataset} has {splits.image_shape} (wrong --dataset?).")
        norm = config.norm or meta.get("norm") or "linf"
        epsilon, epsilon_source = config.epsilon, "flag"
        if epsilon is None:
            epsilon, epsilon_source = protocol.evaluation_epsilon(dataset, norm,
                                                                  meta.get("epsilon"))
        info = dict(model=path, model_path=meta["path"], model_label=meta["label"],
                    model_kind=meta["kind"], checkpoint=meta["checkpoint"],
                    checkpoint_path=meta.get("checkpoint_path"), arch=meta.get("arch"),
                    dataset=dataset, split=config.split, num_examples=len(x),
                    class_names=list(splits.class_names), epsilon_source=epsilon_source,
                    training_epsilon=meta.get("epsilon"),
                    model_fingerprint=model_fingerprint(meta),
                    data_fingerprint=data_fingerprint(x, y))
        previous = _matching_previous(previous_records, info)
        logging.info("evaluating %s on %s %s (%d examples)", meta["label"], dataset,
                     config.split, len(x))
        record = evaluate_model(
            logits_fn, x, y, attacks=config.attacks, epsilon=epsilon,
            batch_size=config.batch_size, seed=config.seed, norm=norm,
            pgd_step_size=config.pgd_step_size, pgd_restarts=config.pgd_restarts,
            cw_confidence=config.cw_confidence, cw_step_size=config.cw_step_size,
            autoattack_options=dict(config.autoattack_options),
            jit_compile=config.jit_compile, info=info, previous=previous,
            on_update=lambda r: write(done + [r]), show_progress=config.show_progress)
        done.append(record)
        write(done)
    table = markdown_table(done)
    fileio.write_atomic(table_path(config.output), table)
    return done, table


def _interrupted_hint(flag_values):
    return (f"the finished attacks (and AutoAttack's progress) are in "
            f"{flag_values['output'].value or 'the output JSON'}; rerun the same command "
            "with --resume to continue.")


@cli.guard(_interrupted_hint)
def main(argv, flag_values=None):
    """`python -m dac_tf.evaluate`: reads the flags once, evaluates, prints the table."""
    if len(argv) > 1:
        raise EvaluationError(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
                              "written --name=value).")
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = config_from_flags(flag_values)
    _, table = run(config)
    print(table, end="")
    print(f"Results: {config.output} (table: {table_path(config.output)})")


if __name__ == "__main__":
    cli.run(main, define_flags)
