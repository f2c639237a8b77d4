"""dac_tf.callbacks.validation in a user's own `fit`: robust validation against closed forms.

For a linear two-class model f(x) = W x, an L-inf attack of radius e that starts at x
and takes one signed step of size e reaches the exact worst case (the logit difference
is linear), so the robust accuracy has a closed form: example x of class y survives iff
(w_y - w_o) . x > e * ||w_y - w_o||_1 (inputs kept inside [e, 1 - e], so the [0, 1] box
never binds).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dac_tf
from dac_tf import callbacks
from dac_tf import optimizers

from test_distribute import two_cpu_strategy

SHAPE, EPS = (3, 3, 2), 0.05


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    logits = keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits)


def examples(n, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(EPS, 1 - EPS, (n,) + SHAPE).astype("float32"),
            rng.integers(0, 2, n).astype("int32"))


def closed_form(model, x, y):
    w = model.get_weights()[0]                      # [features, 2]
    flat = x.reshape(len(x), -1)
    diff = np.where(y[:, None] == 0, (w[:, 0] - w[:, 1])[None], (w[:, 1] - w[:, 0])[None])
    margin = np.sum(flat * diff, axis=1)
    clean = np.mean(margin > 0)
    robust = np.mean(margin > EPS * np.abs(diff).sum(axis=1))
    return clean, robust


def validation(x, y, **kwargs):
    args = dict(epsilon=EPS, step_size=EPS, num_steps=1, start="none", batch_size=16)
    args.update(kwargs)
    return callbacks.RobustValidation(x, y, **args)


def test_robust_validation_equals_the_closed_form_and_counts_every_example_once():
    model = linear_model()
    x, y = examples(37)                              # 37: the last batch of 16 is padded
    cb = validation(x, y)
    cb.set_model(model)
    values = cb.evaluate()
    clean, robust = closed_form(model, x, y)
    assert values["clean_accuracy"] == pytest.approx(clean)
    assert values["robust_accuracy"] == pytest.approx(robust)
    assert robust < clean                            # the attack did something
    one_by_one = validation(x, y, batch_size=1)
    one_by_one.set_model(model)
    assert one_by_one.evaluate() == pytest.approx(values)
    logits = model(x).numpy()
    spread = np.std(logits, axis=1, ddof=1).mean()   # clean AC, a bound for the check
    assert 0 < values["adv_certainty"] and np.isfinite(spread)


def test_in_a_users_fit_the_logs_carry_the_robust_values_every_epoch():
    x, y = examples(64)
    base = linear_model()
    model = dac_tf.DACModel(base, epsilon=EPS, step_size=EPS / 4, num_steps=2,
                            weight_decay=0.0)
    model.compile(optimizer=optimizers.TorchSGD(0.05, momentum=0.9))
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(closed_form(base, x[:40], y[:40])))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        validation(x[:40], y[:40]), record])
    for key in ("val_clean_accuracy", "val_robust_accuracy", "val_adv_certainty"):
        assert len(history.history[key]) == 2
    for epoch, (clean, robust) in enumerate(seen):
        assert history.history["val_clean_accuracy"][epoch] == pytest.approx(clean)
        assert history.history["val_robust_accuracy"][epoch] == pytest.approx(robust)


@pytest.mark.parametrize("prefix, key, mode", [("val", "robust_accuracy", "max"),
                                               ("val", "clean_accuracy", "max"),
                                               ("test", "adv_certainty", "min")])
def test_ordered_refuses_auto_mode_on_its_keys_and_keeps_explicit_modes(prefix, key, mode):
    """A plain keras.Model: `ordered` refuses a monitor callback in "auto" mode on a
    RobustValidation key (Keras would raise after the first epoch), whatever the
    prefix, and accepts the same callback with the mode given or on Keras' own keys."""
    x, y = examples(8)
    check = validation(x, y, prefix=prefix)
    monitor = f"{prefix}_{key}"
    for refused in (keras.callbacks.EarlyStopping(monitor=monitor),
                    keras.callbacks.ReduceLROnPlateau(monitor=monitor)):
        with pytest.raises(callbacks.RobustValidationError,
                           match=rf"\(monitor='{monitor}'\) needs mode='{mode}'"):
            callbacks.ordered([refused, check])
    kept = [keras.callbacks.EarlyStopping(monitor=monitor, mode=mode),
            keras.callbacks.EarlyStopping(monitor="val_loss"),
            keras.callbacks.EarlyStopping(monitor=f"other_{key}")]   # no such validation
    assert callbacks.ordered([*kept, check]) == [check, *kept]


def test_random_starts_are_seeded_by_seed_epoch_and_batch_through_seeds_fold():
    """`seeds.fold` of the stream key [seed, stream] with (epoch, batch), Philox: the
    one derivation of dac_tf's streams; nothing else (what ran before) moves it."""
    from dac_tf.callbacks import validation as validation_lib
    x, y = examples(37)
    cb = validation(x, y, start="uniform", step_size=EPS / 4, num_steps=3, seed=5)
    fold = tf.random.experimental.stateless_fold_in
    key = tf.constant([5, validation_lib._SEED_STREAM], tf.int64)  # pylint: disable=protected-access
    drawn = set()
    for epoch in range(3):
        for batch in range(3):
            expected = fold(fold(key, tf.constant(epoch, tf.int64), alg="philox"),
                            tf.constant(batch, tf.int64), alg="philox")
            seed = cb.batch_seed(epoch, batch)
            assert seed.numpy().tolist() == expected.numpy().tolist()
            drawn.add(tuple(seed.numpy().tolist()))
    assert len(drawn) == 9
    model = linear_model()
    cb.set_model(model)
    after_epoch_0 = (cb.evaluate(0), cb.evaluate(2))[1]
    fresh = validation(x, y, start="uniform", step_size=EPS / 4, num_steps=3, seed=5)
    fresh.set_model(model)
    assert fresh.evaluate(2) == after_epoch_0


def test_two_replicas_give_the_single_device_values():
    x, y = examples(37)
    single = linear_model()
    strategy = two_cpu_strategy()
    with strategy.scope():
        mirrored = linear_model()
        mirrored.set_weights(single.get_weights())
    values = []
    for model in (single, mirrored):
        cb = validation(x, y, start="uniform", step_size=EPS / 4, num_steps=3)
        cb.set_model(model)
        with (strategy.scope() if model is mirrored else _nullcontext()):
            values.append(cb.evaluate())
    # The random starts are drawn per replica, so only the clean accuracy and the
    # closed-form bound are shared exactly.
    assert values[0]["clean_accuracy"] == pytest.approx(values[1]["clean_accuracy"])
    _, robust = closed_form(single, x, y)
    assert min(v["robust_accuracy"] for v in values) >= robust - 1e-9


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()
