"""`run_benchmark`: every row of a `BenchConfig`, one after the other, failures recorded.

A row that fails (XLA not compiling, out of memory, ...) is recorded with
`img_per_s: None` and a one-line `error`, and the run goes on; XLA rows run after all
the others (`rows.plan_rows`). `time_budget_s` marks the rows it has no time left for as
skipped. The JSON (`output`) is rewritten after every row, so a run cut short keeps what
it measured. The kernel table and then the row table are logged last.
"""

import gc
import os
import time

import keras
import tensorflow as tf

from dac_tf.benchmark import config as config_lib
from dac_tf.benchmark import flops
from dac_tf.benchmark import rows as rows_lib
from dac_tf.benchmark import runners
from dac_tf.benchmark import table
from dac_tf.benchmark import timing


def _common_fields(config, device_kind, device):
    return {"device": device, "device_kind": device_kind, "tf_version": tf.__version__,
            "keras_version": keras.__version__,
            # What TensorFlow read when it loaded: "1" (the programs' default, see
            # dac_tf/__init__.py), "0", or None (TF's default: oneDNN only on AVX-512
            # VNNI CPUs and newer).
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "runs": config.runs,
            "warmup": config.warmup, "num_steps": config.num_steps,
            "steps_per_execution": config.steps_per_execution,
            "memory_kind": ("gpu_peak_allocated" if device_kind == "GPU"
                            else "cpu_process_max_rss"),
            "format": config_lib.FORMAT}


def _measure(spec, config, device_kind):
    """The measured fields of one row (raises what the row's work raises)."""
    if spec["kind"] == "kernels":
        return runners.measure_kernels_row(spec, config, device_kind)
    profile_path = (os.path.join(config.profile_dir, rows_lib.row_id(spec))
                    if config.profile_dir else None)
    return runners.time_row(spec, config, device_kind, profile_path)


def _status(row):
    if row["error"]:
        return f"FAILED {row['error']}"
    if row["kind"] == "kernels":
        return f"{row['kernel_gflop_per_s']:,.1f} GFLOP/s (kernels alone)"
    return f"{row['img_per_s']:,.1f} img/s"


def run_benchmark(config, log=print):
    """Runs every row of `config`, writes the JSON after each, logs the tables last.

    Args:
      config: a `BenchConfig`.
      log: callable taking one string (progress lines, the FLOP note and the tables;
        the row table is the last call).

    Returns:
      The list of row dicts (also written to `config.output` if set).

    Raises:
      BenchError: an invalid config (nothing is run).
    """
    config.validate()
    device_kind, device = timing.device_info()
    arch_flops = {}
    for arch in config.arch:
        shapes = flops.arch_layer_shapes(arch, config.num_classes)
        arch_flops[arch] = (sum(s.flops for s in shapes),
                            sum(s.flops for s in shapes if not s.input_grad_in_update))
    specs = rows_lib.plan_rows(config)
    common = _common_fields(config, device_kind, device)
    log(f"dac_tf.bench: {len(specs)} rows on {device}, TF {tf.__version__}, Keras "
        f"{keras.__version__}")
    if device_kind == "CPU" and set(config.arch) - {"small_cnn"}:
        log("note: no GPU; a PreActResNet-18 DAC step at batch 32 takes ~20 s on 2 CPU "
            "cores. For a quick CPU check: --arch=small_cnn --batch_size=32 --steps=3.")
    rows = []
    previous_policy = keras.mixed_precision.global_policy()
    start = time.perf_counter()
    try:
        for i, spec in enumerate(specs, start=1):
            row = dict(spec, **common, steps=config.steps, img_per_s=None,
                       step_ms_median=None, peak_memory_mb=None, error=None)
            row.update(rows_lib.flop_fields(spec, config, arch_flops))
            if row["kind"] == "eval":
                row["num_steps"] = config.eval_pgd_steps
            elapsed = time.perf_counter() - start
            if config.time_budget_s and elapsed > config.time_budget_s:
                row["error"] = f"skipped: time budget of {config.time_budget_s:g} s spent"
            else:
                keras.backend.clear_session()
                gc.collect()
                runners.set_policy(spec["mode"] if spec["kind"] != "input" else "fp32")
                timing.reset_peak_memory(device_kind)
                try:
                    row.update(_measure(spec, config, device_kind))
                except Exception as err:  # noqa: BLE001 -- a failing mode must not end the run
                    row["error"] = timing.one_line(err)
                    row["img_per_s"] = None
                    try:
                        row["peak_memory_mb"] = timing.peak_memory_mb(device_kind)
                    except Exception:  # noqa: BLE001 -- the device may be unusable now
                        pass
                finally:
                    keras.mixed_precision.set_global_policy(previous_policy)
            rows.append(row)
            rows_lib.add_ratios(rows)
            rows_lib.add_rates(rows)
            log(f"[{i}/{len(specs)}] {rows_lib.row_id(spec)}: {_status(row)}")
            if config.output:
                table.write_json(rows, config.output)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    for arch, (forward, input_layer) in arch_flops.items():
        dac_at = flops.step_flops(forward, "at", True, config.num_steps,
                                  input_layer_flops=input_layer)
        log(f"Arithmetic (computed from the layers, not measured) {arch}: forward "
            f"{forward / 1e9:.3f} GFLOP/img; DAC-AT step {dac_at / 1e9:.1f} GFLOP/img.")
    if device_kind == "CPU":
        log("peak MB on CPU: the process's maximum resident set size so far, not per row.")
    if config.output:
        log(f"JSON: {config.output}")
    kernel_table = table.format_kernel_table(rows)
    if kernel_table:
        log(kernel_table)
    log(table.format_table(rows))
    return rows
