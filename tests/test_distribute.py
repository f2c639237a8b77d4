"""MirroredStrategy: several replicas give the same update as one device on the same batch.

conftest.py splits the CPU into three logical devices. The equality tests use a model
without BatchNorm: under MirroredStrategy BN normalises with per-replica statistics
(like the reference's nn.DataParallel), which is a different function of the batch by
design. Batches that do not split evenly, down to a last batch smaller than the replica
count (some replicas get no example), must still give the single-device update.
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


def train(strategy, init_weights, method, batchnorm=False, n=16, batch_size=8, **kwargs):
    x, y = data(n)
    # TRADES's KL attack has a zero gradient at x without its noise start, and the noise
    # is drawn per replica; num_steps=0 keeps its loss scaling under test deterministically.
    num_steps = 0 if method == "trades" else 3
    with strategy.scope():
        base = make_base(batchnorm)
        if init_weights is not None:
            base.set_weights(init_weights)
        model = dac_tf.DACModel(base, method=method, random_start=False, weight_decay=0.01,
                                epsilon=0.1, step_size=0.03, num_steps=num_steps, **kwargs)
        model.compile(optimizer=optimizers.TorchSGD(0.1, momentum=0.9))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    history = model.fit(ds, epochs=1, verbose=0).history
    return base, history


_STRATEGIES = {}


# Disjoint device sets, and group keys of their own (TensorFlow's test hook
# `_collective_key_base`): two MirroredStrategy objects otherwise hand out the same
# collective group keys ("joining a group with size 3, but that group has size 2").
_DEVICES = {2: (0, 1), 3: (2, 3, 4)}


def cpu_strategy(replicas):
    """One MirroredStrategy per replica count and process, over its own logical CPUs."""
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 5:
        pytest.skip("needs the five logical CPUs set up by conftest.py")
    if replicas not in _STRATEGIES:
        saved = tf.distribute.MirroredStrategy._collective_key_base
        tf.distribute.MirroredStrategy._collective_key_base = 10_000 * replicas
        try:
            _STRATEGIES[replicas] = tf.distribute.MirroredStrategy(
                [cpus[i].name for i in _DEVICES[replicas]])
        finally:
            tf.distribute.MirroredStrategy._collective_key_base = saved
    return _STRATEGIES[replicas]


def two_cpu_strategy():
    return cpu_strategy(2)


# With --runslow (the uneven-batch test below runs MART by default).
@pytest.mark.parametrize("method", [pytest.param("trades", marks=pytest.mark.slow),
                                    pytest.param("at", marks=pytest.mark.slow),
                                    pytest.param("mart", marks=pytest.mark.slow)])
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


# Every replica count and remainder, AT and MART's robust loss, with --runslow (the
# default run checks uneven splits in the test below and in test_keras_user.py).
@pytest.mark.parametrize("replicas, remainder, method", [
    pytest.param(3, 1, "at", marks=pytest.mark.slow),
    pytest.param(3, 1, "mart", marks=pytest.mark.slow),
    *[pytest.param(r, m, "at", marks=pytest.mark.slow)
      for r in (2, 3) for m in (0, 1, 2) if (r, m) != (3, 1)],
    *[pytest.param(r, m, "mart", marks=pytest.mark.slow)
      for r in (2, 3) for m in (0, 1, 2) if (r, m) != (3, 1)]])
def test_uneven_and_tiny_last_batches_equal_one_device(replicas, remainder, method):
    """12 + remainder examples in batches of 6: the last batch has `remainder` examples,
    so with 3 replicas one or two replicas get none."""
    keras.utils.set_random_seed(1)
    init = make_base().get_weights()
    kwargs = dict(n=12 + remainder, batch_size=6)
    single, single_logs = train(tf.distribute.OneDeviceStrategy("/cpu:0"), init, method,
                                **kwargs)
    mirrored, mirrored_logs = train(cpu_strategy(replicas), init, method, **kwargs)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    # The epoch means weight every example once, as on one device.
    for key in ("loss", "adv_accuracy", "adv_certainty", "ac_loss"):
        np.testing.assert_allclose(single_logs[key], mirrored_logs[key], rtol=1e-4)


@pytest.mark.parametrize("replicas, n, batch_size, method", [
    (2, 14, 7, "at"),                 # every batch 4 + 3
    pytest.param(3, 17, 8, "at", marks=pytest.mark.slow),  # 3 + 3 + 2, then 1
    pytest.param(2, 14, 7, "trades", marks=pytest.mark.slow),
    pytest.param(3, 17, 8, "mart", marks=pytest.mark.slow)])
def test_batches_that_never_split_evenly_equal_one_device(replicas, n, batch_size, method):
    """A global batch that is not a multiple of the replica count, from the first batch
    on (`--cpu_replicas=2 --batch_size=63` used to fail in Keras' build from the first
    batch, which reduces it over the replicas)."""
    keras.utils.set_random_seed(2)
    init = make_base().get_weights()
    kwargs = dict(n=n, batch_size=batch_size)
    single, single_logs = train(tf.distribute.OneDeviceStrategy("/cpu:0"), init, method,
                                **kwargs)
    mirrored, mirrored_logs = train(cpu_strategy(replicas), init, method, **kwargs)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    for key in ("loss", "adv_accuracy", "adv_certainty", "ac_loss"):
        np.testing.assert_allclose(single_logs[key], mirrored_logs[key], rtol=1e-4)


def _replica_values(variable):
    value = getattr(variable, "value", variable)
    return [np.asarray(v) for v in getattr(value, "values", [value])]


@pytest.mark.parametrize("replicas, method", [
    pytest.param(3, "at", marks=pytest.mark.slow),
    pytest.param(2, "trades", marks=pytest.mark.slow),
    pytest.param(2, "at", marks=pytest.mark.slow),
    pytest.param(3, "trades", marks=pytest.mark.slow)])
def test_batchnorm_statistics_stay_finite_and_are_replica_0s(replicas, method):
    """A last batch of one example leaves the other replicas with empty batches: their
    batch statistics are NaN. Every replica must end with replica 0's finite statistics
    (nn.DataParallel keeps device 0's)."""
    base, logs = train(cpu_strategy(replicas), None, method, batchnorm=True, n=13,
                       batch_size=6, reference_bn_updates=True)
    assert all(np.isfinite(v[0]) for v in logs.values()), logs
    for variable in base.non_trainable_variables:
        copies = _replica_values(variable)
        assert len(copies) == replicas
        for copy in copies:
            assert np.all(np.isfinite(copy))
            np.testing.assert_array_equal(copy, copies[0])
