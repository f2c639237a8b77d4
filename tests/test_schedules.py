"""Learning-rate schedules against the reference scripts' own rules, written out here.

The reference (TrustMLRG/AdvCertainty) sets the rate in Python floats: dac_at_cifar10.py
calls `lr_schedule(epoch + (i + 1) / len(train_batches))` before every batch;
dac_trades_cifar10.py and dac_mart_cifar10.py call `adjust_learning_rate(optimizer,
epoch)` before every epoch, epochs counted from 1. Both are evaluated below at every
batch and rounded once to float32, the dtype of the schedules' rates.
"""

import math

import keras
import numpy as np
import pytest

from dac_tf import schedules


def lr(schedule, step):
    return float(schedule(step))


def rates(schedule, steps):
    """The schedule at batches 0 .. steps - 1 (Keras' schedules take a vector of steps)."""
    return np.asarray(schedule(np.arange(steps)), np.float32)


def reference_at(lr_max, epochs, steps_per_epoch):
    """dac_at_cifar10.py's 'piecewise' `lr_schedule`, at each batch of each epoch."""
    def lr_schedule(t):
        if t / epochs < 0.5:
            return lr_max
        elif t / epochs < 0.75:
            return lr_max / 10.
        return lr_max / 100.
    return np.array([lr_schedule(epoch + (i + 1) / steps_per_epoch)
                     for epoch in range(epochs) for i in range(steps_per_epoch)],
                    np.float32)


def reference_trades(lr0, epochs, steps_per_epoch):
    """dac_trades_cifar10.py's `adjust_learning_rate`, epochs 1 .. epochs, per batch."""
    def adjust_learning_rate(epoch):
        lr = lr0
        if epoch >= 75:
            lr = lr0 * 0.1
        if epoch >= 90:
            lr = lr0 * 0.01
        if epoch >= 100:
            lr = lr0 * 0.001
        return lr
    return np.array([adjust_learning_rate(epoch) for epoch in range(1, epochs + 1)
                     for _ in range(steps_per_epoch)], np.float32)


@pytest.mark.parametrize("epochs, steps_per_epoch", [
    (10, 4), (7, 3),      # 7 * 3 batches: the 1/2 threshold falls mid-batch-count
    (5, 2), (3, 1), (1, 1), (1, 3),
    (200, 391),           # the CIFAR-10 run: 391 batches of 128
])
def test_piecewise_at_equals_the_reference_at_every_batch(epochs, steps_per_epoch):
    schedule = schedules.build("piecewise_at", 0.1, epochs, steps_per_epoch)
    np.testing.assert_array_equal(rates(schedule, epochs * steps_per_epoch),
                                  reference_at(0.1, epochs, steps_per_epoch))


def test_piecewise_at_by_epoch_fraction():
    # 10 epochs of 4 batches; t = (step + 1) / 4; switch when t / 10 >= 0.5 and 0.75.
    s = schedules.piecewise_at(0.1, epochs=10, steps_per_epoch=4)
    assert lr(s, 0) == pytest.approx(0.1)
    assert lr(s, 18) == pytest.approx(0.1)        # t = 4.75
    assert lr(s, 19) == pytest.approx(0.01)       # t = 5.0 -> fraction 0.5
    assert lr(s, 28) == pytest.approx(0.01)       # t = 7.25
    assert lr(s, 29) == pytest.approx(0.001)      # t = 7.5 -> 0.75
    assert lr(s, 39) == pytest.approx(0.001)


@pytest.mark.parametrize("lr0, epochs, steps_per_epoch", [
    (0.1, 110, 10),      # TRADES' rate, past every milestone
    (0.01, 120, 3),      # MART's rate and epochs
    (0.1, 76, 391),      # TRADES' reference run: 76 epochs, one drop
])
def test_piecewise_trades_equals_the_reference_at_every_batch(lr0, epochs, steps_per_epoch):
    schedule = schedules.build("piecewise_trades", lr0, epochs, steps_per_epoch)
    np.testing.assert_array_equal(rates(schedule, epochs * steps_per_epoch),
                                  reference_trades(lr0, epochs, steps_per_epoch))


def test_piecewise_trades_by_epoch_counted_from_one():
    s = schedules.piecewise_trades(0.1, steps_per_epoch=10)
    # Batch b is in epoch b // 10 + 1.
    assert lr(s, 739) == pytest.approx(0.1)       # epoch 74
    assert lr(s, 740) == pytest.approx(0.01)      # epoch 75
    assert lr(s, 890) == pytest.approx(0.001)     # epoch 90
    assert lr(s, 999) == pytest.approx(0.0001)    # epoch 100
    # The reference's product 0.1 * 0.1, not the float32 one (0.010000001).
    assert np.float32(lr(s, 740)) == np.float32(0.01) != np.float32(0.1) * np.float32(0.1)
    assert schedules.piecewise_trades(0.1, 10, milestones=()).get_config()["values"] == \
        [0.1, 0.1]


def test_cosine_equals_its_closed_form():
    lr0, epochs, steps_per_epoch = 0.2, 3, 7
    total = epochs * steps_per_epoch
    schedule = schedules.build("cosine", lr0, epochs, steps_per_epoch)
    steps = np.arange(total + 5)        # stays at 0 after the run
    expected = [lr0 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) for s in steps]
    np.testing.assert_allclose(rates(schedule, len(steps)), expected, rtol=1e-6, atol=1e-8)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)


def test_constant():
    assert lr(schedules.build("constant", 0.3, 5, 5), 17) == pytest.approx(0.3)


def test_batch_schedule_maps_updates_to_batches():
    inner = schedules.piecewise_trades(1.0, steps_per_epoch=1, milestones=(2,))
    wrapped = schedules.BatchSchedule(inner, updates_per_batch=2)
    # updates 0,1 -> batch 0 (epoch 1); updates 2,3 -> batch 1 (epoch 2): x0.1
    assert [lr(wrapped, u) for u in range(4)] == pytest.approx([1.0, 1.0, 0.1, 0.1])


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_schedules_serialize(name):
    s = schedules.BatchSchedule(schedules.build(name, 0.1, 4, 3), 2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    np.testing.assert_array_equal(rates(restored, 24), rates(s, 24))


def test_from_optimizer_reads_the_schedule_through_the_config():
    schedule = schedules.build("piecewise_at", 0.1, 4, 3)
    found = schedules.from_optimizer(keras.optimizers.SGD(schedule))
    np.testing.assert_array_equal(rates(found, 12), rates(schedule, 12))
    assert schedules.from_optimizer(keras.optimizers.SGD(0.1)) is None


def test_unknown_schedule():
    with pytest.raises(ValueError, match="lr_schedule"):
        schedules.build("step", 0.1, 1, 1)


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_depends_on_epochs_says_which_schedules_a_longer_run_would_change(name):
    """`--resume --epochs=N` is allowed only for the schedules whose rates of the
    planned batches do not depend on the run's epochs; check the claim on the formulas:
    a 4-epoch plan against an 8-epoch one over the first 4 epochs."""
    planned = rates(schedules.build(name, 0.1, 4, 5), 20)
    longer = schedules.build(name, 0.1, 8, 5)
    same = np.array_equal(planned, rates(longer, 20))
    assert same == (not schedules.depends_on_epochs(name))
    if name == "piecewise_trades":
        # The epochs a longer run adds follow the same formula (the reference's
        # adjust_learning_rate), through its drops at epochs 75, 90 and 100.
        np.testing.assert_array_equal(
            rates(schedules.build(name, 0.1, 76, 2), 2 * 110),
            reference_trades(0.1, 110, 2))
