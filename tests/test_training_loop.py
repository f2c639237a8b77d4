"""dac_tf.training.loop: batches per epoch and the training step's log keys.

`fit_epochs` itself runs in every training test (Keras' `fit`: tests/test_train.py; the
multi-worker loop: tests/test_multiworker.py, slow).
"""

import keras
import numpy as np
import pytest

import dac_tf
from dac_tf import optimizers
from dac_tf.training import loop


@pytest.mark.parametrize("train_size, batch_size, cap, expected", [
    (1280, 128, 0, 10), (1281, 128, 0, 11), (1279, 128, 0, 10), (1280, 128, 3, 3),
    (1280, 128, 50, 10), (5, 128, 0, 1),
])
def test_steps_per_epoch_is_every_example_once_under_the_cap(train_size, batch_size, cap,
                                                              expected):
    assert loop.steps_per_epoch(train_size, batch_size, cap) == expected


@pytest.mark.parametrize("use_dac, method, reference_bn", [
    (True, "at", False), (False, "trades", True), (True, "at", True)])
def test_train_log_names_are_the_keys_the_training_step_returns(use_dac, method,
                                                                reference_bn):
    """The multi-worker loop logs these names: exactly what `DACModel.train_step`
    returns (the clean accuracy only with the AT reference's clean forward)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 3, 1))
    base = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    model = dac_tf.DACModel(base, method=method, use_dac=use_dac, epsilon=0.1,
                            step_size=0.05, num_steps=1, reference_bn_updates=reference_bn)
    model.compile(optimizer=optimizers.TorchSGD(0.1, momentum=0.9))
    x = np.random.default_rng(0).random((4, 3, 3, 1), np.float32)
    logs = model.train_step((x, np.array([0, 1, 2, 0])))
    assert sorted(loop.train_log_names(model)) == sorted(logs)
