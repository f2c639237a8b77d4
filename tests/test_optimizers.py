"""Tests of dac_tf.optimizers: TorchSGD keeps PyTorch's momentum convention (also after a
learning-rate drop and after a `.keras` file is loaded). TorchSGD inside DACModel's step:
tests/test_dac_model.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf import optimizers
from dac_tf import schedules


def test_torch_sgd_differs_from_keras_sgd_after_lr_drop():
    """Why TorchSGD exists: after a learning-rate change the two conventions part."""
    variables = [keras.Variable(np.ones(3, "float32")) for _ in range(2)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])
    opts = [keras.optimizers.SGD(schedule, momentum=0.9),
            optimizers.TorchSGD(schedule, momentum=0.9)]
    for v, opt in zip(variables, opts):
        for _ in range(3):
            opt.apply([tf.ones(3)], [v])
    # PyTorch: buffers 1, 1.9, 2.71; w = 1 - 0.1*1 - 0.1*1.9 - 0.01*2.71
    np.testing.assert_allclose(variables[1].numpy(), 1 - 0.1 - 0.19 - 0.0271, rtol=1e-6)
    # Keras: v = -0.1, -0.19, -0.171 - 0.01; w = 1 - 0.1 - 0.19 - 0.181
    np.testing.assert_allclose(variables[0].numpy(), 1 - 0.1 - 0.19 - 0.181, rtol=1e-6)


def test_torch_sgd_serializes_and_keeps_pytorchs_update_after_loading(tmp_path):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(
        optimizers.TorchSGD(schedule, momentum=0.8, nesterov=True)))
    assert type(restored) is optimizers.TorchSGD
    assert (restored.momentum, restored.nesterov) == (0.8, True)
    assert [float(schedules.from_optimizer(restored)(i)) for i in range(3)] == \
        pytest.approx([0.1, 0.1, 0.01])

    # In a `.keras` file, with its state: a plain Keras model, two updates, saved, loaded.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.compile(optimizer=optimizers.TorchSGD(schedule, momentum=0.9), loss="mse")
    plain.fit(x, y, batch_size=4, epochs=2, verbose=0)
    path = str(tmp_path / "plain.keras")
    plain.save(path)
    loaded = keras.saving.load_model(path)
    opt = loaded.optimizer
    assert type(opt) is optimizers.TorchSGD and int(opt.iterations) == 2
    buffers = [np.asarray(b) for b in opt.momentums]
    for saved, restored in zip(plain.optimizer.momentums, buffers):
        np.testing.assert_array_equal(np.asarray(saved), restored)
    assert all(np.abs(b).min() > 0 for b in buffers)
    # PyTorch SGD (dampening 0): b = mu * b + g; w -= lr * b, at lr(2) = 0.01.
    weights = [v.numpy() for v in loaded.trainable_variables]
    grads = [rng.normal(size=w.shape).astype("float32") for w in weights]
    opt.apply([tf.constant(g) for g in grads], loaded.trainable_variables)
    for v, w, b, g in zip(loaded.trainable_variables, weights, buffers, grads):
        np.testing.assert_allclose(v.numpy(), w - 0.01 * (0.9 * b + g), rtol=1e-6,
                                   atol=1e-7)
