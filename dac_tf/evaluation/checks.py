"""Sanity checks of an evaluation, after the advice of fra31/auto-attack (`checks.py`).

Cheap checks before trusting a number: the outputs are logits and not probabilities, the
forward pass is deterministic, input gradients are non-zero, black-box Square does not
beat the white-box attacks (AutoAttack's own checks); plus eps = 0 reproducing the clean
predictions, every adversarial example in the ball and the box, more PGD steps never
raising the robust accuracy, and FGSM never beating PGD. Each returns
`dict(name, passed, detail)`; `passed` is None when a check could not be run.
`dac_tf.evaluation.runner` runs them and stores them in the record.
"""

import numpy as np
import tensorflow as tf

from dac_tf.evaluation import attacks

# Tolerances of the checks, in float32 pixel units / fractions of the examples.
BALL_TOL = 1e-5
# fra31/auto-attack `check_square_sr`: Square may lower the accuracy by at most 0.2%.
BLACK_BOX_TOL = 0.002


def _check(name, passed, detail):
    return dict(name=name, passed=None if passed is None else bool(passed), detail=detail)


def check_logits(logits):
    """Outputs must be logits: not all rows in [0, 1] summing to 1 (softmax outputs)."""
    logits = np.asarray(logits, np.float64)
    in_unit = bool(np.all((logits >= 0) & (logits <= 1)))
    sums_one = bool(np.allclose(logits.sum(axis=1), 1.0, atol=1e-4))
    passed = not (in_unit and sums_one)
    detail = ("outputs look like logits" if passed else
              "every output row lies in [0, 1] and sums to 1: the model returns "
              "probabilities; attacks and the CW loss need logits")
    return _check("outputs_are_logits", passed, detail)


def check_deterministic(logits_fn, x, tol=1e-5):
    """Two forward passes on the same batch must agree (no dropout, BN in inference)."""
    a = np.asarray(logits_fn(tf.constant(x)), np.float64)
    b = np.asarray(logits_fn(tf.constant(x)), np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
    passed = diff <= tol * scale
    return _check("deterministic_forward", passed,
                  f"max |difference| between two passes: {diff:.3g}"
                  + ("" if passed else " (randomness in the forward pass, e.g. dropout or "
                     "BatchNorm in training mode, makes gradient attacks unreliable)"))


def check_gradients(logits_fn, x, y):
    """The input gradient of the cross-entropy must be non-zero for every example."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = attacks.ce_loss_fn(labels=tf.constant(y), logits=logits_fn(x))
    grad = tape.gradient(loss, x)
    if grad is None:
        return _check("nonzero_input_gradients", False,
                      "no gradient flows from the logits to the input")
    norms = np.abs(grad.numpy().reshape(len(y), -1)).max(axis=1)
    zero = int(np.sum(norms == 0))
    return _check("nonzero_input_gradients", zero == 0,
                  f"{zero} of {len(y)} examples have an all-zero input gradient"
                  + ("" if zero == 0 else " (gradient masking: white-box numbers may "
                     "overestimate robustness)"))


def check_eps_zero(logits_fn, x, y, *, norm="linf", steps=5):
    """PGD with eps = 0 must reproduce the clean predictions exactly."""
    model_fn = attacks.float_logits_fn(logits_fn)
    x = tf.constant(x)
    y = tf.constant(np.asarray(y, np.int32))
    adv = attacks.pgd(model_fn, x, y, epsilon=0.0, step_size=0.01, num_steps=steps,
                      norm=norm, seed=tf.constant([0, 0], tf.int64))
    same_input = bool(np.array_equal(adv.numpy(), x.numpy()))
    clean = np.argmax(model_fn(x).numpy(), -1)
    attacked = np.argmax(model_fn(adv).numpy(), -1)
    passed = same_input and bool(np.array_equal(clean, attacked))
    return _check("eps_zero_is_clean", passed,
                  "PGD with eps=0 returns the input and its predictions" if passed else
                  f"PGD with eps=0 changed the input ({not same_input}) or "
                  f"{int(np.sum(clean != attacked))} predictions")


def check_in_ball(name, results, epsilon, norm):
    """Every adversarial example lies in the eps-ball around its input and in [0, 1]."""
    dist = results["linf" if norm == "linf" else "l2"]
    worst = float(dist.max()) if len(dist) else 0.0
    out_of_box = int(np.sum(~results["in_box"]))
    passed = worst <= epsilon + BALL_TOL and out_of_box == 0
    return _check(f"{name}_in_ball_and_box", passed,
                  f"max {norm} distance {worst:.6g} (eps {epsilon:.6g}), "
                  f"{out_of_box} examples outside [0, 1]")


def check_monotone(specs, accuracy, n):
    """More PGD steps never raise the accuracy; FGSM never beats PGD (CW likewise).

    Random starts make two runs differ slightly, so a rise of at most
    max(1 example, 0.1%) is tolerated.

    Args:
      specs: the `AttackSpec`s that ran.
      accuracy: name -> robust accuracy in [0, 1].
      n: number of examples.

    Returns:
      A list of check dicts (empty when no pair applies).
    """
    tol = max(1.0 / n, 0.001) if n else 0.0
    checks = []
    pgds = sorted((s for s in specs if s.kind == "pgd" and s.name in accuracy),
                  key=lambda s: s.steps)
    for few, many in zip(pgds, pgds[1:]):
        a_few, a_many = accuracy[few.name], accuracy[many.name]
        checks.append(_check(
            f"{many.name}_not_above_{few.name}", a_many <= a_few + tol,
            f"{many.name} {100 * a_many:.2f}% vs {few.name} {100 * a_few:.2f}%"
            + ("" if a_many <= a_few + tol else
               ": more steps gave a higher robust accuracy (the attack has not converged "
               "or the gradients are obfuscated)")))
    for weak in (s for s in specs if s.kind == "fgsm" and s.name in accuracy):
        for strong in pgds:
            a_weak, a_strong = accuracy[weak.name], accuracy[strong.name]
            checks.append(_check(
                f"{weak.name}_not_below_{strong.name}", a_weak + tol >= a_strong,
                f"{weak.name} {100 * a_weak:.2f}% vs {strong.name} {100 * a_strong:.2f}%"
                + ("" if a_weak + tol >= a_strong else
                   ": one-step FGSM beats iterative PGD (a sign of gradient masking)")))
    return checks


def check_black_box(flags_white, flags_after_square, n):
    """Square (black-box) must not break points every white-box attack left robust.

    Args:
      flags_white: [N] bool, robust to every white-box attack run (AND over them).
      flags_after_square: [N] bool, robust after AutoAttack including Square.
      n: number of examples.

    Returns:
      A check dict (fra31/auto-attack's threshold: at most 0.2% of the points).
    """
    extra = int(np.sum(flags_white & ~flags_after_square))
    frac = extra / n if n else 0.0
    passed = frac <= BLACK_BOX_TOL
    return _check("black_box_not_beating_white_box", passed,
                  f"Square broke {extra} points ({100 * frac:.2f}%) that survived every "
                  "white-box attack" + ("" if passed else
                                        ": the white-box numbers are unreliable (gradient "
                                        "masking); consider adaptive attacks"))

