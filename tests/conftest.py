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
