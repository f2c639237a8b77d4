"""Tests of dac_tf.certainty: the AC measures against closed forms written from the paper."""

import numpy as np
import pytest
import tensorflow as tf

import dac_tf


LOGITS = np.array([[1.0, 2.0, 4.0, -1.0], [0.5, 0.5, 0.5, 0.5], [3.0, -2.0, 0.0, 1.0]],
                  "float32")


def test_std_measure_is_unbiased_std_averaged_over_batch():
    expected = np.mean(np.std(LOGITS, axis=1, ddof=1))
    np.testing.assert_allclose(dac_tf.adversarial_certainty(LOGITS, "std"), expected,
                               rtol=1e-6)


def test_var_measure_is_population_variance_averaged_over_batch():
    expected = np.mean(np.var(LOGITS, axis=1, ddof=0))
    np.testing.assert_allclose(dac_tf.adversarial_certainty(LOGITS, "var"), expected,
                               rtol=1e-6)


def test_std_is_not_tf_reduce_std():
    ours = float(dac_tf.adversarial_certainty(LOGITS[:1], "std"))
    assert abs(ours - float(tf.math.reduce_std(LOGITS[:1]))) > 1e-3


def test_certainty_gradient_is_finite_for_constant_logits():
    logits = tf.Variable(np.zeros((2, 5), "float32"))
    with tf.GradientTape() as tape:
        ac = dac_tf.adversarial_certainty(logits)
    assert np.all(np.isfinite(tape.gradient(ac, logits).numpy()))


def test_certainty_accepts_bfloat16_and_returns_float32():
    ac = dac_tf.adversarial_certainty(tf.cast(LOGITS, tf.bfloat16))
    assert ac.dtype == tf.float32
    np.testing.assert_allclose(ac, np.mean(np.std(LOGITS, axis=1, ddof=1)), rtol=1e-2)


def test_bad_measure():
    with pytest.raises(ValueError, match="ac_measure"):
        dac_tf.adversarial_certainty(LOGITS, "entropy")
