"""dac_tf.callbacks.epochs: the training loop's callbacks stop before a bad epoch is saved.

A non-finite loss stops `fit` at its batch, before any epoch end; an epoch that ends
non-finite (logs, weights or logits) raises before the callbacks that save it; `best`
keeps the first strict maximum. Models and data: tests/test_callbacks_validation.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dac_tf
from dac_tf import callbacks
from dac_tf import optimizers

from test_callbacks_validation import EPS, examples, linear_model


def test_a_non_finite_loss_stops_fit_at_the_batch_before_any_epoch_end():
    x, y = examples(64)
    model = dac_tf.DACModel(linear_model(), epsilon=EPS, step_size=EPS / 4, num_steps=1)
    model.compile(optimizer=optimizers.TorchSGD(1e30, momentum=0.9))
    ends = []
    with pytest.raises(callbacks.NonFiniteLossError, match=r"batch \d+ of epoch 1"):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
            callbacks.StopOnNonFiniteLoss(),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda e, l: ends.append(e))])
    assert ends == []        # no checkpoint callback ever sees the non-finite weights


def test_best_checkpoint_keeps_the_first_strict_maximum(tmp_path):
    model = linear_model()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path), 1)
    best = callbacks.BestCheckpoint(manager, "val_robust_accuracy")
    for epoch, value in enumerate([0.2, 0.5, 0.5, 0.4, float("nan")]):
        best.on_epoch_end(epoch, {"val_robust_accuracy": value})
    assert (best.best_epoch, best.best_value) == (2, 0.5)
    assert manager.latest_checkpoint.endswith("ckpt-2")


@pytest.mark.parametrize("case", ["nan_in_logs", "inf_weight", "overflowing_logits"])
def test_an_epoch_ending_non_finite_raises_before_later_callbacks_see_it(case):
    """A finite loss on every batch can still end in a model that outputs Inf/NaN: its
    epoch must fail before a checkpoint callback saves it."""
    x, y = examples(32)
    model = linear_model()
    logs = {"loss": 0.5, "val_robust_accuracy": 0.25}
    if case == "nan_in_logs":
        logs["val_adv_certainty"] = float("nan")
    elif case == "inf_weight":
        model.set_weights([np.full_like(model.get_weights()[0], np.inf)])
    else:   # finite weights whose logits overflow float32 (the lr=1e38 case)
        model.set_weights([np.full_like(model.get_weights()[0], 1e38)])
        assert np.all(np.isfinite(model.get_weights()[0]))
        assert not np.all(np.isfinite(model(x).numpy()))
    check = callbacks.StopOnNonFiniteEpoch(x, batch_size=10)
    check.set_model(model)
    needle = {"nan_in_logs": "val_adv_certainty = nan", "inf_weight": "non-finite weights",
              "overflowing_logits": "non-finite logits on the 32 validation images"}[case]
    with pytest.raises(callbacks.NonFiniteLossError, match=rf"epoch 3 ended with .*{needle}"):
        check.on_epoch_end(2, logs)
    # The same model with finite weights and logs passes.
    healthy = linear_model()
    check = callbacks.StopOnNonFiniteEpoch(x, batch_size=10)
    check.set_model(healthy)
    check.on_epoch_end(2, {"loss": 0.5, "val_adv_certainty": 1.0})
