"""The benchmark: FLOP counter against hand counts, end-to-end rows, failures, the CLI."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dac_tf import bench
from dac_tf import models
from dac_tf.evaluation import loading
from dac_tf.evaluation import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(archs=("small_cnn",), methods=("at",), batch_sizes=(8,), steps=2, runs=2,
            warmup=1, modes=("fp32",))


def _tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)          # out 8x8x4
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="valid")(x)   # out 3x3x5
    x = keras.layers.Flatten()(x)                                  # 45
    outputs = keras.layers.Dense(7)(x)
    return keras.Model(inputs, outputs)


def test_forward_flops_tiny_model_by_hand():
    conv1 = 2 * (8 * 8) * (3 * 3 * 3 * 4)     # H_out W_out k k C_in C_out, 2 per MAC
    conv2 = 2 * (3 * 3) * (3 * 3 * 4 * 5)
    dense = 2 * 45 * 7
    assert bench.forward_flops(_tiny_model()) == conv1 + conv2 + dense == 17694


def test_forward_flops_descends_into_nested_models():
    inner = _tiny_model()
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(inner(outer_in)))
    assert bench.forward_flops(outer) == 17694 + 2 * 7 * 2


def test_forward_flops_preact_resnet18_by_hand():
    def conv(hw, k, cin, cout):
        return hw * hw * k * k * cin * cout
    macs = conv(32, 3, 3, 64) + 4 * conv(32, 3, 64, 64)
    for hw, cin, cout in ((16, 64, 128), (8, 128, 256), (4, 256, 512)):
        # First block: strided conv1, conv2, 1x1 shortcut; second block: two convs.
        macs += conv(hw, 3, cin, cout) + 3 * conv(hw, 3, cout, cout) + conv(hw, 1, cin, cout)
    macs += 512 * 10
    assert bench.forward_flops(models.build("preact_resnet18")) == 2 * macs
    assert 2 * macs == 1_110_845_440


def test_step_flops_dac_at_is_two_attacks_and_two_updates():
    f = 1000.0
    # 2 x (10 attack forward+backward) + 2 training forward+backward, each 3F.
    assert bench.step_flops(f, "at", True, 10) == 2 * 10 * 3 * f + 2 * 3 * f
    assert bench.step_flops(f, "at", False, 10) == 10 * 3 * f + 3 * f
    # TRADES: a clean forward in the attack, clean + adversarial in the update.
    assert bench.step_flops(f, "trades", False, 10) == 10 * 3 * f + f + 2 * 3 * f
    assert bench.step_flops(f, num_steps=20, kind="eval") == 20 * 3 * f + f


@pytest.mark.parametrize("method, use_dac, extra_forwards", [
    ("at", True, 3),        # one after each of the two attacks + the clean forward
    ("at", False, 2),
    ("trades", True, 4),    # the discarded trades_loss (3) + the robust step's first natural
    ("trades", False, 1),
    ("mart", True, 0),
])
def test_step_flops_counts_the_reference_bn_forwards(method, use_dac, extra_forwards):
    f = 1000.0
    plain = bench.step_flops(f, method, use_dac, 10)
    assert bench.step_flops(f, method, use_dac, 10, reference_bn_updates=True) == (
        plain + extra_forwards * f)


@pytest.mark.slow   # times four training configurations
def test_benchmark_end_to_end_with_and_without_dac(tmp_path):
    output = str(tmp_path / "bench.json")
    lines = []
    config = bench.BenchConfig(**TINY, use_dac="both", output=output)
    rows = bench.run_benchmark(config, log=lines.append)

    assert [(r["kind"], r["use_dac"]) for r in rows] == [("train", False), ("train", True)]
    for row in rows:
        for key in bench.REQUIRED_KEYS:
            assert key in row
        assert row["error"] is None
        assert row["img_per_s"] > 0
        assert row["steps"] == 2 and row["runs"] == 2 and len(row["step_ms_runs"]) == 2
        assert row["img_per_s"] == pytest.approx(8 / (row["step_ms_median"] / 1000))
        assert row["peak_memory_mb"] > 0
    off, on = rows
    # No speed threshold: timings on a shared CPU are too noisy for a unit test.
    assert on["dac_cost_ratio"] == pytest.approx(on["step_ms_median"] / off["step_ms_median"])
    assert "dac_cost_ratio" not in off
    assert on["gflop_per_image"] == pytest.approx(2 * off["gflop_per_image"], rel=0.01)
    assert json.load(open(output)) == json.loads(json.dumps(rows))
    # The table is the last thing logged: its header, then one line per row.
    table = lines[-1].splitlines()
    assert table[0].startswith("| arch |") and len(table) == 2 + len(rows)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow   # eight timed training configurations
def test_reference_bn_updates_rows_and_their_cost_ratio(monkeypatch):
    built = []

    class SpyDACModel(bench.DACModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.reference_bn_updates)

    monkeypatch.setattr(bench, "DACModel", SpyDACModel)
    lines = []
    config = bench.BenchConfig(**TINY, use_dac="on", reference_bn_updates="both")
    rows = bench.run_benchmark(config, log=lines.append)

    assert [(r["use_dac"], r["reference_bn_updates"]) for r in rows] == [(True, False),
                                                                         (True, True)]
    assert built == [False, True]   # each row trains the model it is labelled with
    off, on = rows
    assert off["error"] is None and on["error"] is None
    assert on["ref_bn_cost_ratio"] == pytest.approx(on["step_ms_median"] / off["step_ms_median"])
    assert "ref_bn_cost_ratio" not in off
    # DAC-AT: 3 forwards (no backward) more than the 2 x 10 x 3F + 2 x 3F of the step.
    assert on["gflop_per_image"] / off["gflop_per_image"] == pytest.approx(69 / 66)
    table = lines[-1].splitlines()
    assert "| ref BN |" in table[0] and "| ref BN cost |" in table[0]
    assert table[3].startswith("| small_cnn | train | at | on | on | 8 | fp32 |")


@pytest.mark.slow   # times two training configurations
def test_failing_mode_is_recorded_and_the_rest_runs(monkeypatch):
    real = bench.make_train_runner

    def flaky(spec, config):
        if spec["mode"] == "bf16":
            raise RuntimeError("No valid config found\nsecond line of a long TF error")
        return real(spec, config)

    monkeypatch.setitem(bench._RUNNERS, "train", flaky)
    config = bench.BenchConfig(**dict(TINY, modes=("bf16", "fp32")), use_dac="off")
    rows = bench.run_benchmark(config, log=lambda _: None)

    failed, ok = rows
    assert failed["mode"] == "bf16" and failed["img_per_s"] is None
    assert failed["error"] == "RuntimeError: No valid config found"
    assert ok["mode"] == "fp32" and ok["error"] is None and ok["img_per_s"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"


def test_eval_rows_time_the_cleverhans_pgd_that_evaluate_runs(monkeypatch):
    """The eval row used to time the training PGD (`dac_tf.attacks`); `evaluate` runs
    CleverHans' (`dac_tf.evaluation.attacks`). One timed batch must compute exactly
    what `evaluate` computes on that batch."""
    config = bench.BenchConfig(**TINY, eval_pgd_steps=2)
    keras.utils.set_random_seed(0)
    model = bench._build_base("small_cnn", "trades", config)
    images = bench._random_images(12, 0).astype(np.float32) / 255.0
    labels = bench._random_labels(12, 10, 0)
    run = bench.pgd_eval_runner(model, images, labels, num_steps=2, seed=3)
    record = runner.evaluate_model(loading.keras_logits_fn(model), images, labels,
                                   attacks="clean,pgd2", epsilon=8 / 255, batch_size=12,
                                   seed=3, show_progress=False, sanity_checks=False)
    assert run(1) == round(record["accuracy"]["pgd2"] * 12)
    assert record["attack_settings"]["pgd2"]["step_size"] == pytest.approx(2 / 255)
    # The benchmark's eval rows are built on it, with their own steps and seed.
    calls = []
    monkeypatch.setattr(bench, "pgd_eval_runner",
                        lambda *args, **kwargs: calls.append(kwargs) or (lambda n: 0))
    bench.make_eval_runner(dict(kind="eval", arch="small_cnn", batch_size=8, mode="xla"),
                           config)
    assert calls == [dict(num_steps=2, seed=0, jit_compile=True)]


def test_no_arithmetic_floor_is_shown_without_the_devices_rate():
    """A floor in images/s needs the device's sustained rate; none is assumed (a CPU
    used to get "% floor 0.0%" of an assumed 400 TFLOP/s)."""
    assert bench.BenchConfig(**TINY).peak_tflops == 0
    spec = dict(kind="train", arch="small_cnn", method="at", use_dac=True,
                reference_bn_updates=False)
    forward = {"small_cnn": 1e6}
    fields = bench._flop_fields(spec, bench.BenchConfig(**TINY), forward)
    assert fields["floor_img_per_s"] is None and fields["gflop_per_image"] > 0
    given = bench._flop_fields(spec, bench.BenchConfig(**TINY, peak_tflops=100), forward)
    assert given["floor_img_per_s"] == pytest.approx(100e12 / (fields["gflop_per_image"]
                                                               * 1e9))
    row = dict(spec, batch_size=8, mode="fp32", pipeline="synthetic", img_per_s=50.0,
               **fields)
    assert "floor" not in bench.format_table([row]).splitlines()[0]
    header = bench.format_table([dict(row, **given)], peak_tflops=100).splitlines()[0]
    assert "floor img/s @100TF" in header and "% floor" in header


def test_error_line_is_the_message_not_the_traceback():
    tf_style = ('Graph execution error:\n\nDetected at node x defined at (most recent call '
                'last):\n  File "a.py", line 6, in <module>\n    model.fit(ds)\n\n  File '
                '"b.py", line 2, in f\n\nNo valid config found for convolution\n\t '
                '[[{{node x}}]] [Op:__inference_step_1]')
    assert bench._one_line(RuntimeError(tf_style)) == (
        "RuntimeError: No valid config found for convolution")
    assert bench._one_line(ValueError("")) == "ValueError"


@pytest.mark.parametrize("changes, message", [
    (dict(modes=("fp16",)), "--modes: fp16 not valid"),
    (dict(reference_bn_updates="true"), "--reference_bn_updates='true' not valid"),
    (dict(archs=("resnet50",)), "--arch: resnet50 not valid"),
    (dict(warmup=0), "--warmup must be >= 1"),
    (dict(steps=3, steps_per_execution=2), "multiple of --steps_per_execution"),
])
def test_bad_settings_fail_before_running(changes, message):
    with pytest.raises(bench.BenchError, match=message):
        bench.BenchConfig(**dict(TINY, **changes)).validate()


def test_plan_puts_xla_last_and_times_the_input_pipeline_once_per_batch():
    config = bench.BenchConfig(archs=("small_cnn", "preact_resnet18"), methods=("at",),
                               batch_sizes=(8,), modes=("xla", "fp32"), use_dac="on",
                               pipelines=("synthetic", "tfds_like"), include_eval=True)
    specs = bench.plan_rows(config)
    kinds_modes = [(s["kind"], s["mode"]) for s in specs]
    assert kinds_modes.count(("input", "-")) == 1
    assert [m for _, m in kinds_modes if m != "-"] == ["fp32"] * 6 + ["xla"] * 6
    assert {(s["arch"], s["pipeline"]) for s in specs if s["kind"] == "train"} == {
        (a, p) for a in ("small_cnn", "preact_resnet18") for p in ("synthetic", "tfds_like")}
    # Default: reference_bn_updates off on every train row; not a setting of the others.
    assert {(s["kind"], s["reference_bn_updates"]) for s in specs} == {
        ("train", False), ("eval", None), ("input", None)}


@pytest.mark.slow   # the real entry point, a TensorFlow process
def test_cli_writes_json_and_prints_the_table_last(tmp_path):
    output = tmp_path / "out" / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = ["--arch=small_cnn", "--method=at", "--use_dac=off", "--batch_size=8",
            "--steps=2", "--runs=2", "--warmup=1", "--modes=xla", "--include_eval",
            "--eval_pgd_steps=2", f"--output={output}"]
    result = subprocess.run([sys.executable, "-m", "dac_tf.bench"] + args, cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]

    rows = json.loads(output.read_text())
    assert [(r["kind"], r["mode"]) for r in rows] == [("train", "xla"), ("eval", "xla")]
    for row in rows:
        assert set(bench.REQUIRED_KEYS) <= set(row)
        assert row["img_per_s"] > 0 and row["error"] is None
    assert rows[1]["num_steps"] == 2
    last = result.stdout.strip().splitlines()[-4:]
    assert last[0].startswith("| arch |")
    assert last[1].startswith("|---")
    assert last[2].startswith("| small_cnn | train | at | off | off | 8 | xla |")
    assert last[3].startswith("| small_cnn | eval | pgd2_eval |")

    bad = subprocess.run([sys.executable, "-m", "dac_tf.bench", "--modes=fp16"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--modes: fp16 not valid" in bad.stderr
