"""Auto-PGD (APGD) under L-inf: APGD-CE, APGD-DLR and APGD-T (Croce & Hein, ICML 2020).

One run (`apgd`) is a single `tf.while_loop` over the iterations: per-example step
sizes, best-loss / best-point tracking and the checkpoint test all stay on the device,
with no host synchronisation inside the loop. `apgd_targeted` loops over the target
classes in Python (one run per target, on the points not yet broken), as the official
`APGDAttack_targeted.perturb` does.

Algorithm (paper, Alg. 1, and the official `autopgd_base.py`):
- start: `x0 = clip(x + eps * t / ||t||_inf, 0, 1)`, `t ~ U(-1, 1)^d` (the official
  "rand init": the start lies on the boundary of the ball, not uniform inside it);
- step size `eta = 2 * eps`, per example; first step plain PGD, then momentum
  `x_{k+1} = P(x_k + alpha * (z_{k+1} - x_k) + (1 - alpha) * (x_k - x_{k-1}))`,
  `z_{k+1} = P(x_k + eta * sign(grad))`, `alpha = 0.75`;
- checkpoints `w_j = ceil(p_j * N)`, `p_0 = 0`, `p_1 = 0.22`,
  `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`; at each checkpoint the step is
  halved and the iterate (and its gradient) reset to the best point when
  condition 1 (fraction of loss increases over the last segment <= rho = 0.75) or
  condition 2 (step not reduced at the previous checkpoint and best loss not improved
  since it) holds.

Where this follows one source over the other (all differences are in corner cases):
- Checkpoints use the paper's closed form evaluated in exact rational arithmetic. For
  N = 100 (the standard version) this is the official list 22, 41, 57, 70, 80, 87, 93,
  99; the official code's integer rounding (`int(0.22 N)`, `int(0.03 N)`, ...) differs
  from the closed form for other N (e.g. N = 50). Duplicate checkpoints (tiny N) are
  merged.
- Condition 1 counts increases `f(x_{i+1}) > f(x_i)` over the segment including the
  comparison with the loss at the segment's first point, as the paper writes. The
  official code's first comparison of the first segment reads an unfilled (zero) row of
  its loss buffer instead of the starting loss.
- Condition 1 uses `<=` (official) rather than the paper's strict `<`; condition 2 is
  disabled at the first checkpoint (official: "reduced at the last check" starts True).
- The returned adversarial point is the last misclassified iterate, as the official
  `x_best_adv`; the highest-loss point is returned too (`x_best`).
"""

import collections
import fractions
import math

import numpy as np
import tensorflow as tf

from dac_tf import seeds
from dac_tf.autoattack import _common
from dac_tf.autoattack import losses

LOSSES = ("ce", "dlr", "dlr-targeted")

RHO = 0.75          # condition-1 threshold
MOMENTUM = 0.75     # alpha in the update
INITIAL_STEP = 2.0  # eta_0 = 2 * eps

APGDOutput = collections.namedtuple(
    "APGDOutput", ["x_adv", "success", "x_best", "loss_best", "step_size"])
APGDOutput.__doc__ = """Result of one APGD run.

x_adv: the adversarial example where `success`, else the clean input.
success: [B] bool, True where an iterate was misclassified (the start point counts).
x_best: the iterate with the highest loss (the official `best_loss=True` output).
loss_best: [B] the highest loss reached.
step_size: [B] the final step sizes (diagnostics: 2 * eps halved at each reduction).
"""


def apgd_checkpoints(n_iter):
    """Iteration counts after which APGD tests its step size (the paper's closed form).

    `w_j = ceil(p_j * n_iter)` with `p_0 = 0`, `p_1 = 0.22`,
    `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`, computed with exact fractions
    so that e.g. `0.41 * 100` is 41 and not 42 (float `ceil(41.00000000000001)`).

    Args:
      n_iter: number of iterations N.

    Returns:
      Strictly increasing list of the checkpoints `0 < w_j <= n_iter`.
    """
    p_prev, p = fractions.Fraction(0), fractions.Fraction(22, 100)
    out = []
    while True:
        w = math.ceil(p * n_iter)
        if w > n_iter:
            return out
        if w > 0 and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - fractions.Fraction(3, 100),
                               fractions.Fraction(6, 100))


def _checkpoint_tables(n_iter):
    """Per-iteration tables: is iteration i (0-based) the last before a checkpoint, and
    the length of the segment it closes (w_j - w_{j-1})."""
    is_ckpt = np.zeros([n_iter], bool)
    seg_len = np.zeros([n_iter], np.float32)
    prev = 0
    for w in apgd_checkpoints(n_iter):
        is_ckpt[w - 1] = True
        seg_len[w - 1] = w - prev
        prev = w
    return tf.constant(is_ckpt), tf.constant(seg_len)


def step_size_update(step_size, n_increases, segment_length, reduced_last, loss_best,
                     loss_best_last, rho=RHO):
    """The checkpoint test of APGD, per example.

    Args:
      step_size: [B] current step sizes.
      n_increases: [B] number of `f(x_{i+1}) > f(x_i)` in the segment just finished.
      segment_length: length `w_j - w_{j-1}` of that segment (scalar or [B]).
      reduced_last: [B] bool, whether the step was halved at the previous checkpoint.
      loss_best: [B] best loss now.
      loss_best_last: [B] best loss at the previous checkpoint.
      rho: condition-1 threshold.

    Returns:
      `(new_step_size, reduced)`: halved where condition 1 or 2 holds; `reduced` [B]
      bool says where (the caller also restarts those examples from the best point).
    """
    n_increases = tf.cast(n_increases, tf.float32)
    segment_length = tf.cast(segment_length, tf.float32)
    cond1 = n_increases <= rho * segment_length
    cond2 = tf.logical_and(tf.logical_not(reduced_last), loss_best_last >= loss_best)
    reduced = tf.logical_or(cond1, cond2)
    return tf.where(reduced, step_size / 2.0, step_size), reduced


def _loss_fn(name):
    if name == "ce":
        return lambda z, y, t: losses.ce_loss(z, y)
    if name == "dlr":
        return lambda z, y, t: losses.dlr_loss(z, y)
    if name == "dlr-targeted":
        return losses.dlr_loss_targeted
    raise ValueError(f"loss={name!r} is not valid; use one of {', '.join(LOSSES)}.")


def _apgd_impl(logits_fn, x, y, target, eps_b, seed, is_ckpt, seg_len, rho, loss_name):
    loss_fn = _loss_fn(loss_name)
    n_iter = tf.shape(is_ckpt)[0]
    bs = tf.shape(x)[0]

    def loss_and_grad(x_in):
        with tf.GradientTape() as tape:
            tape.watch(x_in)
            z = _common.float_logits(logits_fn, x_in)
            loss = loss_fn(z, y, target)
            total = tf.reduce_sum(loss)
        # ZERO: a model that ignores its input gives a zero step, not a None error.
        return z, loss, tape.gradient(total, x_in,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)

    e = _common.expand_to(eps_b, x)
    t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, alg=seeds.RNG_ALG)
    t_max = _common.expand_to(_common.linf_norm(t), x)
    x_adv = tf.clip_by_value(x + e * t / (t_max + 1e-12), 0.0, 1.0)
    z, loss, grad = loss_and_grad(x_adv)
    acc = tf.equal(_common.predicted_label(z), y)
    step = INITIAL_STEP * eps_b

    state = dict(
        i=tf.constant(0), x_adv=x_adv, x_old=x_adv, grad=grad, step=step,
        x_best=x_adv, grad_best=grad, loss_best=loss, x_best_adv=x_adv, acc=acc,
        loss_prev=loss, n_inc=tf.zeros([bs], tf.float32), loss_best_last=loss,
        reduced_last=tf.ones([bs], tf.bool))

    def body(s):
        i = s["i"]
        momentum = tf.where(i > 0, MOMENTUM, 1.0)
        grad2 = s["x_adv"] - s["x_old"]
        x_cur = s["x_adv"]
        step_e = _common.expand_to(s["step"], x)
        z1 = _common.project_linf(x_cur + step_e * tf.sign(s["grad"]), x, eps_b)
        x_new = _common.project_linf(
            x_cur + (z1 - x_cur) * momentum + grad2 * (1.0 - momentum), x, eps_b)

        z, loss, grad = loss_and_grad(x_new)
        pred_ok = tf.equal(_common.predicted_label(z), y)
        acc = tf.logical_and(s["acc"], pred_ok)
        x_best_adv = tf.where(_common.expand_to(~pred_ok, x), x_new, s["x_best_adv"])

        n_inc = s["n_inc"] + tf.cast(loss > s["loss_prev"], tf.float32)
        improved = loss > s["loss_best"]
        improved_e = _common.expand_to(improved, x)
        x_best = tf.where(improved_e, x_new, s["x_best"])
        grad_best = tf.where(improved_e, grad, s["grad_best"])
        loss_best = tf.where(improved, loss, s["loss_best"])

        # The checkpoint test is cheap, so it is evaluated every iteration and applied
        # only where `is_ckpt[i]` (keeps the loop body a single straight-line graph).
        ckpt = is_ckpt[i]
        new_step, reduced = step_size_update(s["step"], n_inc, seg_len[i], s["reduced_last"],
                                             loss_best, s["loss_best_last"], rho)
        reduced = tf.logical_and(reduced, ckpt)
        reduced_e = _common.expand_to(reduced, x)
        return [dict(
            i=i + 1,
            x_adv=tf.where(reduced_e, x_best, x_new),
            x_old=x_cur,
            grad=tf.where(reduced_e, grad_best, grad),
            step=tf.where(ckpt, new_step, s["step"]),
            x_best=x_best, grad_best=grad_best, loss_best=loss_best,
            x_best_adv=x_best_adv, acc=acc, loss_prev=loss,
            n_inc=tf.where(ckpt, tf.zeros_like(n_inc), n_inc),
            loss_best_last=tf.where(ckpt, loss_best, s["loss_best_last"]),
            reduced_last=tf.where(ckpt, reduced, s["reduced_last"]))]

    s = tf.while_loop(lambda s: s["i"] < n_iter, body, [state], parallel_iterations=1)[0]
    success = tf.logical_not(s["acc"])
    x_out = tf.where(_common.expand_to(success, x), s["x_best_adv"], x)
    return x_out, success, s["x_best"], s["loss_best"], s["step"]


_APGD = {jit: tf.function(_apgd_impl, reduce_retracing=True, jit_compile=jit)
         for jit in (False, True)}


def apgd(logits_fn, x, y, *, epsilon, loss="ce", n_iter=100, target_class=None, seed=0,
         rho=RHO, jit_compile=False):
    """One L-inf APGD run (one restart) on one batch.

    Args:
      logits_fn: callable images [B, H, W, C] in [0, 1] -> logits [B, K]. BatchNorm mode
        is the caller's choice (AutoAttack evaluates in inference mode).
      x: clean images [B, H, W, C], float in [0, 1].
      y: labels [B] int.
      epsilon: L-inf budget, a float or a [B] vector.
      loss: "ce" (APGD-CE), "dlr" (APGD-DLR) or "dlr-targeted" (one APGD-T run).
      n_iter: iterations N (100 in AutoAttack).
      target_class: [B] target labels, required for "dlr-targeted", else ignored.
      seed: int or [2] integer tensor for the stateless start noise.
      rho: condition-1 threshold.
      jit_compile: compile the loop with XLA.

    Returns:
      An `APGDOutput`.
    """
    x, y = _common.to_inputs(x, y)
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not valid; use one of {', '.join(LOSSES)}.")
    if loss == "dlr-targeted":
        if target_class is None:
            raise ValueError("loss='dlr-targeted' needs target_class.")
        target = tf.cast(tf.convert_to_tensor(target_class), tf.int32)
    else:
        target = y
    is_ckpt, seg_len = _checkpoint_tables(int(n_iter))
    eps_b = _common.per_example_eps(epsilon, x.shape[0])
    out = _APGD[bool(jit_compile)](logits_fn, x, y, target, eps_b, seeds.as_seed(seed),
                                   is_ckpt, seg_len, tf.constant(rho, tf.float32), loss)
    return APGDOutput(*out)


def target_ranking(logits, n_target_classes):
    """Target labels of the targeted attacks: the 2nd..(n+1)-th highest clean logits.

    Args:
      logits: clean logits [B, K].
      n_target_classes: how many targets (9 in AutoAttack); capped at K - 1.

    Returns:
      int32 [B, min(n_target_classes, K - 1)]; column j is the (j+2)-th ranked class.
    """
    k = int(logits.shape[-1])
    n = min(int(n_target_classes), k - 1)
    return tf.math.top_k(logits, k=n + 1).indices[:, 1:]


AttackOutput = collections.namedtuple("AttackOutput", ["x_adv", "success"])
AttackOutput.__doc__ = """x_adv: adversarial example where `success`, else the clean input.
success: [B] bool."""


def apgd_targeted(logits_fn, x, y, *, epsilon, n_iter=100, n_target_classes=9, seed=0,
                  rho=RHO, jit_compile=False):
    """APGD-T: targeted-DLR APGD against each of the top `n_target_classes` other classes.

    As the official `APGDAttack_targeted` (n_restarts=1): target j is the (j+2)-th
    highest logit of the clean prediction; each target's run only gets the points no
    earlier target broke; each run is seeded with `seed` folded with the target rank.

    Args:
      logits_fn, x, y, epsilon, n_iter, seed, rho, jit_compile: as in `apgd`.
      n_target_classes: number of targets (9 in AutoAttack; capped at K - 1). The
        targeted DLR loss needs K >= 4.

    Returns:
      An `AttackOutput`.
    """
    x, y = _common.to_inputs(x, y)
    z = _common.logits(logits_fn, x, jit_compile)
    if z.shape[-1] < 4:
        raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes.")
    targets = target_ranking(z, n_target_classes).numpy()
    robust = (_common.predicted_label(z).numpy() == y.numpy())
    x_np = x.numpy()
    x_adv = x_np.copy()
    for j in range(targets.shape[1]):
        idx = np.flatnonzero(robust)
        if idx.size == 0:
            break
        out = apgd(logits_fn, x_np[idx], tf.gather(y, idx), epsilon=_gather_eps(epsilon, idx),
                   loss="dlr-targeted", n_iter=n_iter, target_class=targets[idx, j],
                   seed=_common.fold_seed(seed, j + 2), rho=rho, jit_compile=jit_compile)
        hit = out.success.numpy()
        robust[idx[hit]] = False
        x_adv[idx[hit]] = out.x_adv.numpy()[hit]
    return AttackOutput(tf.constant(x_adv), tf.constant(~robust))


def _gather_eps(epsilon, idx):
    eps = np.asarray(epsilon, np.float32)
    return eps if eps.ndim == 0 else eps[idx]
