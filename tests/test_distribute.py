"""MirroredStrategy: two replicas give the same update as one device on the same batch.

conftest.py splits the CPU into two logical devices. The model has no BatchNorm:
under MirroredStrategy BN normalises with per-replica statistics (like the reference's
nn.DataParallel), which is a different function of the batch by design.
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

import dac_tf
from dac_tf import optimizers


def make_base(batchnorm=False):
    inputs = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    if batchnorm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(4)(h))


def data(n=16):
    rng = np.random.default_rng(0)
    return (rng.uniform(0.05, 0.95, (n, 5, 5, 2)).astype("float32"),
            rng.integers(0, 4, n).astype("int32"))


def train(strategy, init_weights, method, batchnorm=False):
    x, y = data()
    # TRADES's KL attack has a zero gradient at x without its noise start, and the noise
    # is drawn per replica; num_steps=0 keeps its loss scaling under test deterministically.
    num_steps = 0 if method == "trades" else 3
    with strategy.scope():
        base = make_base(batchnorm)
        if init_weights is not None:
            base.set_weights(init_weights)
        model = dac_tf.DACModel(base, method=method, random_start=False, weight_decay=0.01,
                                epsilon=0.1, step_size=0.03, num_steps=num_steps)
        model.compile(optimizer=optimizers.TorchSGD(0.1, momentum=0.9))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    history = model.fit(ds, epochs=1, verbose=0).history
    return base, history


_STRATEGY = []


def two_cpu_strategy():
    # One strategy per process: several MirroredStrategy objects over the same devices
    # can hand out clashing collective keys.
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs the two logical CPUs set up by conftest.py")
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy([d.name for d in cpus[:2]]))
    return _STRATEGY[0]


@pytest.mark.parametrize("method", ["at", "trades", "mart"])
def test_two_replicas_equal_one_device(method):
    keras.utils.set_random_seed(0)
    init = make_base().get_weights()
    single, single_logs = train(tf.distribute.OneDeviceStrategy("/cpu:0"), init, method)
    mirrored_strategy = two_cpu_strategy()
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored, mirrored_logs = train(mirrored_strategy, init, method)
    moved = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), init))
    assert moved > 1e-3
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    for key in ("loss", "adv_accuracy", "adv_certainty", "ac_loss"):
        np.testing.assert_allclose(single_logs[key], mirrored_logs[key], rtol=1e-4)


def test_batchnorm_model_trains_under_mirrored_strategy():
    _, logs = train(two_cpu_strategy(), None, "at", batchnorm=True)
    assert all(np.isfinite(v[0]) for v in logs.values())
