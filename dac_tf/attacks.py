"""Training-time attacks: PGD under L-inf or L2 with cross-entropy, TRADES-KL or CW-margin loss.

Pure TensorFlow, usable in a custom loop or inside `DACModel.train_step`:
- the step loop is a `tf.while_loop` (one graph node, no Python unrolling, compiles under
  XLA);
- randomness comes from stateless ops seeded by an explicit `[2]` integer seed
  (`dac_tf.seeds`), so a run is reproducible and a resumed run draws the same noise as
  an uninterrupted one;
- BatchNorm mode is the caller's choice: pass `model_fn=lambda x: model(x, training=...)`
  (the AT reference attacks in train mode, which also moves BatchNorm statistics);
- the TRADES KL loss, which no attack library offers, is built in.

Why evaluation does not use this PGD: robustness numbers are reported with the field's
standard tool, CleverHans (`dac_tf.evaluation.attacks`, whose `loss_fn` hook also gives
CW-inf), and with AutoAttack (`dac_tf.autoattack`); training needs the properties above,
which CleverHans's Python-loop PGD with stateful noise does not have. The pieces that
are the same computation live here once: the Carlini-Wagner margin (`cw_margin`; the
evaluation's CW loss and AutoAttack's margin are thin wrappers with their own sign and
confidence conventions), the perturbation clip (`clip_eta`, equal to CleverHans's
`clip_eta` for every radius >= 1e-6 or 0) and the uniform L-inf start (`random_init`,
whose draw the evaluation's PGD start reuses).

Inputs are images in [clip_min, clip_max] (default [0, 1]); `epsilon` and `step_size` are
in the same units (8/255 for the usual CIFAR-10 L-inf budget; 8 is refused with the value
to pass, `dac_tf.protocol.unit_value`).
"""

import tensorflow as tf

from dac_tf import protocol
from dac_tf import seeds

NORMS = ("linf", "l2")
LOSSES = ("ce", "kl", "cw")
STARTS = ("uniform", "normal", "none")

# TRADES/MART start the attack at x + 0.001 * N(0, 1) (their reference code).
NORMAL_START_STD = 0.001
_RNG_ALG = seeds.RNG_ALG
# Guards the L2 gradient normalisation against a zero gradient (reference code value).
_L2_GRAD_EPS = 1e-10


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; use one of {', '.join(valid)}.")


def _per_example_l2_norm(t):
    axes = list(range(1, len(t.shape)))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


def clip_eta(eta, norm, epsilon):
    """Projects a perturbation onto the `norm`-ball of radius `epsilon` (per example).

    The same numbers as CleverHans's `clip_eta` (`cleverhans.tf2.utils`) for L-inf, and
    for L2 at every radius above 1e-6 and at 0 (CleverHans guards the division inside
    the square root instead, which differs only for smaller radii); a test checks it.

    Args:
      eta: perturbation tensor [batch, ...].
      norm: "linf" or "l2".
      epsilon: radius (Python float or scalar tensor).

    Returns:
      The projected perturbation, same shape and dtype as `eta`.
    """
    _check_choice("norm", norm, NORMS)
    epsilon = tf.cast(epsilon, eta.dtype)
    if norm == "linf":
        return tf.clip_by_value(eta, -epsilon, epsilon)
    # Scale down only the examples outside the ball (torch.renorm semantics).
    norms = _per_example_l2_norm(eta)
    factor = tf.minimum(1.0, epsilon / tf.maximum(norms, 1e-12))
    return eta * factor


def project(x_adv, x, norm, epsilon, clip_min=0.0, clip_max=1.0):
    """Projects `x_adv` onto the intersection of the eps-ball around `x` and the box."""
    eta = clip_eta(x_adv - x, norm, epsilon)
    return tf.clip_by_value(x + eta, clip_min, clip_max)


def random_init(x, norm, epsilon, start, seed, clip_min=0.0, clip_max=1.0):
    """The attack's starting point.

    Args:
      x: clean images.
      norm: "linf" or "l2".
      epsilon: radius of the ball.
      start: "uniform": uniform in the ball (L-inf: U(-eps, eps) per pixel; L2: a
        Gaussian direction with radius U(0, 1) * eps), clipped to the box, as the
        robust-overfitting code base (AT) does. "normal": x + 0.001 * N(0, 1), as
        TRADES and MART do (not clipped: the first step projects). "none": x itself.
      seed: int32/int64 tensor of shape [2] for the stateless random ops.

    Returns:
      The starting point, same shape and dtype as `x`.
    """
    _check_choice("start", start, STARTS)
    if start == "none":
        return x
    shape = tf.shape(x)
    if start == "normal":
        return x + NORMAL_START_STD * tf.random.stateless_normal(shape, seed, dtype=x.dtype, alg=_RNG_ALG)
    epsilon = tf.cast(epsilon, x.dtype)
    if norm == "linf":
        delta = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=x.dtype, alg=_RNG_ALG) * epsilon
    else:
        direction_seed, radius_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2, alg=_RNG_ALG))
        direction = tf.random.stateless_normal(shape, direction_seed, dtype=x.dtype, alg=_RNG_ALG)
        radius_shape = tf.concat([shape[:1], tf.ones_like(shape[1:])], axis=0)
        radius = tf.random.stateless_uniform(radius_shape, radius_seed, dtype=x.dtype, alg=_RNG_ALG)
        delta = direction / tf.maximum(_per_example_l2_norm(direction), 1e-12) * radius * epsilon
    return tf.clip_by_value(x + delta, clip_min, clip_max)


def cw_margin(logits, labels):
    """Carlini-Wagner margin per example: max_{j != y} z_j - z_y (positive = misclassified).

    The one implementation of "largest other logit minus the true logit": the training
    attack ascends it, the evaluation's CW-inf loss is `-relu(confidence - cw_margin)`
    (`dac_tf.evaluation.attacks.cw_loss`) and AutoAttack's Square margin and DLR
    numerator are `-cw_margin` (`dac_tf.autoattack.losses.margin`).

    Args:
      logits: [B, K] (cast to float32).
      labels: int labels [B].

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    true_logit = tf.reduce_sum(onehot * logits, axis=-1)
    # Push the true class far below every other before taking the max.
    other_logit = tf.reduce_max(logits - onehot * 1e9, axis=-1)
    return other_logit - true_logit


def kl_divergence(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) per example, summed over classes (float32)."""
    p_logits = tf.cast(p_logits, tf.float32)
    q_logits = tf.cast(q_logits, tf.float32)
    p = tf.nn.softmax(p_logits)
    return tf.reduce_sum(
        p * (tf.nn.log_softmax(p_logits) - tf.nn.log_softmax(q_logits)), axis=-1)


def attack_loss(loss, logits, labels, natural_logits=None):
    """Per-example loss the attack ascends.

    Args:
      loss: "ce" (cross-entropy with the true label), "kl" (TRADES: KL from the model's
        prediction on the clean input to its prediction on the adversarial one) or "cw"
        (Carlini-Wagner margin).
      logits: logits on the adversarial input.
      labels: int labels [batch].
      natural_logits: logits on the clean input, required for "kl".

    Returns:
      float32 tensor [batch].
    """
    _check_choice("loss", loss, LOSSES)
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=tf.cast(logits, tf.float32))
    if loss == "kl":
        if natural_logits is None:
            raise ValueError("loss='kl' needs natural_logits (the clean input's logits).")
        return kl_divergence(natural_logits, logits)
    return cw_margin(logits, labels)


def pgd(model_fn, x, y, *, epsilon, step_size, num_steps, norm="linf", loss="ce",
        start="uniform", seed=None, clip_min=0.0, clip_max=1.0, natural_logits=None):
    """Projected gradient ascent on `loss` inside the `norm`-ball of radius `epsilon`.

    Each step: gradient of the summed per-example loss w.r.t. the input, a signed step
    (L-inf) or a normalised step (L2) of length `step_size`, projection onto the ball and
    clipping to [clip_min, clip_max]. The result is a stopped-gradient tensor.

    Args:
      model_fn: callable images -> logits. Choose the BatchNorm mode here, e.g.
        `lambda t: model(t, training=False)`.
      x: clean images, float [batch, H, W, C].
      y: int labels [batch] (the true labels; the attack is untargeted).
      epsilon: radius of the ball (pixel units in [0, 1]; a Python number above 1 is
        refused as a value out of 255, `dac_tf.protocol.unit_value`).
      step_size: length of each step (same units and rule).
      num_steps: number of steps (Python int or scalar tensor; 0 returns the start).
      norm: "linf" or "l2".
      loss: "ce", "kl" or "cw" (see `attack_loss`).
      start: "uniform", "normal" or "none" (see `random_init`).
      seed: int tensor [2] for the random start; None draws one (not reproducible).
      clip_min, clip_max: the valid input box.
      natural_logits: clean-input logits for loss="kl"; computed with `model_fn` (and
        stopped) when not given, as TRADES does.

    Returns:
      Adversarial images, same shape and dtype as `x`, with no gradient.

    Raises:
      ValueError: an unknown norm, loss or start; `protocol.UnitError` (a ValueError):
        a radius or step that is not a number in [0, 1].
    """
    _check_choice("norm", norm, NORMS)
    _check_choice("loss", loss, LOSSES)
    _check_choice("start", start, STARTS)
    # Python numbers only: a tensor radius (in a traced step) is not read back.
    epsilon = protocol.unit_value("epsilon", epsilon)
    step_size = protocol.unit_value("step_size", step_size)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    y = tf.convert_to_tensor(y)
    if seed is None and start != "none":
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if loss == "kl" and natural_logits is None:
        natural_logits = model_fn(x)
    if natural_logits is not None:
        natural_logits = tf.stop_gradient(tf.cast(natural_logits, tf.float32))
    step_size = tf.cast(step_size, x.dtype)

    x_adv = random_init(x, norm, epsilon, start, seed, clip_min, clip_max)

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model_fn(x_adv)
            objective = tf.reduce_sum(attack_loss(loss, logits, y, natural_logits))
        grad = tape.gradient(objective, x_adv)
        if norm == "linf":
            x_adv = x_adv + step_size * tf.sign(grad)
        else:
            x_adv = x_adv + step_size * grad / (_per_example_l2_norm(grad) + _L2_GRAD_EPS)
        x_adv = project(x_adv, x, norm, epsilon, clip_min, clip_max)
        return i + 1, tf.stop_gradient(x_adv)

    _, x_adv = tf.while_loop(
        lambda i, _: i < num_steps, body,
        (tf.constant(0, tf.int32), x_adv),
        maximum_iterations=num_steps if isinstance(num_steps, int) else None)
    # Idempotent after any step; makes num_steps=0 with a random start land in the ball too.
    return tf.stop_gradient(project(x_adv, x, norm, epsilon, clip_min, clip_max))


def fgsm(model_fn, x, y, *, epsilon, norm="linf", loss="ce", clip_min=0.0, clip_max=1.0):
    """One full-size step from the clean input (Goodfellow et al.): PGD with 1 step of eps."""
    return pgd(model_fn, x, y, epsilon=epsilon, step_size=epsilon, num_steps=1, norm=norm,
               loss=loss, start="none", clip_min=clip_min, clip_max=clip_max)
