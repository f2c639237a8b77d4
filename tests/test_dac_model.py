"""DACModel's train_step against an independent hand-rolled computation.

The reference here is written from the authors' PyTorch code (TrustMLRG/AdvCertainty:
dac_at_cifar10.py `attack_pgd` and its train loop, dac_trades_cifar10.py with trades.py
`trades_loss`, dac_mart_cifar10.py with mart.py `mart_loss`), not from dac_tf: a Python
loop of signed gradient steps for the attack, the losses from their formulas, and PyTorch
SGD (coupled L2 before momentum, b = mu*b + g, w -= lr*b) in NumPy. Only the gradients of
the model come from a GradientTape.

Below those: DACModel as a Keras model in user code (monitor callbacks, get_config,
`.keras` files that continue training).
"""

import inspect
import json

import numpy as np
import pytest
import keras
import tensorflow as tf

import dac_tf
from dac_tf import callbacks
from dac_tf import optimizers
from dac_tf import schedules
from test_distribute import two_cpu_strategy

BATCH, SIZE, CHANNELS, CLASSES = 8, 6, 2, 4
EPS, STEP, STEPS = 0.1, 0.03, 3
WD, MOMENTUM = 0.01, 0.9
SEED = 11


def make_base(seed, batchnorm=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    h = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    if batchnorm:
        h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(h))


def clone(model, batchnorm=True):
    twin = make_base(123, batchnorm)
    twin.set_weights(model.get_weights())
    return twin


def batch(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (n, SIZE, SIZE, CHANNELS)).astype("float32")
    y = rng.integers(0, CLASSES, n).astype("int32")
    return x, y


# ------------------------------------------------------------- reference
def ref_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ref_attack(model, x, y, method, training, noise_seed=None, final_forward=False):
    """PGD as the reference writes it; no random start unless `noise_seed` (TRADES's
    x + 0.001 N(0, 1) start, drawn with DACModel's documented per-update seed).
    `final_forward`: AT's `attack_pgd` ends with one more forward on the result (its
    restart bookkeeping), in the attack's BN mode."""
    x_adv = tf.constant(x)
    if noise_seed is not None:
        x_adv = x_adv + 0.001 * tf.random.stateless_normal(x.shape, noise_seed, alg="philox")
    natural = tf.nn.softmax(model(x, training=training)) if method == "trades" else None
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model(x_adv, training=training)
            if method == "trades":   # KLDivLoss(sum)(log_softmax(adv), softmax(nat))
                loss = tf.reduce_sum(natural * (tf.math.log(natural) - tf.nn.log_softmax(logits)))
            else:
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                    y, logits, from_logits=True))
        grad = tape.gradient(loss, x_adv).numpy()
        x_adv = np.clip(np.clip(x_adv.numpy() + STEP * np.sign(grad), x - EPS, x + EPS), 0, 1)
        x_adv = tf.constant(x_adv.astype("float32"))
    if final_forward:
        model(x_adv, training=training)
    return x_adv


def ref_robust_loss(model, x, x_adv, y, method, beta, second_natural=False):
    """`second_natural`: TRADES as trades.py writes it, the KL target from a second
    natural forward after the adversarial one (same value, one more BN update)."""
    onehot = tf.one_hot(y, CLASSES)
    if method == "at":
        adv = model(x_adv, training=True)
        return tf.reduce_mean(-tf.reduce_sum(onehot * tf.nn.log_softmax(adv), 1))
    nat = model(x, training=True)
    adv = model(x_adv, training=True)
    if method == "trades":
        ce = tf.reduce_mean(-tf.reduce_sum(onehot * tf.nn.log_softmax(nat), 1))
        p = tf.nn.softmax(model(x, training=True) if second_natural else nat)
        kl = tf.reduce_sum(p * (tf.math.log(p) - tf.nn.log_softmax(adv))) / x.shape[0]
        return ce + beta * kl
    # MART, line by line from its reference code.
    adv_probs = tf.nn.softmax(adv)
    order = np.argsort(adv_probs.numpy(), axis=1)[:, -2:]
    new_y = np.where(order[:, -1] == y, order[:, -2], order[:, -1])
    loss_adv = tf.reduce_mean(-tf.reduce_sum(onehot * tf.nn.log_softmax(adv), 1)) + tf.reduce_mean(
        -tf.gather(tf.math.log(1.0001 - adv_probs + 1e-12), new_y, axis=1, batch_dims=1))
    nat_probs = tf.nn.softmax(nat)
    true_probs = tf.reduce_sum(onehot * nat_probs, 1)
    kl = tf.reduce_sum(nat_probs * (tf.math.log(nat_probs) - tf.math.log(adv_probs + 1e-12)), 1)
    return loss_adv + beta * tf.reduce_sum(kl * (1.0000001 - true_probs)) / x.shape[0]


def ref_ac(logits):
    m = logits.shape[1]
    centered = logits - tf.reduce_mean(logits, 1, keepdims=True)
    return tf.reduce_mean(tf.sqrt(tf.reduce_sum(centered ** 2, 1) / (m - 1)))


class RefSGD:
    """PyTorch SGD with momentum and coupled weight decay, in NumPy."""

    def __init__(self, model):
        self.model = model
        self.buffers = [np.zeros(v.shape, "float32") for v in model.trainable_variables]

    def step(self, loss_fn, lr):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, self.model.trainable_variables)
        for v, g, b in zip(self.model.trainable_variables, grads, self.buffers):
            g = g.numpy() + WD * v.numpy()
            b *= MOMENTUM
            b += g
            v.assign(v.numpy() - lr * b)


def trades_seed(update):
    """TRADES's KL has a zero gradient at x itself, so its attack needs the noise start."""
    fold_in = tf.random.experimental.stateless_fold_in
    seed = fold_in(tf.constant([SEED, 0], tf.int64), tf.constant(update, tf.int64), alg="philox")
    return fold_in(seed, tf.constant(0, tf.int64), alg="philox")


def ref_train_batch(model, opt, x, y, method, use_dac, lr, beta=None, first_update=0,
                    reference_passes=False):
    """One batch of the reference. `reference_passes`: also make its train-mode forwards
    that only move BN statistics, in its order. Returns AT's clean-forward logits (made
    only with `reference_passes`), else None."""
    training = method == "at"          # AT attacks in train mode; TRADES/MART in eval mode
    ac_step = 0.1 if method == "trades" else 0.3
    update = first_update
    seed = (lambda u: trades_seed(u)) if method == "trades" else (lambda u: None)
    final_forward = reference_passes and method == "at"
    trades_as_written = reference_passes and method == "trades"
    if use_dac:
        x_adv = ref_attack(model, x, y, method, training, seed(update), final_forward)
        if trades_as_written:
            # dac_trades_cifar10.py gets this x_adv from trades_loss and drops the loss:
            # its natural, adversarial, natural train-mode forwards still run.
            ref_robust_loss(model, x, x_adv, y, method, beta, second_natural=True)
        opt.step(lambda: ac_step * ref_ac(model(x_adv, training=True)), lr)
        update += 1
    x_adv = ref_attack(model, x, y, method, training, seed(update), final_forward)
    opt.step(lambda: ref_robust_loss(model, x, x_adv, y, method, beta, trades_as_written), lr)
    if final_forward:                  # AT's `output = model(normalize(X))`, train mode
        return model(x, training=True)
    return None


def dac(base, method, use_dac, **kwargs):
    beta = {"at": None, "trades": 6.0, "mart": 5.0}[method]
    return dac_tf.DACModel(base, method=method, use_dac=use_dac, epsilon=EPS, step_size=STEP,
                           num_steps=STEPS, random_start=(method == "trades"),
                           weight_decay=WD, beta=beta, seed=SEED, **kwargs)


def assert_weights_close(a, b, atol=2e-5):
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), atol=atol, rtol=1e-4,
                                   err_msg=va.name)


# ------------------------------------------------------------------ tests
def _layers():
    return [keras.layers.Conv2D(3, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(CLASSES)]


class SubclassedNet(keras.Model):
    """The functional `make_base` network written as a subclassed model."""

    def __init__(self):
        super().__init__()
        self.stack = _layers()

    def call(self, x, training=None):
        for layer in self.stack:
            x = layer(x, training=training)
        return x


def make_other_kind(kind):
    if kind == "sequential":
        model = keras.Sequential([keras.Input((SIZE, SIZE, CHANNELS)), *_layers()])
    else:
        model = SubclassedNet()
        model(np.zeros((1, SIZE, SIZE, CHANNELS), "float32"))   # build the variables
    return model


@pytest.mark.parametrize("kind", [pytest.param("sequential", marks=pytest.mark.slow),
                                  "subclassed"])
def test_sequential_and_subclassed_models_take_the_same_step(kind):
    """NSL-style: the wrapper works on every kind of Keras model; each must take exactly
    the hand-rolled reference step (AT+DAC; the TRADES/MART paths are the same code)."""
    x, y = batch(3)
    functional = make_base(2)
    base = make_other_kind(kind)
    base.set_weights(functional.get_weights())
    twin = clone(functional)
    model = dac(base, "at", True)
    model.compile(optimizer=optimizers.TorchSGD(learning_rate=0.1, momentum=MOMENTUM))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    ref_train_batch(twin, RefSGD(twin), x, y, "at", True, 0.1)
    assert max(np.abs(a - b).max() for a, b in zip(base.get_weights(),
                                                   functional.get_weights())) > 1e-3
    for a, b in zip(base.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


# The default run checks DAC with AT and TRADES (the KL attack and loss); MART and the
# base methods without DAC run with --runslow.
_STEP_GRID = [(True, "at"), (True, "trades"),
              *[pytest.param(d, m, marks=pytest.mark.slow)
                for d, m in ((True, "mart"), (False, "at"), (False, "trades"),
                             (False, "mart"))]]


@pytest.mark.parametrize("use_dac, method", _STEP_GRID)
def test_one_fit_step_matches_hand_rolled_reference(method, use_dac):
    x, y = batch()
    base = make_base(1)
    twin = clone(base)
    model = dac(base, method, use_dac)
    model.compile(optimizer=optimizers.TorchSGD(learning_rate=0.1, momentum=MOMENTUM))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    beta = {"at": None, "trades": 6.0, "mart": 5.0}[method]
    ref_train_batch(twin, RefSGD(twin), x, y, method, use_dac, 0.1, beta=beta)
    moved = max(np.abs(a - b).max() for a, b in zip(base.get_weights(), make_base(1).get_weights()))
    assert moved > 1e-3, "the step did not change the weights"
    assert_weights_close(base, twin)
    assert int(model.optimizer.iterations) == (2 if use_dac else 1)


def bn_statistics(model):
    """[moving_mean, moving_variance] of a `make_base` model's BatchNorm layer."""
    bn = next(layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization))
    return [bn.moving_mean.numpy(), bn.moving_variance.numpy()]


def fit_one_batch(method, use_dac, reference_bn_updates, x, y, epochs=1):
    base = make_base(1)
    model = dac(base, method, use_dac, reference_bn_updates=reference_bn_updates)
    model.compile(optimizer=optimizers.TorchSGD(learning_rate=0.1, momentum=MOMENTUM))
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
                        verbose=0).history
    return base, model, history


@pytest.mark.parametrize("use_dac, method", _STEP_GRID)
def test_reference_bn_updates_replay_the_references_forwards(method, use_dac):
    """BN statistics after one step equal a replay of the reference's train-mode forward
    sequence (AT: attack + final forward, clean forward after the update; TRADES: the
    discarded trades_loss and the KL target's second natural forward), and the weights
    still equal the reference update."""
    x, y = batch()
    base, _, _ = fit_one_batch(method, use_dac, True, x, y)
    twin = make_base(1)
    ref_train_batch(twin, RefSGD(twin), x, y, method, use_dac, 0.1,
                    beta={"at": None, "trades": 6.0, "mart": 5.0}[method],
                    reference_passes=True)
    for got, want in zip(bn_statistics(base), bn_statistics(twin)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_weights_close(base, twin)


@pytest.mark.parametrize("method, changes_statistics, use_dac", [
    ("at", True, True), pytest.param("mart", False, True, marks=pytest.mark.slow),
    pytest.param("trades", True, True, marks=pytest.mark.slow),
    *[pytest.param(m, c, False, marks=pytest.mark.slow)
      for m, c in (("at", True), ("trades", True), ("mart", False))]])
def test_reference_bn_updates_moves_only_the_statistics(method, use_dac,
                                                        changes_statistics):
    """The option changes the moving statistics where the reference makes extra passes
    (AT, TRADES), by far more than the replay test's tolerance; MART's reference makes
    none, so its step is bit-identical. AT's weights do not change (its attack runs in
    train mode, which never reads the moving statistics); TRADES' eval-mode attack reads
    them, so with DAC the robust step's attack, and so the weights, change too."""
    x, y = batch()
    (plain, _, plain_logs), (ref, _, ref_logs) = (
        fit_one_batch(method, use_dac, flag, x, y) for flag in (False, True))
    gap = max(np.abs(a - b).max()
              for a, b in zip(bn_statistics(plain), bn_statistics(ref)))
    weight_gap = max(np.abs(np.asarray(a) - np.asarray(b)).max()
                     for a, b in zip(plain.trainable_weights, ref.trainable_weights))
    if changes_statistics:
        assert gap > 1e-3
    else:
        assert gap == 0.0 and weight_gap == 0.0
    if method == "trades" and use_dac:
        assert weight_gap > 1e-3
    else:
        assert weight_gap < 1e-6
    assert "clean_accuracy" not in plain_logs
    assert ("clean_accuracy" in ref_logs) == (method == "at")


def test_clean_accuracy_is_the_reference_clean_forward_of_each_epoch():
    """AT's logged clean_accuracy is the accuracy of the replayed clean forward (after the
    robust update, train-mode BN), reset at each epoch."""
    x, y = batch(5)
    _, model, history = fit_one_batch("at", True, True, x, y, epochs=2)
    twin = make_base(1)
    opt = RefSGD(twin)
    expected = []
    for epoch in range(2):
        logits = ref_train_batch(twin, opt, x, y, "at", True, 0.1, first_update=2 * epoch,
                                 reference_passes=True)
        expected.append(np.mean(np.argmax(logits, 1) == y))
    # Different per epoch, so a tracker that is not reset (the running mean over both
    # epochs) or one fed before the update would fail.
    assert expected[0] != expected[1]
    np.testing.assert_allclose(history["clean_accuracy"], expected, atol=1e-6)
    assert model.train_clean_accuracy in model.metrics


@pytest.mark.slow
def test_reference_bn_updates_trains_under_mirrored_strategy():
    """Two replicas (per-replica BN statistics): the extra passes run and the logs,
    clean_accuracy included, are finite."""
    strategy = two_cpu_strategy()
    x, y = batch(n=2 * BATCH)
    with strategy.scope():
        base = make_base(1)
        model = dac(base, "at", True, reference_bn_updates=True)
        model.compile(optimizer=optimizers.TorchSGD(learning_rate=0.1, momentum=MOMENTUM))
    logs = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history
    assert {"loss", "adv_accuracy", "adv_certainty", "ac_loss", "clean_accuracy"} <= set(logs)
    assert all(np.isfinite(v[0]) for v in logs.values())
    assert all(np.isfinite(s).all() for s in bn_statistics(base))


@pytest.mark.slow
def test_schedule_follows_batches_with_torch_momentum():
    """Two DAC batches, lr 0.1 then 0.02: the four updates use 0.1, 0.1, 0.02, 0.02."""
    x, y = batch(n=2 * BATCH)
    base = make_base(2)
    twin = clone(base)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.02])
    model = dac(base, "at", True)
    model.compile(optimizer=optimizers.TorchSGD(learning_rate=schedule, momentum=MOMENTUM))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    opt = RefSGD(twin)
    for i, lr in enumerate([0.1, 0.02]):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        ref_train_batch(twin, opt, x[sl], y[sl], "at", True, lr)
    assert_weights_close(base, twin)
    assert int(model.optimizer.iterations) == 4
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.02, rtol=1e-6)


def test_keras_sgd_equals_torch_sgd_at_constant_lr():
    x, y = batch()
    bases = [make_base(3), None]
    bases[1] = clone(bases[0])
    for base, opt in zip(bases, [keras.optimizers.SGD(0.05, momentum=MOMENTUM),
                                 optimizers.TorchSGD(0.05, momentum=MOMENTUM)]):
        model = dac(base, "at", True)
        model.compile(optimizer=opt)
        model.fit(x, y, batch_size=BATCH // 2, epochs=1, shuffle=False, verbose=0)
    assert_weights_close(bases[0], bases[1])


def test_ac_update_lowers_certainty_of_fixed_adversarial_examples():
    x, y = batch()
    base = make_base(4)
    model = dac(base, "at", True, ac_step=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)   # builds the optimizer
    x_adv = model.generate_adversarial(tf.constant(x), tf.constant(y))
    before = float(dac_tf.adversarial_certainty(base(x_adv, training=True)))
    ac_loss = float(tf.reduce_mean(model.ac_update(x_adv)))   # per example
    after = float(dac_tf.adversarial_certainty(base(x_adv, training=True)))
    np.testing.assert_allclose(ac_loss, before, rtol=1e-5)
    assert after < before


def test_metrics_reported_by_fit_and_evaluate():
    x, y = batch(n=2 * BATCH)
    model = dac(make_base(5), "trades", True)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, validation_data=(x, y))
    assert {"loss", "adv_accuracy", "adv_certainty", "ac_loss",
            "val_loss", "val_accuracy"} <= set(history.history)
    logits = model.base_model.predict(x, verbose=0)
    expected_acc = np.mean(np.argmax(logits, 1) == y)
    result = model.evaluate(x, y, batch_size=BATCH, return_dict=True, verbose=0)
    np.testing.assert_allclose(result["accuracy"], expected_acc, atol=1e-6)
    ce = -np.log(ref_softmax(logits)[np.arange(len(y)), y]).mean()
    np.testing.assert_allclose(result["loss"], ce, rtol=1e-4)
    plain = dac(make_base(5), "at", False)
    plain.compile(optimizer=keras.optimizers.SGD(0.01))
    assert "ac_loss" not in plain.fit(x, y, batch_size=BATCH, verbose=0).history


def test_adv_certainty_metric_is_the_robust_steps_ac():
    """With lr=0 nothing changes, so the logged AC equals AC of a regenerated batch."""
    x, y = batch()
    base = make_base(6, batchnorm=False)
    model = dac(base, "at", True, ac_measure="var")
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.fit(x, y, batch_size=BATCH, verbose=0).history
    x_adv = ref_attack(base, x, y, "at", True)
    logits = base(x_adv).numpy()
    expected = np.mean(np.var(logits, axis=1))          # population variance
    np.testing.assert_allclose(logs["adv_certainty"][0], expected, rtol=1e-4)
    np.testing.assert_allclose(logs["ac_loss"][0], 0.3 * expected, rtol=1e-4)
    np.testing.assert_allclose(logs["adv_accuracy"][0], np.mean(logits.argmax(1) == y))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["at", pytest.param("mart", marks=pytest.mark.slow)])
def test_jit_compile_matches_graph_mode(method):
    # Deterministic start: TensorFlow's stateless RNG kernels draw other numbers under
    # XLA than without it, so only the noise-free attack can match bit for bit.
    x, y = batch(n=2 * BATCH)
    bases = [make_base(7), None]
    bases[1] = clone(bases[0])
    for base, jit in zip(bases, [False, True]):
        model = dac(base, method, True)
        model.compile(optimizer=optimizers.TorchSGD(0.05, momentum=0.9), jit_compile=jit)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        assert model.jit_compile == jit
    assert_weights_close(bases[0], bases[1], atol=1e-4)


@pytest.mark.slow   # two XLA compilations
def test_jit_compile_with_random_start_is_reproducible():
    x, y = batch(n=2 * BATCH)
    runs = []
    for _ in range(2):
        base = make_base(9)
        model = dac_tf.DACModel(base, method="trades", seed=4)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        runs.append(base.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_same_seed_reproduces_and_other_seed_differs():
    x, y = batch(n=2 * BATCH)
    runs = []
    for seed in [1, 1, 2]:
        base = make_base(8)
        model = dac_tf.DACModel(base, method="at", seed=seed)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        runs.append(base.get_weights())
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(runs[0], runs[2])) > 0


def test_mixed_bfloat16_policy_trains_with_float32_logits_and_ac():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((SIZE, SIZE, CHANNELS))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        h = keras.layers.Flatten()(h)
        base = keras.Model(inputs, keras.layers.Dense(CLASSES, dtype="float32")(h))
        assert base.layers[1].compute_dtype == "bfloat16"
        model = dac_tf.DACModel(base, method="mart")
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        x, y = batch()
        logs = model.fit(x, y, batch_size=4, verbose=0).history
        assert all(np.isfinite(v[0]) for v in logs.values())
        assert logs["adv_certainty"][0] > 0
        assert base.trainable_weights[0].dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="pgd"), "method"),
    (dict(ac_measure="entropy"), "ac_measure"),
    (dict(norm="l1"), "norm"),
    (dict(norm="l2"), "epsilon and step_size"),
    (dict(method="at", beta=6.0), "beta"),
    (dict(num_steps=-1), "num_steps"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dac_tf.DACModel(make_base(0), **kwargs)


def test_compile_rejects_a_loss():
    model = dac_tf.DACModel(make_base(0))
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss="mse")


def test_reference_defaults_per_method():
    at = dac_tf.DACModel(make_base(0), method="at")
    assert (at.ac_step, at.epsilon, at.step_size, at.num_steps, at.attack_training,
            at.weight_decay, at.beta) == (0.3, 8 / 255, 2 / 255, 10, True, 5e-4, None)
    trades = dac_tf.DACModel(make_base(0), method="trades")
    assert (trades.ac_step, trades.epsilon, trades.step_size, trades.attack_training,
            trades.weight_decay, trades.beta) == (0.1, 0.031, 0.0078, False, 2e-4, 6.0)
    mart = dac_tf.DACModel(make_base(0), method="mart")
    assert (mart.ac_step, mart.epsilon, mart.step_size, mart.attack_training,
            mart.weight_decay, mart.beta) == (0.3, 0.031, 0.007, False, 3.5e-3, 5.0)


# ------------------------------------------------ DACModel as a Keras model in user code
# The direction of each log key, written out here rather than read from dac_tf:
# accuracies up; losses and adversarial certainty down.
EXPECTED_DIRECTIONS = {
    "loss": "down", "adv_accuracy": "up", "adv_certainty": "down", "ac_loss": "down",
    "clean_accuracy": "up", "val_loss": "down", "val_accuracy": "up",
    "val_robust_accuracy": "up", "val_clean_accuracy": "up", "val_adv_certainty": "down",
}
ROBUST_VALIDATION_KEYS = ("val_robust_accuracy", "val_clean_accuracy", "val_adv_certainty")
# The `mode=` the README tells a user to pass; Keras infers only the losses' ("auto").
MODES = {"up": "max", "down": "min"}


def documented_mode(key):
    return "auto" if key in ("loss", "val_loss") else MODES[EXPECTED_DIRECTIONS[key]]


class _AddRobustValidationLogs(keras.callbacks.Callback):
    """Stands in for `callbacks.RobustValidation`: adds its keys with values that rise
    then fall, so the best value differs for each direction."""

    VALUES = (0.2, 0.5, 0.3)

    def on_epoch_end(self, epoch, logs=None):
        for key in ROBUST_VALIDATION_KEYS:
            logs[key] = self.VALUES[epoch]


@pytest.mark.slow
def test_monitor_callbacks_keep_the_best_of_every_logged_key(tmp_path):
    """EarlyStopping and ModelCheckpoint run for every key DACModel (and the
    robust-validation callback) logs, with the `mode` the README documents (Keras'
    "auto" for the losses), and keep the max (up) or min (down) of it."""
    x, y = batch(13, n=2 * BATCH)
    model = dac(make_base(13), "at", True, reference_bn_updates=True)
    model.compile(optimizer=optimizers.TorchSGD(0.05, momentum=MOMENTUM))
    stoppers = {k: keras.callbacks.EarlyStopping(monitor=k, mode=documented_mode(k),
                                                 patience=10)
                for k in EXPECTED_DIRECTIONS}
    checkpoints = {k: keras.callbacks.ModelCheckpoint(
        str(tmp_path / f"{k}.weights.h5"), monitor=k, mode=documented_mode(k),
        save_best_only=True, save_weights_only=True) for k in EXPECTED_DIRECTIONS}
    history = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                        validation_data=(x, y),
                        callbacks=[_AddRobustValidationLogs(), *stoppers.values(),
                                   *checkpoints.values()]).history
    assert set(EXPECTED_DIRECTIONS) <= set(history)
    varied = 0
    for key, direction in EXPECTED_DIRECTIONS.items():
        best = (max if direction == "up" else min)(history[key])
        varied += max(history[key]) != min(history[key])
        for callback in (stoppers[key], checkpoints[key]):
            np.testing.assert_allclose(float(callback.best), best, rtol=1e-6, err_msg=key)
    assert varied >= 5   # else most checks could not tell max from min


@pytest.mark.parametrize("key", ["val_accuracy",
                                 pytest.param("adv_accuracy", marks=pytest.mark.slow),
                                 pytest.param("val_adv_certainty", marks=pytest.mark.slow)])
def test_fit_refuses_auto_mode_on_keys_keras_cannot_infer_before_any_step(key, tmp_path):
    """Keras 3 infers `mode="auto"` only for the losses and compiled metrics; on any
    other key of a DACModel it raises after the first epoch. `DACModel.fit` refuses
    ModelCheckpoint, EarlyStopping and ReduceLROnPlateau in "auto" on such a key at once,
    naming the mode to pass. If a Keras release starts inferring these keys, the second
    half fails and the docs must change."""
    x, y = batch(3, n=BATCH)
    model = dac(make_base(3), "at", False)
    model.compile(optimizer=optimizers.TorchSGD(0.05))
    before = model.base_model.get_weights()
    mode = MODES[EXPECTED_DIRECTIONS[key]]
    for monitor in (keras.callbacks.EarlyStopping(monitor=key, patience=10),
                    keras.callbacks.ReduceLROnPlateau(monitor=key),
                    keras.callbacks.ModelCheckpoint(str(tmp_path / "m.weights.h5"),
                                                    monitor=key, save_weights_only=True)):
        with pytest.raises(callbacks.RobustValidationError,
                           match=rf"{type(monitor).__name__}\(monitor='{key}'\) needs "
                                 rf"mode='{mode}'"):
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, validation_data=(x, y),
                      callbacks=[_AddRobustValidationLogs(), monitor])
    assert int(model.optimizer.iterations) == 0   # refused before the first step
    for a, b in zip(before, model.base_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Keras alone (keras.Model.fit, without DACModel's check) trains an epoch first.
    stopper = keras.callbacks.EarlyStopping(monitor=key, patience=10)
    with pytest.raises(ValueError, match="mode='max'"):
        keras.Model.fit(model, x, y, batch_size=BATCH, epochs=1, verbose=0,
                        validation_data=(x, y),
                        callbacks=[_AddRobustValidationLogs(), stopper])
    assert int(model.optimizer.iterations) > 0


@pytest.mark.slow
def test_robust_validation_keys_get_their_direction_in_a_users_fit():
    """The keys `callbacks.RobustValidation` adds, with the documented `mode`: the most
    robust epoch is kept for val_robust_accuracy, the least certain for
    val_adv_certainty."""
    x, y = batch(0, n=4 * BATCH)
    model = dac(make_base(9), "at", True)
    model.compile(optimizer=optimizers.TorchSGD(learning_rate=0.05, momentum=MOMENTUM))
    watched = {"val_robust_accuracy": max, "val_clean_accuracy": max,
               "val_adv_certainty": min}
    stoppers = {k: keras.callbacks.EarlyStopping(monitor=k, mode=documented_mode(k),
                                                 patience=10) for k in watched}
    history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
        callbacks.RobustValidation(x, y, epsilon=EPS, step_size=STEP, num_steps=STEPS),
        *stoppers.values()]).history
    for key, pick in watched.items():
        np.testing.assert_allclose(float(stoppers[key].best), pick(history[key]), err_msg=key)
    assert max(history["val_adv_certainty"]) != min(history["val_adv_certainty"])


def test_get_config_round_trips_every_constructor_argument():
    kwargs = dict(method="trades", use_dac=False, ac_step=0.2, ac_measure="var",
                  epsilon=0.05, step_size=0.01, num_steps=3, norm="l2", beta=4.0,
                  random_start=False, attack_training=True, weight_decay=1e-3, seed=7,
                  reference_bn_updates=True)
    # A new constructor argument must be added here (and to get_config).
    params = set(inspect.signature(dac_tf.DACModel.__init__).parameters)
    assert params - {"self", "base_model", "kwargs"} == set(kwargs)
    # Every value differs from its default, so a dropped key cannot pass unnoticed.
    baseline = dac_tf.DACModel(make_base(0), method="trades")
    assert all(getattr(baseline, k) != v for k, v in kwargs.items() if k != "method")
    model = dac_tf.DACModel(make_base(0), name="dac_x", **kwargs)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is dac_tf.DACModel and restored.name == "dac_x"
    assert {k: getattr(restored, k) for k in kwargs} == kwargs
    assert ([w.shape for w in restored.base_model.weights]
            == [w.shape for w in model.base_model.weights])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["model.save",
                                 pytest.param("ModelCheckpoint", marks=pytest.mark.slow)])
def test_keras_file_continues_training_like_an_uninterrupted_run(tmp_path, how):
    """2 batches, save `.keras`, load, 2 more batches == 4 batches without saving: with
    BatchNorm, random starts (seeded from the restored `optimizer.iterations`), TorchSGD
    momentum buffers and a per-batch schedule whose drop falls after the save."""
    x, y = batch(21, n=2 * BATCH)

    def schedule():   # of the batch index: 0.1 for batches 0-2, then 0.02
        return keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.02])

    def fresh():
        model = dac_tf.DACModel(make_base(12), method="at", epsilon=EPS, step_size=STEP,
                                num_steps=STEPS, weight_decay=WD, seed=SEED)
        model.compile(optimizer=optimizers.TorchSGD(schedule(), momentum=MOMENTUM))
        return model

    def fit(model, **kwargs):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, **kwargs)

    straight = fresh()
    fit(straight)
    fit(straight)

    first = fresh()
    path = str(tmp_path / "dac.keras")
    if how == "model.save":
        fit(first)
        first.save(path)
    else:
        fit(first, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = keras.saving.load_model(path)
    assert type(loaded) is dac_tf.DACModel
    assert type(loaded.optimizer) is optimizers.TorchSGD
    assert int(loaded.optimizer.iterations) == 4
    for saved, restored in zip(first.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))
    assert max(np.abs(np.asarray(b)).max() for b in loaded.optimizer.momentums) > 0
    fit(loaded)

    assert int(loaded.optimizer.iterations) == 8
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 0.02, rtol=1e-6)
    for a, b in zip(loaded.base_model.weights, straight.base_model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6,
                                   err_msg=a.name)
    # Control: the same continuation with a new optimizer (no buffers, iterations 0,
    # so other seeds and rates) ends elsewhere; the equality above needed the state.
    restarted = keras.saving.load_model(path)
    restarted.compile(optimizer=optimizers.TorchSGD(schedule(), momentum=MOMENTUM))
    fit(restarted)
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
               zip(restarted.base_model.weights, straight.base_model.weights)) > 1e-4


class _Unregistered(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return 0.1


def test_compile_wraps_a_schedule_once_and_refuses_one_it_cannot_read():
    """Compiling twice (or loading) re-wraps the batch schedule instead of nesting it;
    a schedule Keras cannot serialize is refused by name instead of running at the
    update rate."""
    opt = optimizers.TorchSGD(keras.optimizers.schedules.PiecewiseConstantDecay(
        [0], [0.1, 0.02]), momentum=MOMENTUM)
    for use_dac, rates in [(True, [0.1, 0.1, 0.02, 0.02]), (False, [0.1, 0.02, 0.02, 0.02])]:
        model = dac(make_base(0), "at", use_dac)
        model.compile(optimizer=opt)
        model.compile(optimizer=opt)
        wrapped = schedules.from_optimizer(opt)
        assert isinstance(wrapped, schedules.BatchSchedule)
        assert not isinstance(wrapped.schedule, schedules.BatchSchedule)
        assert [float(wrapped(u)) for u in range(4)] == pytest.approx(rates)
    with pytest.raises(ValueError, match="register_keras_serializable"):
        dac(make_base(0), "at", True).compile(optimizer=optimizers.TorchSGD(_Unregistered()))
