"""dac_tf.benchmark.run_benchmark end to end on small_cnn: rows, ratios, rates, failures.

Benchmarks, not timed tests: only that the rows run and their numbers are well-formed and
consistent with each other."""

import json

import keras
import pytest

from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark import flops
from dac_tf.benchmark import kernels
from dac_tf.benchmark import rows as rows_lib
from dac_tf.benchmark import run_benchmark
from dac_tf.benchmark import runners
from dac_tf.benchmark.config import REQUIRED_KEYS

TINY = dict(arch=("small_cnn",), method=("at",), batch_size=(8,), steps=2, runs=2,
            warmup=1, modes=("fp32",))


@pytest.mark.slow   # times four training configurations
def test_benchmark_end_to_end_with_and_without_dac(tmp_path):
    output = str(tmp_path / "bench.json")
    lines = []
    config = BenchConfig(**TINY, use_dac="both", output=output)
    rows = run_benchmark(config, log=lines.append)

    assert [(r["kind"], r["use_dac"]) for r in rows] == [("train", False), ("train", True)]
    for row in rows:
        for key in REQUIRED_KEYS:
            assert key in row
        assert row["error"] is None
        assert row["img_per_s"] > 0
        assert row["steps"] == 2 and row["runs"] == 2 and len(row["step_ms_runs"]) == 2
        assert row["img_per_s"] == pytest.approx(8 / (row["step_ms_median"] / 1000))
        assert row["peak_memory_mb"] > 0
        assert row["achieved_gflop_per_s"] == pytest.approx(
            row["gflop_per_image"] * row["img_per_s"])
        assert row["measured_gflop_per_s"] is None   # no kernels row asked for
    off, on = rows
    # No speed threshold: timings on a shared CPU are too noisy for a unit test.
    assert on["dac_cost_ratio"] == pytest.approx(on["step_ms_median"] / off["step_ms_median"])
    assert "dac_cost_ratio" not in off
    # Two attacks and two updates: exactly twice the arithmetic.
    assert on["gflop_per_image"] == pytest.approx(2 * off["gflop_per_image"], rel=1e-9)
    assert json.load(open(output)) == json.loads(json.dumps(rows))
    # The table is the last thing logged: its header, then one line per row.
    table = lines[-1].splitlines()
    assert table[0].startswith("| arch |") and len(table) == 2 + len(rows)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow   # times the kernels of small_cnn and two training configurations
def test_kernels_row_gives_each_row_its_fraction_of_the_measured_rate():
    lines = []
    config = BenchConfig(**dict(TINY, steps=1, runs=1), use_dac="on", include_eval=True,
                         eval_pgd_steps=2, include_kernels=True)
    kernel_row, train, evaluation = run_benchmark(config, log=lines.append)
    assert kernel_row["kind"] == "kernels" and kernel_row["error"] is None
    assert [e["count"] for e in kernel_row["kernels"]] == [1, 1, 1, 1]   # 3 convs, dense
    assert kernel_row["kernel_gflop_per_s"] > 0
    for row in (train, evaluation):
        assert row["error"] is None and row["measured_gflop_per_s"] > 0
        passes = rows_lib.row_passes(row)
        # The row's FLOPs are the kernels' FLOPs summed as the step runs them.
        assert row["gflop_per_image"] * 8 == pytest.approx(
            kernels.step_gflop(kernel_row["kernels"], passes))
        assert row["measured_gflop_per_s"] == pytest.approx(
            row["gflop_per_image"] * 8 / kernels.ideal_step_seconds(kernel_row["kernels"],
                                                                    passes))
        assert row["fraction_of_measured"] == pytest.approx(
            row["achieved_gflop_per_s"] / row["measured_gflop_per_s"])
    assert lines[-2].splitlines()[0].startswith("| arch | batch | mode | layer |")
    assert len(lines[-1].splitlines()) == 2 + 2   # the kernels row is not in the row table


@pytest.mark.slow   # eight timed training configurations
def test_reference_bn_updates_rows_and_their_cost_ratio(monkeypatch):
    built = []

    class SpyDACModel(runners.DACModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.reference_bn_updates)

    monkeypatch.setattr(runners, "DACModel", SpyDACModel)
    lines = []
    config = BenchConfig(**TINY, use_dac="on", reference_bn_updates="both")
    rows = run_benchmark(config, log=lines.append)

    assert [(r["use_dac"], r["reference_bn_updates"]) for r in rows] == [(True, False),
                                                                         (True, True)]
    assert built == [False, True]   # each row trains the model it is labelled with
    off, on = rows
    assert off["error"] is None and on["error"] is None
    assert on["ref_bn_cost_ratio"] == pytest.approx(on["step_ms_median"] / off["step_ms_median"])
    assert "ref_bn_cost_ratio" not in off
    # DAC-AT: 3 forwards (no backward) more than the 2 x 10 x 2F + 2 x (3F - F1) of the step.
    shapes = flops.arch_layer_shapes("small_cnn")
    f = sum(s.flops for s in shapes)
    f1 = sum(s.flops for s in shapes if not s.input_grad_in_update)
    assert on["gflop_per_image"] / off["gflop_per_image"] == pytest.approx(
        (49 * f - 2 * f1) / (46 * f - 2 * f1))
    table = lines[-1].splitlines()
    assert "| ref BN |" in table[0] and "| ref BN cost |" in table[0]
    assert table[3].startswith("| small_cnn | train | at | on | on | 8 | fp32 |")


@pytest.mark.slow   # times two training configurations
def test_failing_mode_is_recorded_and_the_rest_runs(monkeypatch):
    real = runners.make_train_runner

    def flaky(spec, config):
        if spec["mode"] == "bf16":
            raise RuntimeError("No valid config found\nsecond line of a long TF error")
        return real(spec, config)

    monkeypatch.setitem(runners.RUNNERS, "train", flaky)
    config = BenchConfig(**dict(TINY, modes=("bf16", "fp32")), use_dac="off")
    rows = run_benchmark(config, log=lambda _: None)

    failed, ok = rows
    assert failed["mode"] == "bf16" and failed["img_per_s"] is None
    assert failed["error"] == "RuntimeError: No valid config found"
    assert ok["mode"] == "fp32" and ok["error"] is None and ok["img_per_s"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"
