"""dac_tf.benchmark.kernels: the timed kernels are the layer's own arithmetic, and the
measured ceiling is weighed as the step runs the kernels (no timing thresholds)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf.benchmark import flops
from dac_tf.benchmark import kernels
from test_benchmark_flops import tiny_model


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "valid")])
def test_kernels_are_the_layers_forward_and_its_two_gradients(strides, padding):
    inputs = keras.Input((7, 7, 3))
    layer = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, use_bias=False)
    model = keras.Model(inputs, keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2)(model.output))
    conv, dense = flops.layer_shapes(model)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, 7, 7, 3)), tf.float32)
    w = layer.kernel
    # Independent: Keras' own layer, and the tape's gradients of sum(output * dy).
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        dy = tf.constant(rng.random(y.shape), tf.float32)
        objective = tf.reduce_sum(y * dy)
    expected = {"forward": y, "input_grad": tape.gradient(objective, x),
                "weight_grad": tape.gradient(objective, w)}
    for op in kernels.OPS:
        got = kernels.kernel_fn(conv, op)(x, tf.convert_to_tensor(w), dy)
        np.testing.assert_allclose(got, expected[op], rtol=1e-5, atol=1e-5, err_msg=op)
    xd, wd = tf.constant(rng.random((3, dense.kernel_shape[0])), tf.float32), dense.kernel_shape
    wd = tf.constant(rng.random(wd), tf.float32)
    dyd = tf.constant(rng.random((3, 2)), tf.float32)
    np.testing.assert_allclose(kernels.kernel_fn(dense, "input_grad")(xd, wd, dyd),
                               dyd.numpy() @ wd.numpy().T, rtol=1e-5)
    np.testing.assert_allclose(kernels.kernel_fn(dense, "weight_grad")(xd, wd, dyd),
                               xd.numpy().T @ dyd.numpy(), rtol=1e-5)


def _entry(count, in_update, gflop, ms):
    entry = {"count": count, "count_input_grad_in_update": in_update, "gflop": gflop}
    entry.update({f"{op}_ms": t for op, t in zip(kernels.OPS, ms)})
    return entry


def test_ideal_step_time_weighs_each_kernel_as_the_step_runs_it():
    # A stem (no input gradient in updates) and two equal body layers.
    stem, body = _entry(1, 0, 0.5, (1.0, 2.0, 3.0)), _entry(2, 2, 2.0, (4.0, 5.0, 6.0))
    passes = flops.StepPasses(attack=10, update=2, forward=1)
    # By hand, in ms: attack passes run forward + input grad of every layer, updates
    # forward + weight grad of every layer + input grad of the body, forwards forward.
    stem_ms = 10 * (1 + 2) + 2 * (1 + 3) + 1 * 1
    body_ms = 2 * (10 * (4 + 5) + 2 * (4 + 6 + 5) + 1 * 4)
    assert kernels.ideal_step_seconds([stem, body], passes) == pytest.approx(
        (stem_ms + body_ms) / 1000)
    # GFLOP: the same weights, each kernel the forward's work.
    stem_gflop = 0.5 * (10 * 2 + 2 * 2 + 1)
    body_gflop = 2 * 2.0 * (10 * 2 + 2 * 3 + 1)
    assert kernels.step_gflop([stem, body], passes) == pytest.approx(stem_gflop + body_gflop)


def test_summary_rates_are_work_over_time():
    entries = [_entry(1, 0, 0.5, (1.0, 2.0, 4.0)), _entry(2, 2, 2.0, (4.0, 5.0, 6.0))]
    rates = kernels.summary(entries)
    work = 0.5 + 2 * 2.0
    assert rates["forward_gflop_per_s"] == pytest.approx(work / ((1.0 + 8.0) / 1000))
    assert rates["weight_grad_gflop_per_s"] == pytest.approx(work / ((4.0 + 12.0) / 1000))
    # All three: (1 + 8) + (2 + 10) + (4 + 12) = 37 ms.
    assert rates["kernel_gflop_per_s"] == pytest.approx(3 * work / (37.0 / 1000))


def test_measured_kernels_of_a_model_are_well_formed_and_match_the_flop_count(monkeypatch):
    monkeypatch.setattr(kernels, "CALL_SECONDS", 0.0)   # one kernel per call: quick
    model = tiny_model()
    shapes = flops.layer_shapes(model)
    entries = kernels.measure_model_kernels(shapes + shapes[1:2], 4, warmup=1, runs=1,
                                            steps=1)
    # Distinct shapes once each (the repeated conv counted twice), in model order.
    assert [e["count"] for e in entries] == [1, 2, 1]
    assert [e["count_input_grad_in_update"] for e in entries] == [0, 2, 1]
    assert entries[0]["layer"] == "conv 8x8x3 k3x3 s1 same -> 8x8x4"
    for entry in entries:
        for op in kernels.OPS:
            assert entry[f"{op}_ms"] > 0
            assert entry[f"{op}_gflop_per_s"] == pytest.approx(
                entry["gflop"] / (entry[f"{op}_ms"] / 1000))
    # Summed per layer, the entries give the step's FLOP count of `step_flops`.
    forward = flops.forward_flops(model) + shapes[1].flops
    passes = flops.step_passes("at", True, 3)
    expected = flops.step_flops(forward, "at", True, 3,
                                input_layer_flops=flops.input_layer_flops(model))
    assert kernels.step_gflop(entries, passes) == pytest.approx(4 * expected / 1e9)


def test_only_plain_conv2d_and_dense_layers_are_timed():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3)(inputs))
    (shape,) = flops.layer_shapes(model)
    assert shape.kind == "other" and shape.flops == 2 * 6 * 6 * 3 * 3 * 3
    with pytest.raises(ValueError, match="only Conv2D"):
        kernels.time_layer_kernels(shape, 2)


@pytest.mark.slow   # compiles each kernel with XLA
def test_xla_kernels_run():
    shape = flops.layer_shapes(tiny_model())[1]
    seconds = kernels.time_layer_kernels(shape, 4, jit_compile=True, warmup=1, runs=1,
                                         steps=1)
    assert set(seconds) == set(kernels.OPS) and min(seconds.values()) > 0
