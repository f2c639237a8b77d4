"""The native AutoAttack cross-checked against a second implementation: pyautoattack.

`pyautoattack` (PyPI) packages the authors' PyTorch AutoAttack (fra31/auto-attack); it
runs on the TensorFlow model through `dac_tf.torch_bridge` (TF forward pass, TF
vector-Jacobian product as the backward pass). Both run the standard version with the
standard budgets. On a linear model both must find exactly the closed-form set of robust
points; on a trained CNN they must agree example by example up to the few points where
randomised attacks can differ.

Optional (marker `crosscheck`): skipped unless torch and pyautoattack are installed.
`.ci/run` installs both when torch's CPU wheel is on the machine.
"""

import keras
import numpy as np
import pytest

from dac_tf import data
from dac_tf import models
from dac_tf.evaluation import loading
from dac_tf.evaluation import runner

pytestmark = [pytest.mark.crosscheck, pytest.mark.slow]
pytest.importorskip("torch")
pytest.importorskip("pyautoattack")

# Test helpers of the native attack's own tests: a linear model with the exact minimal
# L-inf distance, and points far enough from the box faces that the box never binds.
from test_autoattack import Linear, interior_points  # noqa: E402


def _autoattack_flags(logits_fn, x, y, epsilon, impl):
    record = runner.evaluate_model(
        logits_fn, x, y, attacks="clean,autoattack", epsilon=epsilon, batch_size=128,
        show_progress=False, sanity_checks=False, autoattack_options=dict(impl=impl))
    assert record["columns"]["autoattack"] == "AutoAttack"   # standard version, both
    flags = np.frombuffer(record["robust_flags"]["autoattack"].encode(), np.uint8) == ord("1")
    return flags, record


def test_both_implementations_find_the_closed_form_robust_set_of_a_linear_model():
    model = Linear(10, seed=3)
    x, y = interior_points(model, 16, seed=4)
    distance = model.distance(x, y)
    epsilon = float(np.median(distance))
    keep = np.abs(distance - epsilon) > 2e-3     # no point on the boundary itself
    x, y, distance = x[keep], y[keep], distance[keep]
    expected = distance > epsilon
    assert 0 < expected.sum() < len(expected)    # the check is not trivially all/none

    native, _ = _autoattack_flags(model, x, y, epsilon, "native")
    torch_flags, record = _autoattack_flags(model, x, y, epsilon, "pyautoattack")
    np.testing.assert_array_equal(native, expected)
    np.testing.assert_array_equal(torch_flags, expected)
    assert record["autoattack"]["package"] == "pyautoattack"
    assert record["autoattack"]["max_linf"] <= epsilon + 1e-6


def test_both_implementations_agree_on_a_trained_cnn():
    digits = data.load("digits")
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1),
                         normalization=None, widths=(16, 32, 32))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=10, batch_size=64, verbose=0)
    logits_fn = loading.keras_logits_fn(model)
    x, y = data.to_float32(digits.x_test[:100]), digits.y_test[:100].astype(np.int32)

    native, native_record = _autoattack_flags(logits_fn, x, y, 0.1, "native")
    torch_flags, _ = _autoattack_flags(logits_fn, x, y, 0.1, "pyautoattack")
    # A real attack problem: neither nothing nor everything survives.
    assert 0.1 < native.mean() < native_record["accuracy"]["clean"] - 0.1
    assert (native == torch_flags).mean() >= 0.95
    assert abs(native.mean() - torch_flags.mean()) <= 0.03
