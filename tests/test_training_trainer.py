"""dac_tf.training.trainer: building a run's model and `train_and_evaluate` as a library
call (the program's runs: tests/test_train.py, tests/test_run_integrity.py)."""

import dataclasses
import json
import types

import numpy as np
import pytest
import tensorflow as tf

from dac_tf import config as config_lib
from dac_tf import training


def test_build_training_is_seeded_by_the_config_and_builds_the_optimizer_slots():
    config = config_lib.resolve(dict(dataset="digits", arch="small_cnn", epsilon=32,
                                     step_size=8, seed=3))
    splits = types.SimpleNamespace(num_classes=10, image_shape=(8, 8, 1))
    strategy = tf.distribute.get_strategy()
    first = training.build_training(config, splits, strategy, steps_per_epoch=5)
    second = training.build_training(config, splits, strategy, steps_per_epoch=5)
    for a, b in zip(first[0].get_weights(), second[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    base, model, optimizer, epoch = first
    assert model.base_model is base and int(epoch.numpy()) == 0
    # Momentum slots exist before the first step, so a checkpoint restores into them.
    assert len(optimizer.variables) > len(base.trainable_variables)
    other = dataclasses.replace(config, seed=4)
    third = training.build_training(other, splits, strategy, steps_per_epoch=5)[0]
    assert any(not np.array_equal(a, b) for a, b in zip(base.get_weights(),
                                                        third.get_weights()))


@pytest.mark.slow
def test_tfds_cifar10_path_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = config_lib.resolve(dict(
        dataset="cifar10", arch="small_cnn", method="trades", epochs=1, batch_size=16,
        max_steps_per_epoch=2, eval_examples=16, num_steps=1, report=False, verbose=0,
        model_dir=str(tmp_path / "cifar")))
    with tfds.testing.mock_data(num_examples=48):
        summary = training.train_and_evaluate(config)
    saved = json.loads((tmp_path / "cifar" / "config.json").read_text())
    assert saved["input_shape"] == [32, 32, 3] and saved["num_classes"] == 10
    assert summary["last"]["epoch"] == 1
    assert 0 <= summary["last"]["test_robust_accuracy"] <= 1
