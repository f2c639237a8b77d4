"""Tests of dac_tf.torch_bridge (run when torch is installed): the torch module is the TF model
forward and backward; the official AutoAttack path on a stub `autoattack` package."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf import models
from dac_tf.evaluation import attacks
from dac_tf.evaluation import loading
from dac_tf.evaluation import runner
from helpers_evaluation import linear_fn


def test_torch_module_forward_and_backward_are_the_tf_model():
    torch = pytest.importorskip("torch")
    from dac_tf import torch_bridge

    keras.utils.set_random_seed(1)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1), widths=(8, 8))
    fn = loading.keras_logits_fn(model)
    x = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    module = torch_bridge.TFLogitsModule(fn)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    out = module(x_t)
    (out * torch.from_numpy(weights)).sum().backward()
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        logits = fn(x_tf)
        objective = tf.reduce_sum(logits * weights)
    grad = tape.gradient(objective, x_tf).numpy()
    np.testing.assert_allclose(out.detach().numpy(), logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(x_t.grad.numpy().transpose(0, 2, 3, 1), grad, atol=1e-5)


def test_official_autoattack_glue_on_a_stub_package(monkeypatch):
    """The official path, with a stand-in `autoattack` package running a torch FGSM."""
    torch = pytest.importorskip("torch")
    import types

    class StubAutoAttack:
        def __init__(self, model, norm, eps, seed, version, device, verbose):
            assert norm == "Linf" and version == "standard" and device == "cpu"
            self.model, self.eps = model, eps
            self.apgd, self.apgd_targeted, self.fab, self.square = (
                types.SimpleNamespace() for _ in range(4))

        def run_standard_evaluation(self, x, y, bs):
            x = x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(self.model(x), y, reduction="sum").backward()
            # 1.5 eps overshoots the ball: the bridge projects it back to FGSM's point.
            return (x + 1.5 * self.eps * x.grad.sign()).clamp(0, 1).detach()

    monkeypatch.setitem(sys.modules, "autoattack",
                        types.SimpleNamespace(AutoAttack=StubAutoAttack))
    fn = linear_fn(4)
    x = np.random.default_rng(2).uniform(0.2, 0.8, (20, 8, 8, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1).astype(np.int32)
    y[:3] = (y[:3] + 1) % 10
    record = runner.evaluate_model(fn, x, y, attacks="autoattack", epsilon=0.02,
                                   batch_size=8, show_progress=False,
                                   autoattack_options=dict(impl="official"))
    adv = np.clip(attacks.fgsm(fn, x, y, epsilon=0.02).numpy(), 0, 1)
    expected = (np.argmax(fn(x).numpy(), -1) == y) & (np.argmax(fn(adv).numpy(), -1) == y)
    assert record["accuracy"]["autoattack"] == pytest.approx(expected.mean())
    assert record["autoattack"]["impl"] == "official"
    assert record["autoattack"]["max_linf"] <= 0.02 + 1e-6
    assert record["columns"]["autoattack"] == "AutoAttack"

