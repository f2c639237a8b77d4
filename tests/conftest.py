"""Shared test setup.

The CPU is split into five logical devices before TensorFlow initialises, so the
MirroredStrategy tests can run two replicas (CPU:0-1) and three (CPU:2-4) on one machine (as NSL's
multi-device tests do). Everything else runs on the default device as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The kernels `python -m dac_tf.*` runs with (dac_tf/__init__.py turns oneDNN on for the
# programs); TF_ENABLE_ONEDNN_OPTS=0 in the environment tests the Eigen kernels instead.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 5)
except RuntimeError:  # already initialised (e.g. a plugin imported TF first)
    pass


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (CI does: bash .ci/run)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds (several processes or whole runs); "
        "skipped unless --runslow, which CI passes")
    config.addinivalue_line(
        "markers", "crosscheck: compares with a second implementation (needs torch and "
        "pyautoattack; skipped when they are not installed)")


# The trained digits model of the evaluation tests (tests/test_evaluate.py,
# tests/test_evaluation_*.py): built once per session, not once per file.
@pytest.fixture(scope="session")
def digits():
    from dac_tf import data
    return data.load("digits")


@pytest.fixture(scope="session")
def trained(digits):
    """small_cnn trained with plain Keras on digits (about 3 s; ~98% test accuracy)."""
    import keras
    from dac_tf import models
    from helpers_evaluation import WIDTHS
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1),
                         normalization=None, widths=WIDTHS)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=10, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def logits_fn(trained):
    from dac_tf.evaluation import loading
    return loading.keras_logits_fn(trained)
