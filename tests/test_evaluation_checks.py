"""Tests of dac_tf.evaluation.checks: the sanity checks catch broken models."""

import keras
import numpy as np
import tensorflow as tf

from dac_tf.evaluation import attacks
from dac_tf.evaluation import checks
from helpers_evaluation import linear_fn


def test_sanity_checks_catch_broken_models(digits):
    x, y = digits.x_test[:16], digits.y_test[:16]
    fn = linear_fn(0)
    assert checks.check_logits(fn(x))["passed"]
    assert not checks.check_logits(tf.nn.softmax(fn(x)))["passed"]

    dropout = keras.layers.Dropout(0.5)
    assert checks.check_deterministic(fn, x)["passed"]
    assert not checks.check_deterministic(lambda t: dropout(fn(t), training=True),
                                          x)["passed"]

    assert checks.check_gradients(fn, x, y)["passed"]
    # A saturated model: the input gradient is exactly zero for the first 6 examples.
    keep = tf.constant([0.0] * 6 + [1.0] * 10)[:, None, None, None]
    masked = checks.check_gradients(lambda t: fn(t * keep), x, y)
    assert not masked["passed"] and "6 of 16" in masked["detail"]
    no_path = checks.check_gradients(lambda t: fn(tf.round(t)), x, y)
    assert not no_path["passed"] and "no gradient" in no_path["detail"]

    assert checks.check_eps_zero(fn, x, y)["passed"]

    spec = attacks.parse_attacks("fgsm,pgd20,pgd100")
    ok = checks.check_monotone(spec, dict(fgsm=0.6, pgd20=0.5, pgd100=0.49), 1000)
    assert all(c["passed"] for c in ok) and len(ok) == 3
    bad = checks.check_monotone(spec, dict(fgsm=0.4, pgd20=0.5, pgd100=0.55), 1000)
    assert not any(c["passed"] for c in bad)

    white = np.array([True] * 10 + [False] * 990)
    assert checks.check_black_box(white, white, 1000)["passed"]
    after = white.copy()
    after[:5] = False
    assert not checks.check_black_box(white, after, 1000)["passed"]

