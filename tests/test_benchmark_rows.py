"""dac_tf.benchmark.rows: which rows run, what is derived from them (the tables:
tests/test_benchmark_table.py)."""

import pytest

from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark import flops
from dac_tf.benchmark import rows as rows_lib
from helpers_benchmark import train_row


def test_plan_puts_xla_last_and_times_the_input_pipeline_once_per_batch():
    config = BenchConfig(arch=("small_cnn", "preact_resnet18"), method=("at",),
                         batch_size=(8,), modes=("xla", "fp32"), use_dac="on",
                         pipeline=("synthetic", "tfds_like"), include_eval=True)
    specs = rows_lib.plan_rows(config)
    kinds_modes = [(s["kind"], s["mode"]) for s in specs]
    assert kinds_modes.count(("input", "-")) == 1
    assert [m for _, m in kinds_modes if m != "-"] == ["fp32"] * 6 + ["xla"] * 6
    assert {(s["arch"], s["pipeline"]) for s in specs if s["kind"] == "train"} == {
        (a, p) for a in ("small_cnn", "preact_resnet18") for p in ("synthetic", "tfds_like")}
    # Default: reference_bn_updates off on every train row; not a setting of the others.
    assert {(s["kind"], s["reference_bn_updates"]) for s in specs} == {
        ("train", False), ("eval", None), ("input", None)}


def test_plan_times_the_kernels_before_the_rows_compared_with_them():
    config = BenchConfig(arch=("small_cnn",), method=("at", "mart"), batch_size=(8, 16),
                         modes=("xla", "fp32"), use_dac="both", include_kernels=True)
    specs = rows_lib.plan_rows(config)
    kernel_specs = [s for s in specs if s["kind"] == "kernels"]
    assert [(s["batch_size"], s["mode"]) for s in kernel_specs] == [
        (8, "fp32"), (16, "fp32"), (8, "xla"), (16, "xla")]
    for spec in specs:
        if spec["kind"] == "train":
            first = specs.index(next(s for s in kernel_specs if (s["batch_size"], s["mode"])
                                     == (spec["batch_size"], spec["mode"])))
            assert first < specs.index(spec)
    assert len(specs) == 4 + 4 * 2 * 2


def test_rates_of_a_row_against_its_kernels_by_hand():
    entry = {"count": 3, "count_input_grad_in_update": 2, "gflop": 0.01,
             "forward_ms": 1.0, "input_grad_ms": 2.0, "weight_grad_ms": 4.0}
    kernel_row = dict(kind="kernels", arch="small_cnn", batch_size=8, mode="fp32",
                      kernels=[entry], error=None)
    other_batch = dict(kernel_row, batch_size=16, kernels=[dict(entry, forward_ms=9.0)])
    row = train_row()
    rows_lib.add_rates([kernel_row, other_batch, row])
    # DAC-AT, 10 steps: 20 attack passes and 2 updates. By hand, in ms:
    ideal_ms = 3 * 20 * (1 + 2) + 2 * (3 * (1 + 4) + 2 * 2)
    assert row["achieved_gflop_per_s"] == pytest.approx(0.5 * 50.0)
    assert row["measured_gflop_per_s"] == pytest.approx(0.5 * 8 / (ideal_ms / 1000))
    assert row["fraction_of_measured"] == pytest.approx(
        row["achieved_gflop_per_s"] / row["measured_gflop_per_s"])
    # A row with no kernels row of its (arch, batch, mode), or a failed one: no rate.
    lonely, failed = train_row(mode="bf16"), train_row()
    rows_lib.add_rates([dict(kernel_row, error="OOM"), lonely, failed])
    assert lonely["measured_gflop_per_s"] is None and lonely["fraction_of_measured"] is None
    assert failed["achieved_gflop_per_s"] == pytest.approx(25.0)
    assert failed["measured_gflop_per_s"] is None


def test_flop_fields_use_the_step_count_of_the_row():
    config = BenchConfig(num_steps=5, eval_pgd_steps=7)
    arch_flops = {"small_cnn": (1e6, 1e5)}
    train = rows_lib.flop_fields(train_row(), config, arch_flops)
    assert train["gflop_per_image"] * 1e9 == pytest.approx(
        flops.step_flops(1e6, "at", True, 5, input_layer_flops=1e5))
    evaluation = rows_lib.flop_fields(dict(kind="eval", arch="small_cnn"), config,
                                      arch_flops)
    assert evaluation["gflop_per_image"] * 1e9 == pytest.approx(7 * 2e6 + 1e6)
    assert rows_lib.flop_fields(dict(kind="input", arch="-"), config,
                                arch_flops)["gflop_per_image"] is None


def test_ratios_compare_with_the_matching_row():
    off = train_row(use_dac=False, step_ms_median=100.0)
    on = train_row(step_ms_median=205.0)
    tfds = train_row(pipeline="tfds_like", step_ms_median=246.0)
    rows_lib.add_ratios([off, on, tfds])
    assert on["dac_cost_ratio"] == pytest.approx(2.05)
    assert "dac_cost_ratio" not in off
    assert tfds["input_slowdown"] == pytest.approx(1.2)
