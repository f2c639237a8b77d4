"""Tests of dac_tf.evaluation.attacks: the CleverHans attacks stay in the ball and the box, the
seeded random start, PGD equals CleverHans's own, the CW loss's closed form, padded batches
counted once, one graph for attacks differing only in numbers.

The trained small CNN on digits: tests/conftest.py (once per session)."""

import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from dac_tf.evaluation import attacks
from dac_tf.evaluation import runner
from helpers_evaluation import EPS
from helpers_evaluation import linear_fn


def _attack(kind, fn, x, y, eps, norm, seed=(1, 2)):
    if kind == "fgsm":
        return attacks.fgsm(fn, x, y, epsilon=eps, norm=norm)
    loss_fn = attacks.make_cw_loss_fn() if kind == "cw" else None
    return attacks.pgd(fn, x, y, epsilon=eps, step_size=eps / 4, num_steps=5, norm=norm,
                       loss_fn=loss_fn, seed=tf.constant(seed, tf.int64))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["fgsm", "pgd", "cw"])
def test_attack_stays_in_ball_and_box(kind, norm, digits, logits_fn):
    x, y = digits.x_test[:32], digits.y_test[:32]
    eps = EPS if norm == "linf" else 1.0
    x_adv = _attack(kind, logits_fn, x, y, eps, norm).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1)
    dist = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert dist.max() <= eps + 1e-5
    assert dist.max() > eps / 2   # the attack did move


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_in_ball_and_seeded(norm):
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)), tf.float32)
    eps = 0.1 if norm == "linf" else 1.0
    seed = tf.constant([3, 4], tf.int64)
    a = attacks.random_start(x, norm, eps, seed).numpy()
    b = attacks.random_start(x, norm, eps, seed).numpy()
    c = attacks.random_start(x, norm, eps, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    delta = (a - x.numpy()).reshape(64, -1)
    dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert dist.max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_linf_start_is_the_documented_stateless_draw():
    """The start's stream is pinned (a resumed or repeated evaluation draws the same
    points): x + eps * U(-1, 1) from stateless Philox, clipped to the box."""
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    noise = tf.random.stateless_uniform(x.shape, seed, -1.0, 1.0, alg="philox").numpy()
    expected = np.clip(x + noise * np.float32(0.1), 0.0, 1.0)
    np.testing.assert_array_equal(attacks.random_start(tf.constant(x), "linf", 0.1, seed),
                                  expected)


@pytest.mark.parametrize("norm,ch_norm", [("linf", np.inf), ("l2", 2)])
def test_pgd_iteration_is_cleverhans(norm, ch_norm, digits, logits_fn):
    """From the same (clean) start our while_loop PGD equals CleverHans's own PGD."""
    x, y = digits.x_test[:16], digits.y_test[:16]
    eps = EPS if norm == "linf" else 1.0
    ours = attacks.pgd(logits_fn, x, y, epsilon=eps, step_size=eps / 4, num_steps=7, norm=norm)
    theirs = projected_gradient_descent(logits_fn, x, eps, eps / 4, 7, ch_norm, y=y,
                                        clip_min=0.0, clip_max=1.0, rand_init=False)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)


def test_cw_loss_matches_its_closed_form():
    logits = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0], [1.0, 1.0, 4.0],
                       [-60.0, 0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 2, 0])
    for kappa in (0.0, 1.5, 50.0):
        expected = []
        for z, t in zip(logits, labels):
            other = max(z[j] for j in range(3) if j != t)
            expected.append(-max(z[t] - other + kappa, 0.0))
        got = attacks.cw_loss(labels, logits, kappa).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The last row trails by 61 > 50: clamped to zero, no gradient.
    assert attacks.cw_loss(labels, logits, 50.0).numpy()[3] == 0.0
    # CleverHans calls loss_fn(labels=, logits=) and ascends its mean: the keyword
    # wrapper must be the closed form above, per example.
    loss_fn = attacks.make_cw_loss_fn(1.5)
    expected = [-max(z[t] - max(z[j] for j in range(3) if j != t) + 1.5, 0.0)
                for z, t in zip(logits, labels)]
    np.testing.assert_allclose(loss_fn(labels=labels, logits=logits).numpy(), expected,
                               atol=1e-6)


def test_padding_and_masking_count_every_example_once():
    """N=13 in batches of 5: 3 traced-once calls, the 2 padded rows never counted."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (13, 8, 8, 1)).astype(np.float32)
    fn = linear_fn(2)
    pred = np.argmax(fn(x).numpy(), -1)
    # Labels chosen so that 7 of 13 are right; the last example (copied into the
    # padding) is right, so counting the padding would give 9/15 or 9/13, not 7/13.
    y = pred.copy()
    wrong = [0, 2, 4, 6, 8, 10]
    y[wrong] = (pred[wrong] + 1) % 10
    settings = attacks.attack_settings(attacks.AttackSpec("clean", "clean"), epsilon=0.0)
    batch_fn = attacks.make_batch_fn(fn, settings)
    calls = []
    out = attacks.run_batched(batch_fn, x, y, batch_size=5,
                              progress=lambda d, t: calls.append((d, t)))
    assert len(out["correct"]) == 13
    np.testing.assert_array_equal(out["correct"], pred == y)
    assert out["correct"].sum() == 7
    assert calls == [(5, 13), (10, 13), (13, 13)]
    assert batch_fn.tracing_count() == 1

    # FGSM is deterministic: batched with padding == one unpadded pass over all 13.
    record = runner.evaluate_model(fn, x, y, attacks="clean,fgsm", epsilon=0.05,
                                   batch_size=5, show_progress=False)
    adv = attacks.fgsm(fn, x, y, epsilon=0.05)
    fgsm_correct = np.argmax(fn(adv).numpy(), -1) == y
    assert record["accuracy"]["clean"] == pytest.approx(7 / 13)
    assert record["accuracy"]["fgsm"] == pytest.approx(fgsm_correct.mean())
    flags_ = {k: np.array([c == "1" for c in v]) for k, v in record["robust_flags"].items()}
    assert all(len(v) == 13 for v in flags_.values())
    np.testing.assert_array_equal(flags_["fgsm"], fgsm_correct)
    worst = (pred == y) & fgsm_correct
    assert record["worst_case_accuracy"] == pytest.approx(worst.mean())
    np.testing.assert_array_equal(flags_["__worst_case__"], worst)


def test_attacks_differing_only_in_numbers_share_one_graph():
    fn = linear_fn(3)
    x = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    y = np.arange(6, dtype=np.int32)
    fns = [attacks.make_batch_fn(fn, attacks.attack_settings(spec, epsilon=eps))
           for spec, eps in zip(attacks.parse_attacks("pgd3,pgd7,pgd20"), (0.1, 0.2, 0.0))]
    outs = [f(tf.constant(x), tf.constant(y), tf.constant([0, 0], tf.int64)) for f in fns]
    assert fns[0].function is fns[1].function is fns[2].function
    assert fns[0].tracing_count() == 1
    assert np.abs(outs[0]["linf"].numpy()).max() <= 0.1 + 1e-6
    assert np.abs(outs[1]["linf"].numpy()).max() > 0.1
    assert np.abs(outs[2]["linf"].numpy()).max() == 0.0

