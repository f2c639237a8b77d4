"""AutoAttack inside an evaluation: the native run (resumable) or the PyTorch package.

`run_autoattack` runs the `autoattack` entry of `--attacks` for
`dac_tf.evaluation.runner.evaluate_model`: natively (`dac_tf.autoattack`, whose state
after every batch goes into the record, so an interrupted evaluation continues where
it stopped) or through the PyTorch package `--autoattack_impl` names
(`dac_tf.torch_bridge`), and stores the robust accuracy, the flags per example and the
components in the record.
"""

import time

from absl import logging
import numpy as np

from dac_tf import autoattack
from dac_tf import torch_bridge
from dac_tf.evaluation import progress
from dac_tf.evaluation import results
from dac_tf.evaluation import specs as attack_lib


def _run_torch_autoattack(logits_fn, x, y, spec, settings, record):
    t0 = time.perf_counter()
    out = torch_bridge.run_official_autoattack(
        logits_fn, x, y, epsilon=settings["epsilon"], seed=settings["seed"],
        batch_size=settings["batch_size"], attacks=tuple(settings["attacks"]),
        package=attack_lib.AUTOATTACK_PACKAGES[settings["impl"]],
        **{k: settings[k] for k in attack_lib.AUTOATTACK_BUDGETS})
    components = out["components"]
    label = attack_lib.autoattack_label(components, settings)
    record["autoattack_components"] = components
    record["autoattack"] = dict(impl=settings["impl"], package=out["package"],
                                package_version=out["package_version"],
                                standard=label == "AutoAttack",
                                components=components, max_linf=out["max_linf"],
                                config={k: settings[k] for k in attack_lib.AUTOATTACK_BUDGETS})
    record["accuracy"][spec.name] = float(np.mean(out["robust_flags"]))
    record["robust_flags"][spec.name] = results.flags_to_str(out["robust_flags"])
    record["seconds"][spec.name] = time.perf_counter() - t0
    record["attack_settings"][spec.name] = settings
    record["columns"][spec.name] = label


def run_autoattack(logits_fn, x, y, spec, settings, record, previous, options, update,
                   show_progress):
    """Runs AutoAttack on (x, y) and stores its result in `record`.

    Continues a stored interrupted state (`previous["autoattack_state"]`) when it was
    made with the same settings on the same clean predictions.

    Args:
      logits_fn: images -> logits, BatchNorm in inference mode.
      x, y: float32 images in [0, 1] and int labels.
      spec: the `specs.AttackSpec` of kind "autoattack".
      settings: its `specs.autoattack_settings`.
      record: the evaluation record being built (`runner.evaluate_model`).
      previous: a stored record to resume from, or None.
      options: `autoattack_options` (its `jit_compile` is used).
      update: called with no argument after every AutoAttack batch (writes the record).
      show_progress: progress bars on stderr.
    """
    if attack_lib.AUTOATTACK_PACKAGES[settings["impl"]]:
        _run_torch_autoattack(logits_fn, x, y, spec, settings, record)
        return

    name = spec.name
    state = None
    stored_clean = (previous or {}).get("robust_flags", {}).get("__clean__")
    if (previous and previous.get("autoattack_state")
            and stored_clean == record["robust_flags"]["__clean__"]
            and previous.get("autoattack_state_settings") == settings):
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
            todo = int(results.str_to_flags(s["flags"][prev]).sum())
            total = -(-todo // settings["batch_size"])
            if attack not in bars:
                bars[attack] = progress.ProgressBar(f"{name}:{attack}", unit_name="batch")
            bars[attack](current["batches_done"], total)
        update()

    result = autoattack.run_standard_autoattack(
        logits_fn, x, y, epsilon=settings["epsilon"], seed=settings["seed"],
        batch_size=settings["batch_size"], attacks=tuple(settings["attacks"]), state=state,
        progress=on_state, apgd_n_iter=settings["apgd_n_iter"],
        fab_n_iter=settings["fab_n_iter"], square_n_queries=settings["square_n_queries"],
        n_target_classes=settings["n_target_classes"],
        jit_compile=bool((options or {}).get("jit_compile", False)))
    components = list(result.components)
    label = attack_lib.autoattack_label(components, settings)
    record["autoattack_components"] = components
    record["autoattack"] = dict(
        impl="native", standard=bool(result.is_standard), components=components,
        accuracy_by_component={k: float(v) for k, v in result.accuracy.items()},
        n_attacked={k: int(v) for k, v in result.n_attacked.items()},
        seconds_by_component={k: float(v) for k, v in result.seconds.items()},
        flags_by_component={k: results.flags_to_str(v) for k, v in result.flags.items()},
        config=dict(result.config))
    record["accuracy"][name] = float(result.robust_accuracy)
    record["robust_flags"][name] = results.flags_to_str(result.robust_flags)
    record["seconds"][name] = float(sum(result.seconds.values()))
    record["attack_settings"][name] = settings
    record["columns"][name] = label
    record.pop("autoattack_state", None)
    record.pop("autoattack_state_settings", None)
    if not result.is_standard:
        logging.warning("AutoAttack was not the standard version (components %s, settings "
                        "%s); the table column reads %r.", components, settings, label)
