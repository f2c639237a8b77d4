"""Learning on real data: scikit-learn's 8x8 digits (ships with scikit-learn, no download).

The same small CNN, from the same initial weights, trained with AT and with AT+DAC: DAC
must end with lower adversarial certainty on its training adversarial examples, and both
must reach non-trivial adversarial accuracy on held-out digits.
"""

import numpy as np
import keras
import pytest
import tensorflow as tf

import dac_tf
from dac_tf import attacks
from dac_tf import data
from dac_tf.optimizers import TorchSGD

EPS, STEP, STEPS, EPOCHS = 32 / 255, 8 / 255, 5, 6


def train(use_dac, init, splits):
    base = dac_tf.models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1))
    base.set_weights(init)
    model = dac_tf.DACModel(base, method="at", use_dac=use_dac, epsilon=EPS, step_size=STEP,
                            num_steps=STEPS, seed=0)
    model.compile(optimizer=TorchSGD(0.05, momentum=0.9))
    ds = data.train_dataset(splits.x_train, splits.y_train, batch_size=64, seed=0,
                            num_epochs=EPOCHS)
    steps = data.steps_per_epoch(len(splits.y_train), 64)
    history = model.fit(ds, epochs=EPOCHS, steps_per_epoch=steps, shuffle=False,
                        verbose=0).history
    x_test = data.to_float32(splits.x_test)
    y_test = splits.y_test
    x_adv = attacks.pgd(lambda t: base(t, training=False), x_test, y_test, epsilon=EPS,
                        step_size=STEP, num_steps=10, seed=tf.constant([0, 1], tf.int64))
    logits = base.predict(x_adv, verbose=0)
    return history, np.mean(logits.argmax(1) == y_test), float(
        dac_tf.adversarial_certainty(logits))


@pytest.mark.slow   # 6 epochs of two trainings: about 20 s
def test_dac_lowers_training_ac_and_both_learn_robustly():
    splits = data.load("digits")
    keras.utils.set_random_seed(0)
    init = dac_tf.models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1)).get_weights()
    at_hist, at_robust, at_test_ac = train(False, init, splits)
    dac_hist, dac_robust, dac_test_ac = train(True, init, splits)
    print(f"AT:     train AC {at_hist['adv_certainty'][-1]:.3f}  train adv acc "
          f"{at_hist['adv_accuracy'][-1]:.3f}  test PGD-10 acc {at_robust:.3f}  test AC "
          f"{at_test_ac:.3f}")
    print(f"AT+DAC: train AC {dac_hist['adv_certainty'][-1]:.3f}  train adv acc "
          f"{dac_hist['adv_accuracy'][-1]:.3f}  test PGD-10 acc {dac_robust:.3f}  test AC "
          f"{dac_test_ac:.3f}")
    assert dac_hist["adv_certainty"][-1] < 0.9 * at_hist["adv_certainty"][-1]
    assert at_robust > 0.5 and dac_robust > 0.5          # chance is 0.1
    assert dac_test_ac < at_test_ac
