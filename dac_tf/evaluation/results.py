"""The evaluation record, the result file it is written to, and what `--resume` reuses.

One model's evaluation is a `Record`: a JSON-ready dict, written after every attack (and
every AutoAttack batch) so an interrupted evaluation keeps what it finished. A result
file (`--output`) holds one record, or `{"format", "models": [record, ...], "table"}`
for several models. `read_results` reads either back and refuses, in one line, a file
whose records were damaged or hand-edited so that they cannot be trusted.

Resuming is decided here, in two steps: `matching_previous` finds the stored record of
the same weights on the same examples (`RESUME_KEYS`: fingerprints, not file names), and
`reusable` keeps one attack's stored result only if its settings and the clean
predictions are unchanged.
"""

import typing

from absl import logging

from dac_tf import autoattack
from dac_tf import fileio
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import table

FORMAT = "dac_tf.evaluate/1"

# Per-example flags: "1" robust, "0" not, one character per example (AutoAttack's state
# uses the same encoding, so its per-component flags are stored as they are).
flags_to_str = autoattack.flags_to_str
str_to_flags = autoattack.str_to_flags


class Record(typing.TypedDict, total=False):
    """One model's evaluation (every key is JSON; radii in [0, 1] units).

    What was evaluated (from `dac_tf.evaluation.runner.evaluate_path` / the caller's
    `info`): `model` (as given), `model_path`, `model_label` (the table's row name),
    `model_kind` ("model_dir" or "saved_model"), `checkpoint`, `checkpoint_path`,
    `arch`, `dataset`, `split`, `class_names`, `model_fingerprint`, `data_fingerprint`,
    `epsilon_source` ("flag", "benchmark", "training" or "default") and
    `training_epsilon`.

    How (from `evaluate_model`): `format`, `epsilon`, `epsilon_255`, `norm`,
    `num_examples`, `attacks` (names as given, in order), `seed`, `batch_size`,
    `attack_settings` (name -> the settings that determine its result), `versions`
    (tensorflow, keras, cleverhans).

    Results: `accuracy` (name -> robust accuracy), `clean_accuracy`,
    `worst_case_accuracy` (correct clean and under every attack), `robust_flags`
    (name -> per-example flags, plus `__clean__` and `__worst_case__`), `seconds`,
    `columns` (name -> table header), `certainty_by_attack`, `adversarial_certainty`
    (the paper's diagnostic on the first PGD attack's examples), `autoattack`
    (implementation, components, per-component results), `autoattack_components`,
    `attack_checks`, `sanity_checks`, `complete` (False while attacks are missing).

    While an AutoAttack is interrupted: `autoattack_state` (its resumable state) and
    `autoattack_state_settings`.
    """
    format: str
    model: str
    model_path: str
    model_label: str
    model_kind: str
    checkpoint: str
    checkpoint_path: str
    arch: str
    dataset: str
    split: str
    class_names: list
    model_fingerprint: str
    data_fingerprint: str
    epsilon_source: str
    training_epsilon: float
    epsilon: float
    epsilon_255: float
    norm: str
    num_examples: int
    attacks: list
    seed: int
    batch_size: int
    attack_settings: dict
    versions: dict
    accuracy: dict
    clean_accuracy: float
    worst_case_accuracy: float
    robust_flags: dict
    seconds: dict
    columns: dict
    certainty_by_attack: dict
    adversarial_certainty: dict
    autoattack: dict
    autoattack_components: list
    attack_checks: dict
    sanity_checks: list
    complete: bool
    autoattack_state: dict
    autoattack_state_settings: dict


# Keys --resume reads from a stored record, and their types (checked on reading).
_RECORD_TYPES = dict(robust_flags=dict, attack_settings=dict, accuracy=dict, seconds=dict,
                     columns=dict)
# What must be equal for a stored record to be reused by --resume; the attack settings
# are compared per attack (`reusable`).
RESUME_KEYS = ("model_path", "checkpoint", "model_fingerprint", "dataset", "split",
               "num_examples", "data_fingerprint")


def results_document(records):
    """The JSON of a result file: the record itself for one model, else all with the table."""
    if len(records) == 1:
        return records[0]
    return dict(format=FORMAT, models=records, table=table.markdown_table(records))


def write_results(path, records):
    """Writes `results_document(records)` to `path` atomically (any gfile filesystem)."""
    fileio.write_json_atomic(path, results_document(records))


def read_results(path):
    """The records of a result file, one model or several, as a list.

    Args:
      path: a file written by `write_results`.

    Returns:
      A list of `Record`s.

    Raises:
      EvaluationError: unreadable, not a result file, or one whose records were damaged
        or edited so that --resume cannot trust them.
    """
    doc = fileio.read_json(path, EvaluationError, "evaluation result file")
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


def matching_previous(previous_records, info):
    """The stored record of the same weights on the same examples, or None.

    Args:
      previous_records: records read from the result file.
      info: the identity of the model about to be evaluated (`RESUME_KEYS` and
        `model_label`, `checkpoint_path` for the message).

    Returns:
      The record whose `RESUME_KEYS` all equal `info`'s, or None. A record of the same
      --model whose weights or examples changed since is reported and recomputed, never
      reused.
    """
    for r in previous_records:
        if all(r.get(k) == info.get(k) for k in RESUME_KEYS):
            return r
    for r in previous_records:
        if r.get("model_path") == info.get("model_path") and r.get(
                "checkpoint") == info.get("checkpoint"):
            changed = [k for k in RESUME_KEYS if r.get(k) != info.get(k)]
            logging.warning(
                "--resume: the stored results of %s were made with another %s (stored %s, "
                "now %s); recomputing every attack.", info.get("model_label"),
                " and ".join(k.replace("_", " ") for k in changed),
                r.get("checkpoint_path") or "?", info.get("checkpoint_path") or "?")
    return None


def reusable(previous, name, settings, clean_flags):
    """The stored record if its result of attack `name` may be reused, else None.

    Args:
      previous: the matching stored record (`matching_previous`), or None.
      name: the attack's name as given.
      settings: the attack's settings now.
      clean_flags: the clean predictions now (`robust_flags["__clean__"]`): another
        model or other data would change them.
    """
    if not previous:
        return None
    if previous.get("robust_flags", {}).get("__clean__") != clean_flags:
        return None
    if previous.get("attack_settings", {}).get(name) != settings:
        return None
    if name not in previous.get("robust_flags", {}):
        return None
    return previous
