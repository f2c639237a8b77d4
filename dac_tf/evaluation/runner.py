"""Runs an evaluation: one model, a list of attacks, one record.

`evaluate_model(logits_fn, x, y, attacks=..., epsilon=...)` is the library form of
`python -m dac_tf.evaluate` for a model already in memory; `evaluate_path(path, ...)`
adds what the CLI does per `--model`: load the model (`loading`), pick its data set and
the protocol's radius (`dac_tf.protocol`), fingerprint weights and examples, and reuse
a matching stored record (`results`).

What an evaluation does, in order: the sanity checks on the first batch (`checks`), the
clean pass (always: it is cheap, the worst case includes it, and its predictions tell
whether stored results belong to this model and data), each attack (CleverHans's on
padded batches, `attacks`; AutoAttack, `autoattack_runs`), then the worst case, the
adversarial certainty
and the checks that compare attacks. The record is handed to `on_update` after the clean
pass, every attack and every AutoAttack batch, so a caller can write it as it goes.
"""

import time

from absl import logging
import numpy as np
import tensorflow as tf

from dac_tf import batching
from dac_tf import data
from dac_tf import protocol
from dac_tf import torch_bridge
from dac_tf.evaluation import EvaluationError
# `attack_lib`: `attacks` is evaluate_model's argument (the names to run).
from dac_tf.evaluation import attacks as attack_lib
from dac_tf.evaluation import autoattack_runs
from dac_tf.evaluation import checks
from dac_tf.evaluation import loading
from dac_tf.evaluation import progress as progress_lib
from dac_tf.evaluation import results

# The batch size of the DAC reference's AutoAttack script (eval_autoattack.py, bs=200).
DEFAULT_BATCH_SIZE = 200


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


def _warn_failed(check_list):
    for check in check_list:
        if check["passed"] is False:
            logging.warning("sanity check %s failed: %s", check["name"], check["detail"])


def _pre_checks(logits_fn, x, y, norm):
    return [checks.check_logits(logits_fn(tf.constant(x))),
            checks.check_deterministic(logits_fn, x),
            checks.check_gradients(logits_fn, x, y),
            checks.check_eps_zero(logits_fn, x, y, norm=norm)]


def evaluate_model(logits_fn, x, y, *, attacks, epsilon, batch_size=DEFAULT_BATCH_SIZE,
                   seed=0, norm="linf", pgd_step_size=None, pgd_restarts=1,
                   cw_confidence=attack_lib.DEFAULT_CW_CONFIDENCE, cw_step_size=None,
                   autoattack_options=None, jit_compile=False, info=None, previous=None,
                   on_update=None, show_progress=True, sanity_checks=True):
    """Evaluates one model under a list of attacks; the library form of the CLI.

    Args:
      logits_fn: float32 images [B, H, W, C] in [0, 1] -> logits, BatchNorm in inference
        mode (`loading.load_logits_fn`, or `loading.keras_logits_fn(model)`). Reuse the
        same object across calls to reuse its traced graphs.
      x: images [N, H, W, C], float in [0, 1] or uint8 (value / 255).
      y: int labels [N].
      attacks: comma-separated string or sequence of names: clean, fgsm, pgdK, cw, cwK,
        autoattack (`attacks.parse_attacks`).
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
      autoattack_options: `attacks.autoattack_settings` overrides (implementation,
        components, budgets) and `jit_compile`.
      jit_compile: compile the CleverHans attacks with XLA.
      info: extra keys stored in the record (model, dataset, split, ...).
      previous: a record of an earlier run on the same model and data (`--resume`):
        attacks with the same settings are reused, a partial AutoAttack continues.
      on_update: called with the record after the clean pass, every attack and every
        AutoAttack batch (to write it to disk).
      show_progress: progress bars on stderr (`keras.utils.Progbar`).
      sanity_checks: run the checks on the first batch (cheap) before the attacks.

    Returns:
      The record (`results.Record`).

    Raises:
      attacks.AttackError, EvaluationError: bad attack names or settings.
      protocol.UnitError: a radius or step that is not a number in [0, 1] (a value
        above 1 is refused as one out of 255: pass 8/255, not 8).
    """
    specs = attack_lib.parse_attacks(attacks)
    # [0, 1] units, as every library radius (`protocol.unit_value`: 8 -> "pass 8/255").
    epsilon = protocol.unit_value("epsilon", epsilon)
    pgd_step_size = protocol.unit_value("pgd_step_size", pgd_step_size, allow_none=True)
    cw_step_size = protocol.unit_value("cw_step_size", cw_step_size, allow_none=True)
    if norm not in attack_lib.NORMS:
        raise EvaluationError(f"--norm={norm!r} is not valid; use one of "
                              f"{', '.join(attack_lib.NORMS)}.")
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
    batch_size = batching.effective_batch_size(n, batch_size)
    common = dict(epsilon=float(epsilon), norm=norm, step_size=pgd_step_size,
                  restarts=int(pgd_restarts), cw_confidence=float(cw_confidence),
                  cw_step_size=cw_step_size, seed=int(seed), batch_size=batch_size)
    settings = {}
    for spec in specs:
        if spec.kind == "autoattack":
            settings[spec.name] = attack_lib.autoattack_settings(
                epsilon, seed=seed, batch_size=batch_size, options=autoattack_options)
        else:
            settings[spec.name] = attack_lib.attack_settings(spec, **common)
    for s in settings.values():
        package = attack_lib.AUTOATTACK_PACKAGES.get(s.get("impl"))
        if package:   # fail now, not after hours of other attacks
            torch_bridge.check_available(package)

    record = dict(info or {})
    record.update(
        format=results.FORMAT, epsilon=float(epsilon), epsilon_255=protocol.to_pixels(epsilon),
        norm=norm, num_examples=n, attacks=[s.name for s in specs], seed=int(seed),
        batch_size=batch_size, columns={}, accuracy={}, seconds={}, attack_settings={},
        robust_flags={}, attack_checks={}, certainty_by_attack={}, sanity_checks=[],
        autoattack_components=[], autoattack=None, complete=False, versions=_versions())

    def update():
        if on_update is not None:
            on_update(record)

    def progress(title):
        return progress_lib.ProgressBar(title) if show_progress else None

    # Checks on one batch before any number is computed.
    first = slice(0, batch_size)
    logits0 = np.asarray(logits_fn(tf.constant(x[first])))
    if logits0.ndim != 2 or logits0.shape[0] != batch_size:
        raise EvaluationError(f"the model returned shape {logits0.shape}; expected "
                              f"logits [{batch_size}, num_classes].")
    if int(y.max()) >= logits0.shape[1]:
        raise EvaluationError(f"labels go up to {int(y.max())} but the model has "
                              f"{logits0.shape[1]} outputs (wrong --dataset?).")
    _refuse_non_finite(np.all(np.isfinite(logits0), axis=1), record, "the first ")
    pre_checks = _pre_checks(logits_fn, x[first], y[first], norm) if sanity_checks else []
    _warn_failed(pre_checks)

    # The clean pass always runs: it is cheap, the worst case includes it, and its
    # predictions tell whether stored results (--resume) belong to this model and data.
    t0 = time.perf_counter()
    clean_settings = attack_lib.attack_settings(attack_lib.AttackSpec("clean", "clean"),
                                                **common)
    clean = attack_lib.run_batched(
        attack_lib.make_batch_fn(logits_fn, clean_settings, jit_compile),
        x, y, batch_size=batch_size, progress=progress("clean"))
    clean_seconds = time.perf_counter() - t0
    _refuse_non_finite(clean["finite"], record)
    clean_flags = results.flags_to_str(clean["correct"])
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

    def store(spec, flags, seconds, label, check=None, certainty=None):
        record["accuracy"][spec.name] = float(np.mean(flags))
        record["robust_flags"][spec.name] = results.flags_to_str(flags)
        record["seconds"][spec.name] = float(seconds)
        record["attack_settings"][spec.name] = settings[spec.name]
        record["columns"][spec.name] = label
        if check is not None:
            record["attack_checks"][spec.name] = check
        if certainty is not None:
            record["certainty_by_attack"][spec.name] = certainty

    for spec in specs:
        name = spec.name
        old = results.reusable(previous, name, settings[name], clean_flags)
        if old is not None:
            logging.info("%s: reusing the stored result", name)
            _copy_stored(record, old, spec, settings[name])
        elif spec.kind == "clean":
            store(spec, clean["correct"], clean_seconds, "Clean", certainty=clean_certainty)
        elif spec.kind == "autoattack":
            autoattack_runs.run_autoattack(logits_fn, x, y, spec, settings[spec.name],
                                           record, previous, autoattack_options, update,
                                           show_progress)
        else:
            t0 = time.perf_counter()
            out = attack_lib.run_batched(
                attack_lib.make_batch_fn(logits_fn, settings[name], jit_compile), x, y,
                batch_size=batch_size, seed_base=attack_lib.attack_seed(seed, spec.kind),
                progress=progress(name))
            check = checks.check_in_ball(name, out, epsilon, norm)
            _warn_failed([check])
            store(spec, out["correct"], time.perf_counter() - t0,
                  attack_lib.column_label(spec), check, float(out["certainty"].mean()))
        update()

    _finish(record, specs, clean["correct"], clean_certainty, pre_checks, n)
    update()
    return record


def _refuse_non_finite(finite, record, which=""):
    """Refuses a model with a NaN or infinite logit on an evaluated example.

    Accuracies of such a model are meaningless (argmax of NaN logits is class 0), and
    its sanity checks fail for reasons they would misname (a NaN forward pass is not
    "deterministic"). A training run whose weights overflowed gives such logits.

    Args:
      finite: bool [n], whether every logit of each example is finite.
      record: the record being built (its `model`, when known, names the model).
      which: "the first " when `finite` covers the first batch only.

    Raises:
      EvaluationError: some logit is not finite.
    """
    finite = np.asarray(finite, bool)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    model = record.get("model")
    what = f"--model={model}" if model else "the model"
    if record.get("checkpoint"):
        what += f" ({record['checkpoint']} checkpoint)"
    raise EvaluationError(
        f"{what} outputs non-finite logits (NaN or Inf) on {len(bad)} of {which}{len(finite)} "
        f"evaluated examples (the first is example {int(bad[0])}); its accuracies would "
        "be meaningless, so it is not evaluated. Its weights have overflowed or are "
        "damaged: evaluate an earlier checkpoint or retrain (e.g. with a lower --lr).")


def _copy_stored(record, old, spec, settings):
    """Copies attack `spec`'s stored result from the record `old` into `record`."""
    name = spec.name
    record["accuracy"][name] = old["accuracy"][name]
    record["robust_flags"][name] = old["robust_flags"][name]
    record["seconds"][name] = old["seconds"][name]
    record["attack_settings"][name] = settings
    record["columns"][name] = old.get("columns", {}).get(name, attack_lib.column_label(spec))
    for key in ("attack_checks", "certainty_by_attack"):
        if name in old.get(key, {}):
            record[key][name] = old[key][name]
    if spec.kind == "autoattack":
        record["autoattack"] = old.get("autoattack")
        record["autoattack_components"] = old.get("autoattack_components")


def _finish(record, specs, clean_correct, clean_certainty, pre_checks, n):
    """Worst case, adversarial certainty and the checks that compare attacks."""
    if not any(s.kind == "autoattack" for s in specs):
        record.pop("autoattack_state", None)   # carried from a run that had it
        record.pop("autoattack_state_settings", None)
    flags = {s.name: results.str_to_flags(record["robust_flags"][s.name]) for s in specs}
    worst = np.asarray(clean_correct, bool).copy()
    for f in flags.values():
        worst &= f
    record["worst_case_accuracy"] = float(worst.mean())
    record["robust_flags"]["__worst_case__"] = results.flags_to_str(worst)

    pgd_names = [s.name for s in specs if s.kind == "pgd"]
    ac_attack = pgd_names[0] if pgd_names else None
    record["adversarial_certainty"] = dict(
        measure="std", attack=ac_attack,
        value=record["certainty_by_attack"].get(ac_attack) if ac_attack else None,
        clean=clean_certainty, by_attack=dict(record["certainty_by_attack"]))
    if ac_attack is None:
        record["adversarial_certainty"]["note"] = (
            "no pgdK attack was run, so there are no PGD adversarial examples to measure")

    comparisons = checks.check_monotone(
        [s for s in specs if s.kind in ("fgsm", "pgd")], record["accuracy"], n)
    aa = next((s for s in specs if s.kind == "autoattack"), None)
    aa_record = record.get("autoattack") or {}
    if (aa is not None and "square" in aa_record.get("components", [])
            and "flags_by_component" in aa_record):
        by_comp = {k: results.str_to_flags(v)
                   for k, v in aa_record["flags_by_component"].items()}
        white = np.asarray(clean_correct, bool).copy()
        for s in specs:
            if s.kind in ("fgsm", "pgd", "cw"):
                white &= flags[s.name]
        ran_white = [c for c in aa_record["components"]
                     if c in attack_lib.WHITE_BOX_AUTOATTACK]
        if ran_white:
            white &= by_comp[ran_white[-1]]
        comparisons.append(checks.check_black_box(white, by_comp["square"], n))
    _warn_failed(comparisons)
    record["sanity_checks"] = (
        list(pre_checks)
        + [record["attack_checks"][s.name] for s in specs if s.name in record["attack_checks"]]
        + comparisons)
    record["complete"] = True


# ------------------------------------------------------------------ a model on disk
def evaluate_path(path, checkpoint="best", *, attacks, dataset=None, data_dir=None,
                  split="test", num_examples=None, epsilon=None, norm=None,
                  previous_records=(), on_update=None, **options):
    """Evaluates a training run, SavedModel or export directory on its data set.

    Args:
      path: `--model` (`loading.resolve_model_path`).
      checkpoint: "best" or "last" (training runs).
      attacks: the attack names (`evaluate_model`).
      dataset: the data set; None: the one the model records (run config / export
        metadata).
      data_dir: tfds data directory.
      split: "test" or "train".
      num_examples: the first N examples (None: all).
      epsilon: radius in [0, 1] units; None: the protocol's (`protocol.evaluation_epsilon`:
        8/255 on the benchmark data sets under L-inf, else the training radius).
      norm: "linf" or "l2"; None: the model's, else linf.
      previous_records: stored records (`results.read_results`) to resume from; only one
        of the same weights on the same examples is used (`results.matching_previous`).
      on_update: called with the record as it grows (`evaluate_model`).
      **options: the other arguments of `evaluate_model` (batch_size, seed,
        pgd_step_size, pgd_restarts, cw_confidence, cw_step_size, autoattack_options,
        jit_compile, show_progress, sanity_checks).

    Returns:
      The record, with the model's identity and the data's (`results.Record`).

    Raises:
      EvaluationError, data.DatasetError, checkpoints.CheckpointError: the model or the
        data cannot be loaded or do not fit each other.
    """
    logits_fn, meta = loading.load_logits_fn(path, checkpoint)
    dataset = dataset or meta.get("dataset")
    if not dataset:
        raise EvaluationError(f"--model={path} does not record its dataset; pass --dataset.")
    x, y, splits = loading.load_split(dataset, split, data_dir=data_dir,
                                      num_examples=num_examples)
    if meta.get("input_shape") and list(meta["input_shape"]) != list(splits.image_shape):
        raise EvaluationError(f"--model={path} takes images {tuple(meta['input_shape'])} "
                              f"but {dataset} has {splits.image_shape} (wrong --dataset?).")
    norm = norm or meta.get("norm") or "linf"
    epsilon_source = "flag"
    if epsilon is None:
        epsilon, epsilon_source = protocol.evaluation_epsilon(dataset, norm,
                                                              meta.get("epsilon"))
    info = dict(model=path, model_path=meta["path"], model_label=meta["label"],
                model_kind=meta["kind"], checkpoint=meta["checkpoint"],
                checkpoint_path=meta.get("checkpoint_path"), arch=meta.get("arch"),
                dataset=dataset, split=split, num_examples=len(x),
                class_names=list(splits.class_names), epsilon_source=epsilon_source,
                training_epsilon=meta.get("epsilon"),
                model_fingerprint=loading.model_fingerprint(meta),
                data_fingerprint=loading.data_fingerprint(x, y))
    previous = results.matching_previous(previous_records, info)
    logging.info("evaluating %s on %s %s (%d examples)", meta["label"], dataset, split, len(x))
    return evaluate_model(logits_fn, x, y, attacks=attacks, epsilon=epsilon, norm=norm,
                          info=info, previous=previous, on_update=on_update, **options)
