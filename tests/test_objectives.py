"""Tests of dac_tf.objectives: the robust losses against closed forms written from their papers,
and the per-method defaults."""

import numpy as np
import pytest

from dac_tf import objectives


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


NAT = np.array([[2.0, 1.0, 0.1], [0.0, 3.0, -1.0]], "float32")
ADV = np.array([[0.5, 1.5, 0.2], [1.0, 0.9, 0.5]], "float32")
Y = np.array([0, 1], "int32")


def test_at_loss_is_cross_entropy_on_adversarial_logits():
    expected = -np.log(softmax(ADV)[np.arange(2), Y])
    np.testing.assert_allclose(objectives.at_loss(ADV, Y), expected, rtol=1e-5)


def test_trades_loss_closed_form():
    p, q = softmax(NAT), softmax(ADV)
    expected = -np.log(p[np.arange(2), Y]) + 6.0 * np.sum(p * np.log(p / q), 1)
    np.testing.assert_allclose(objectives.trades_loss(NAT, ADV, Y, 6.0), expected, rtol=1e-5)


def test_mart_loss_closed_form():
    p, q = softmax(NAT), softmax(ADV)
    # Example 0: y=0, top adversarial class is 1 (not y) -> y' = 1.
    # Example 1: y=1, top adversarial class is 0 (not y) -> y' = 0.
    other = np.array([1, 0])
    bce = -np.log(q[np.arange(2), Y]) - np.log(1.0001 - q[np.arange(2), other] + 1e-12)
    kl = np.sum(p * (np.log(p) - np.log(q + 1e-12)), 1)
    expected = bce + 5.0 * kl * (1.0000001 - p[np.arange(2), Y])
    np.testing.assert_allclose(objectives.mart_loss(NAT, ADV, Y, 5.0), expected, rtol=1e-5)


def test_mart_second_best_class_when_the_top_class_is_the_label():
    adv = np.array([[3.0, 1.0, 2.0]], "float32")   # top = 0 = y -> y' = 2 (runner-up)
    nat = np.zeros((1, 3), "float32")
    q = softmax(adv)
    p = softmax(nat)
    expected = (-np.log(q[0, 0]) - np.log(1.0001 - q[0, 2] + 1e-12)
                + 5.0 * np.sum(p * np.log(p / (q + 1e-12))) * (1.0000001 - p[0, 0]))
    np.testing.assert_allclose(objectives.mart_loss(nat, adv, np.array([0]), 5.0),
                               [expected], rtol=1e-5)


def test_defaults_table():
    assert objectives.defaults("at").lr_schedule == "piecewise_at"
    assert objectives.defaults("mart").batch_size == 512
    assert objectives.defaults("trades").epochs == 76
    with pytest.raises(ValueError, match="method"):
        objectives.defaults("fgsm")
