"""dac_tf.training.strategies: the strategy of `--strategy` and the checks that need it.

conftest.py splits the CPU into five logical devices, so `--cpu_replicas=2` gives two
real replicas here. A bad TF_CONFIG is tested through the program
(tests/test_cli_errors.py), two real workers in tests/test_multiworker.py (slow).
"""

import pytest
import tensorflow as tf

from dac_tf import config as config_lib
from dac_tf.training import strategies


def test_one_device_without_a_gpu_and_mirrored_over_cpu_replicas():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks the CPU-only choices")
    assert strategies.make_strategy("one_device").num_replicas_in_sync == 1
    assert isinstance(strategies.make_strategy("mirrored"), tf.distribute.OneDeviceStrategy)
    mirrored = strategies.make_strategy("mirrored", cpu_replicas=2)
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2


def test_a_global_batch_smaller_than_the_replicas_is_refused_naming_both():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks the CPU replicas")
    config = config_lib.resolve(dict(strategy="mirrored", cpu_replicas=2, batch_size=1))
    with pytest.raises(config_lib.ConfigError, match="--batch_size=1 is smaller than the 2"):
        strategies.make_checked_strategy(config)
    ok = config_lib.resolve(dict(strategy="mirrored", cpu_replicas=2, batch_size=2))
    assert strategies.make_checked_strategy(ok).num_replicas_in_sync == 2


def test_only_the_chief_of_a_cluster_writes_the_run(monkeypatch):
    config = config_lib.resolve(dict(strategy="multi_worker"))
    cluster = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": %d}}'
    monkeypatch.setenv("TF_CONFIG", cluster % 0)
    assert strategies.task_writes_files(config)
    monkeypatch.setenv("TF_CONFIG", cluster % 1)
    assert not strategies.task_writes_files(config)
    assert strategies.task_writes_files(config_lib.resolve({}))   # one machine: always
