"""The paper's table: one row per model, robust accuracy in % with two decimals.

A caption line (data, number of examples, radius), then

    | Model | Clean | PGD-20 | PGD-100 | CW-inf | AutoAttack | Worst case |

with one row per evaluated model (`AT (last)`, `AT (best)`, ...), followed by notes: a
non-standard AutoAttack, the adversarial certainty, failed sanity checks, an interrupted
evaluation. Column headers come from the records (`specs.column_label`,
`specs.autoattack_label`), so a subset of AutoAttack never reads "AutoAttack".
"""

import os

from dac_tf import protocol
from dac_tf.evaluation import specs


def table_path(output):
    """Where the table of the result file `output` goes: next to it, as `.md`."""
    return os.path.splitext(output)[0] + ".md"


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def _eps_text(record):
    norm = "L-inf" if record["norm"] == "linf" else "L2"
    return f"{norm} eps = {protocol.pixels_text(record['epsilon'])}"


def _model_label(record):
    return record.get("model_label", record.get("model", "model"))


def markdown_table(records):
    """The paper's table for evaluation records.

    Args:
      records: results of `dac_tf.evaluation.runner.evaluate_model` (with `model_label`,
        `dataset`, `split`).

    Returns:
      Markdown text: a caption line when every record has the same data and radius
      (else two more columns say them per row), the table, then notes (non-standard
      AutoAttack, adversarial certainty, failed sanity checks, incomplete records).
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
                         specs.column_label(specs.parse_attacks(a)[0]))
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
        row = [_model_label(r)]
        if not same:
            row += [f"{r.get('dataset')} {r.get('split')} ({r['num_examples']})", _eps_text(r)]
        row += [_pct(r.get("accuracy", {}).get(a)) for a in names]
        row.append(_pct(r.get("worst_case_accuracy")))
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for r in records:
        notes += _notes(r)
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _notes(r):
    label = _model_label(r)
    notes = []
    aa = r.get("autoattack")
    if aa and not aa.get("standard"):
        cfg = {k: r["attack_settings"][n][k] for n in r["attack_settings"]
               if r["attack_settings"][n].get("kind") == "autoattack"
               for k in specs.AUTOATTACK_BUDGETS}
        notes.append(f"{label}: AutoAttack not the standard version: components "
                     f"{','.join(aa['components'])}, budgets {cfg}.")
    ac = r.get("adversarial_certainty") or {}
    if ac.get("value") is not None:
        notes.append(f"{label}: adversarial certainty (std of the logits) on "
                     f"{ac['attack']} examples {ac['value']:.4f} (clean {ac['clean']:.4f}).")
    for c in r.get("sanity_checks", []):
        if c.get("passed") is False:
            notes.append(f"{label}: WARNING sanity check {c['name']} failed: {c['detail']}.")
    if not r.get("complete", False):
        notes.append(f"{label}: incomplete (interrupted; rerun with --resume).")
    return notes
