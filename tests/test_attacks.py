"""Training-time attacks: invariants (ball, box, eps=0), projections, strength order;
the helpers every attack implementation shares (margin, clip; seeds: tests/test_seeds.py)."""

import numpy as np
import pytest
import keras
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta as cleverhans_clip_eta

from dac_tf import attacks
from dac_tf import autoattack
from dac_tf.evaluation import attacks as evaluation_attacks


def linear_model(seed=0, shape=(4, 4, 1), classes=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                             keras.layers.Dense(classes)])


def data(n=16, shape=(4, 4, 1), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, (n,) + shape).astype("float32"),
            rng.integers(0, classes, n).astype("int32"))


SEED = tf.constant([1, 2], tf.int64)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_pgd_stays_in_ball_and_box(norm, loss, start):
    model = linear_model()
    x, y = data()
    eps = 0.3 if norm == "linf" else 0.8
    x_adv = attacks.pgd(model, x, y, epsilon=eps, step_size=eps / 3, num_steps=5, norm=norm,
                        loss=loss, start=start, seed=SEED).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1)
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps + 1e-5
    if loss != "kl" or start != "none":   # KL has zero gradient at x itself
        assert np.abs(delta).max() > 1e-3


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_eps_zero_returns_the_input(norm, start):
    model = linear_model()
    x, y = data()
    x_adv = attacks.pgd(model, x, y, epsilon=0.0, step_size=0.1, num_steps=3, norm=norm,
                        start=start, seed=SEED)
    np.testing.assert_array_equal(x_adv.numpy(), x)


def test_linf_step_is_signed_gradient_from_the_clean_point():
    """One step from x on a linear model: x + step * sign(dCE/dx), computed by hand."""
    model = linear_model(1)
    x, y = data(seed=1)
    x = 0.25 + 0.5 * x      # interior, so the box does not bind
    step = 0.05
    x_adv = attacks.pgd(model, x, y, epsilon=0.1, step_size=step, num_steps=1,
                        start="none").numpy()
    w, b = model.layers[-1].get_weights()
    z = x.reshape(len(x), -1) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0          # dCE/dz
    grad = (p @ w.T).reshape(x.shape)
    np.testing.assert_allclose(x_adv, x + step * np.sign(grad), atol=1e-6)


def test_l2_projection_and_step():
    eta = np.array([[3.0, 4.0], [0.3, 0.4]], "float32")   # norms 5 and 0.5
    projected = attacks.clip_eta(tf.constant(eta), "l2", 1.0).numpy()
    np.testing.assert_allclose(projected[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(projected[1], eta[1])          # inside: untouched
    linf = attacks.clip_eta(tf.constant(eta), "linf", 0.5).numpy()
    np.testing.assert_allclose(linf, [[0.5, 0.5], [0.3, 0.4]])

    # L2 step on a linear model: along grad / ||grad||, projected onto the ball.
    model = linear_model(2)
    x, y = data(n=4, seed=2)
    x = 0.4 + 0.2 * x
    x_adv = attacks.pgd(model, x, y, epsilon=0.05, step_size=0.5, num_steps=1, norm="l2",
                        start="none").numpy()
    delta = (x_adv - x).reshape(4, -1)
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.05, rtol=1e-4)


def test_l2_uniform_start_is_inside_the_ball_with_spread_radii():
    x = np.full((256, 4, 4, 1), 0.5, "float32")
    start = attacks.random_init(tf.constant(x), "l2", 0.2, "uniform", SEED).numpy()
    radii = np.linalg.norm((start - x).reshape(256, -1), axis=1)
    assert radii.max() <= 0.2 + 1e-6
    # Radius ~ U(0, 1) * eps: mean 0.1, quartiles near 0.05 and 0.15.
    assert abs(radii.mean() - 0.1) < 0.015
    assert abs(np.quantile(radii, 0.25) - 0.05) < 0.02


def test_normal_start_is_small_gaussian_noise_and_seeded():
    x = tf.fill([64, 4, 4, 1], 0.5)
    a = attacks.random_init(x, "linf", 0.1, "normal", SEED).numpy() - 0.5
    b = attacks.random_init(x, "linf", 0.1, "normal", SEED).numpy() - 0.5
    c = attacks.random_init(x, "linf", 0.1, "normal", SEED + 1).numpy() - 0.5
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    assert abs(a.std() - 0.001) < 1e-4


def test_cw_margin_closed_form():
    logits = tf.constant([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    labels = tf.constant([1, 0])
    np.testing.assert_allclose(attacks.cw_margin(logits, labels).numpy(), [2 - 3, 0 - 5])


def test_cw_margin_is_the_one_margin_of_every_caller():
    """Training's margin, AutoAttack's (negated; the official code masks the true class
    with -inf) and the evaluation's CW loss (kappa, clamped) are one computation."""
    rng = np.random.default_rng(0)
    logits = (5 * rng.normal(size=(64, 10))).astype("float32")
    labels = rng.integers(0, 10, 64).astype("int32")
    masked = np.where(np.eye(10, dtype=bool)[labels], -np.inf, logits).astype("float32")
    expected = masked.max(axis=1) - logits[np.arange(64), labels]   # exact in float32
    margin = attacks.cw_margin(logits, labels).numpy()
    np.testing.assert_array_equal(margin, expected)
    np.testing.assert_array_equal(autoattack.margin(tf.constant(logits), labels).numpy(),
                                  -expected)
    for kappa in (0.0, 50.0):
        np.testing.assert_array_equal(
            evaluation_attacks.cw_loss(labels, logits, kappa).numpy(),
            -np.maximum(np.float32(kappa) - expected, 0.0))


@pytest.mark.parametrize("norm, ch_norm", [("linf", np.inf), ("l2", 2)])
@pytest.mark.parametrize("epsilon", [0.0, 2e-6, 8 / 255, 1.0])
def test_clip_eta_is_cleverhans_clip_eta(norm, ch_norm, epsilon):
    """Bit for bit, also for perturbations of (almost) zero norm."""
    rng = np.random.default_rng(1)
    eta = rng.normal(scale=0.05, size=(8, 4, 4, 1)).astype("float32")
    eta[0] = 0.0
    eta[1] *= 1e-8
    ours = attacks.clip_eta(tf.constant(eta), norm, epsilon).numpy()
    theirs = cleverhans_clip_eta(tf.constant(eta), ch_norm, epsilon).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_kl_divergence_closed_form():
    p = np.array([[0.2, 0.8]], "float32")
    q = np.array([[0.5, 0.5]], "float32")
    expected = np.sum(p * np.log(p / q))
    got = attacks.kl_divergence(tf.math.log(p), tf.math.log(q)).numpy()
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


@pytest.mark.slow
def test_pgd_at_least_as_strong_as_fgsm_on_a_trained_model():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], epochs=20, batch_size=32, verbose=0)
    xt, yt = x[1500:], y[1500:]

    def accuracy(images):
        return np.mean(np.argmax(model.predict(images, verbose=0), 1) == yt)

    clean = accuracy(xt)
    fgsm = accuracy(attacks.fgsm(model, xt, yt, epsilon=0.1))
    pgd = accuracy(attacks.pgd(model, xt, yt, epsilon=0.1, step_size=0.025, num_steps=20,
                               seed=SEED))
    assert clean > 0.85
    assert pgd <= fgsm < clean
    assert pgd < clean - 0.2


def test_graph_and_eager_agree_and_num_steps_can_be_a_tensor():
    model = linear_model(3)
    x, y = data(seed=3)
    kwargs = dict(epsilon=0.2, step_size=0.05, norm="linf", loss="ce", start="uniform",
                  seed=SEED)
    eager = attacks.pgd(model, x, y, num_steps=4, **kwargs)
    graph = tf.function(lambda n: attacks.pgd(model, x, y, num_steps=n, **kwargs))(
        tf.constant(4))
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(norm="l1"), "norm"), (dict(loss="mse"), "loss"), (dict(start="zeros"), "start")])
def test_bad_choices_are_named(kwargs, match):
    model = linear_model()
    x, y = data(n=2)
    args = dict(epsilon=0.1, step_size=0.01, num_steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attacks.pgd(model, x, y, **args)
