"""Learning-rate schedules: the reference's values at chosen batches."""

import numpy as np
import pytest

from dac_tf import schedules


def lr(schedule, step):
    return float(schedule(step))


def test_piecewise_at_by_epoch_fraction():
    # 10 epochs of 4 batches; t = (step + 1) / 4; switch when t / 10 >= 0.5 and 0.75.
    s = schedules.PiecewiseAT(0.1, epochs=10, steps_per_epoch=4)
    assert lr(s, 0) == pytest.approx(0.1)
    assert lr(s, 18) == pytest.approx(0.1)        # t = 4.75
    assert lr(s, 19) == pytest.approx(0.01)       # t = 5.0 -> fraction 0.5
    assert lr(s, 28) == pytest.approx(0.01)       # t = 7.25
    assert lr(s, 29) == pytest.approx(0.001)      # t = 7.5 -> 0.75
    assert lr(s, 39) == pytest.approx(0.001)


def test_piecewise_trades_by_epoch_counted_from_one():
    s = schedules.PiecewiseTRADES(0.1, steps_per_epoch=10)
    # Batch b is in epoch b // 10 + 1.
    assert lr(s, 739) == pytest.approx(0.1)       # epoch 74
    assert lr(s, 740) == pytest.approx(0.01)      # epoch 75
    assert lr(s, 890) == pytest.approx(0.001)     # epoch 90
    assert lr(s, 999) == pytest.approx(0.0001)    # epoch 100
    mart = schedules.build("piecewise_trades", 0.01, 120, 10)
    assert lr(mart, 1199) == pytest.approx(1e-5)


def test_cosine_and_constant():
    s = schedules.build("cosine", 0.2, epochs=2, steps_per_epoch=5)
    assert lr(s, 0) == pytest.approx(0.2)
    assert lr(s, 5) == pytest.approx(0.1)
    assert lr(s, 10) == pytest.approx(0.0, abs=1e-7)
    assert lr(schedules.build("constant", 0.3, 5, 5), 17) == pytest.approx(0.3)


def test_batch_schedule_maps_updates_to_batches():
    inner = schedules.PiecewiseTRADES(1.0, steps_per_epoch=1, milestones=(2,))
    wrapped = schedules.BatchSchedule(inner, updates_per_batch=2)
    # updates 0,1 -> batch 0 (epoch 1); updates 2,3 -> batch 1 (epoch 2): x0.1
    assert [lr(wrapped, u) for u in range(4)] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_schedules_serialize():
    import keras
    s = schedules.BatchSchedule(schedules.PiecewiseAT(0.1, 4, 3), 2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    np.testing.assert_allclose([lr(restored, u) for u in range(24)],
                               [lr(s, u) for u in range(24)])


def test_unknown_schedule():
    with pytest.raises(ValueError, match="lr_schedule"):
        schedules.build("step", 0.1, 1, 1)
