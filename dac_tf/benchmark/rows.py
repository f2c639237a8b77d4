"""The rows of a benchmark run: which rows (`plan_rows`), and what is derived from the
measured ones (FLOPs per image, achieved and measured rates, cost ratios)."""

from dac_tf.benchmark import config as config_lib
from dac_tf.benchmark import flops
from dac_tf.benchmark import kernels


def plan_rows(config):
    """The row specs of a run, in order (dicts with kind, arch, method, use_dac, ...).

    Per (arch, batch): the input row (tfds_like pipeline); per mode: the kernels row
    (`include_kernels`, before the rows it is compared with), the training rows, the
    evaluation row. The input pipeline does not depend on the architecture: it is timed
    once per batch size. XLA rows come last.
    """
    dac_values = config_lib.ON_OFF[config.use_dac]
    ref_bn_values = config_lib.ON_OFF[config.reference_bn_updates]
    none = dict(use_dac=None, reference_bn_updates=None)
    specs = []
    for arch in config.arch:
        for batch in config.batch_size:
            if "tfds_like" in config.pipeline:
                specs.append(dict(kind="input", arch="-", method=config.method[0], **none,
                                  batch_size=batch, mode="-", pipeline="tfds_like"))
            for mode in config.modes:
                if config.include_kernels:
                    specs.append(dict(kind="kernels", arch=arch, method="-", **none,
                                      batch_size=batch, mode=mode, pipeline="-"))
                if config.include_train:
                    for method in config.method:
                        for use_dac in dac_values:
                            for ref_bn in ref_bn_values:
                                for pipeline in config.pipeline:
                                    specs.append(dict(
                                        kind="train", arch=arch, method=method,
                                        use_dac=use_dac, reference_bn_updates=ref_bn,
                                        batch_size=batch, mode=mode, pipeline=pipeline))
                if config.include_eval:
                    specs.append(dict(kind="eval", arch=arch,
                                      method=f"pgd{config.eval_pgd_steps}_eval", **none,
                                      batch_size=batch, mode=mode, pipeline="synthetic"))
    seen, unique = set(), []
    for spec in specs:
        key = tuple(sorted((k, str(v)) for k, v in spec.items()))
        if spec["kind"] == "input" and key in seen:
            continue
        seen.add(key)
        unique.append(spec)
    # XLA rows last (stable sort): on the lent GPU XLA fails inside cuDNN/autotuning,
    # and a failure that leaves the device unusable must not cost the other rows.
    return sorted(unique, key=lambda spec: spec["mode"].endswith("xla"))


def row_id(spec):
    """A file-name-safe name of a row (its profile directory)."""
    dac = {None: "", True: "_dac", False: ""}[spec["use_dac"]]
    dac += "_refbn" if spec.get("reference_bn_updates") else ""
    return (f"{spec['kind']}_{spec['arch']}_{spec['method']}{dac}_b{spec['batch_size']}_"
            f"{spec['mode']}_{spec['pipeline']}").replace("-", "x")


def flop_fields(spec, config, arch_flops):
    """`gflop_per_image` of a train or eval row (None for the others).

    Args:
      spec: the row spec.
      config: the `BenchConfig`.
      arch_flops: arch -> (forward FLOPs, input-layer FLOPs) per image
        (`flops.forward_flops`, `flops.input_layer_flops`).
    """
    if spec["kind"] not in ("train", "eval") or spec["arch"] not in arch_flops:
        return {"gflop_per_image": None}
    forward, input_layer = arch_flops[spec["arch"]]
    if spec["kind"] == "eval":
        count = flops.step_flops(forward, num_steps=config.eval_pgd_steps, kind="eval")
    else:
        count = flops.step_flops(forward, spec["method"], spec["use_dac"], config.num_steps,
                                 reference_bn_updates=spec["reference_bn_updates"],
                                 input_layer_flops=input_layer)
    return {"gflop_per_image": count / 1e9}


def add_ratios(rows):
    """Adds `dac_cost_ratio` (step time with DAC / without) to the DAC train rows,
    `ref_bn_cost_ratio` (with `reference_bn_updates` / without) to the rows with it, and
    `input_slowdown` (step time tfds_like / synthetic) to the tfds_like train rows."""
    def key(row, **override):
        fields = dict(row, **override)
        return tuple(fields.get(k) for k in ("kind", "arch", "method", "use_dac",
                                              "reference_bn_updates", "batch_size", "mode",
                                              "pipeline"))

    by_key = {key(r): r for r in rows}
    for row in rows:
        if row["kind"] != "train":
            continue
        if row["use_dac"]:
            base = by_key.get(key(row, use_dac=False))
            row["dac_cost_ratio"] = _ratio(row, base)
        if row.get("reference_bn_updates"):
            base = by_key.get(key(row, reference_bn_updates=False))
            row["ref_bn_cost_ratio"] = _ratio(row, base)
        if row["pipeline"] == "tfds_like":
            base = by_key.get(key(row, pipeline="synthetic"))
            row["input_slowdown"] = _ratio(row, base)
    return rows


def _ratio(row, base):
    if base is None or not row.get("step_ms_median") or not base.get("step_ms_median"):
        return None
    return row["step_ms_median"] / base["step_ms_median"]


def row_passes(row):
    """The `flops.StepPasses` of a train or eval row."""
    return flops.step_passes(row["method"], bool(row["use_dac"]), row["num_steps"],
                             row["kind"], bool(row.get("reference_bn_updates")))


def add_rates(rows):
    """Adds to each train and eval row `achieved_gflop_per_s` (its FLOPs per image x
    images/s) and, when a kernels row of the same (arch, batch, mode) succeeded,
    `measured_gflop_per_s` (the step's FLOPs over the time its kernels take at the
    measured speeds, `kernels.ideal_step_seconds`) and `fraction_of_measured`
    (achieved / measured: the ideal kernel time over the step's time)."""
    measured = {(r["arch"], r["batch_size"], r["mode"]): r["kernels"] for r in rows
                if r["kind"] == "kernels" and r.get("kernels") and not r.get("error")}
    for row in rows:
        if row["kind"] not in ("train", "eval"):
            continue
        achieved = None
        if row.get("img_per_s") and row.get("gflop_per_image"):
            achieved = row["gflop_per_image"] * row["img_per_s"]
        row["achieved_gflop_per_s"] = achieved
        entries = measured.get((row["arch"], row["batch_size"], row["mode"]))
        rate = None
        if entries:
            passes = row_passes(row)
            rate = row["gflop_per_image"] * row["batch_size"] / kernels.ideal_step_seconds(
                entries, passes)
        row["measured_gflop_per_s"] = rate
        row["fraction_of_measured"] = achieved / rate if achieved and rate else None
    return rows
