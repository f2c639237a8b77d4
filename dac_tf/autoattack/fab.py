"""FAB-T: the targeted Fast Adaptive Boundary attack under L-inf (Croce & Hein, ICML 2020).

FAB is a minimum-norm attack: each iteration linearises the decision boundary between
the true class y and the target t at the current iterate, projects both the iterate and
the clean input onto that hyperplane (intersected with the [0, 1] box, minimal L-inf
distance: `projection_linf`), moves to a convex combination of the two projections
with overshoot `eta`, and after each adversarial iterate records it if its norm is the
smallest so far and steps back towards the clean input by `beta`. AutoAttack counts a
point as broken only if the smallest adversarial perturbation found has norm <= eps.

Settings of AutoAttack's standard version (official `fab_base.py`, `autoattack.py`):
n_iter = 100, n_restarts = 1 (so no random start: the official code only randomises the
start of restarts after the first), alpha_max = 0.1, eta = 1.05, beta = 0.9, 9 target
classes = the 2nd..10th highest clean logits, each target run only on points that
earlier targets did not break.

Implementation notes:
- One run is a `tf.while_loop`; per-example state (current iterate, best adversarial
  point, its norm) stays on the device.
- `projection_linf` solves the same problem as the official `projection_linf`
  (minimal L-inf step onto `{z: <w, z> = b} ∩ [0, 1]^d`, or the box corner closest
  to the hyperplane when it is out of reach). The official code finds the active set
  by a bisection over the sorted breakpoints; here the (monotone) breakpoint test is
  evaluated for all breakpoints at once and counted, which gives the same index.
- `final_search_steps` adds the original FAB paper's optional final search (a few
  steps of linear interpolation between the last correctly classified and the best
  adversarial point, `linear_approximation_search` in fra31/fab-attack). AutoAttack does
  not use it, so the default is 0.
"""

import numpy as np
import tensorflow as tf

from dac_tf.autoattack import _common
from dac_tf.autoattack import autopgd

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
_NO_ADV = 1e10  # norm recorded for "no adversarial point found yet" (official value)


def projection_linf(points, w, b):
    """Minimal L-inf step from each point onto a hyperplane within the [0, 1] box.

    Solves, per row, `min ||d||_inf s.t. <w, p + d> = b, 0 <= p + d <= 1`. Writing the
    step with radius `lam` as `d_i = -sign(w_i) * min(lam, room_i)` (room_i: distance to
    the box face in the direction that moves `<w, .>` towards b), the reachable change
    `g(lam) = sum_i |w_i| min(lam, room_i)` is piecewise linear and increasing; the
    optimal `lam` solves `g(lam) = |<w, p> - b|` on the segment located from the sorted
    `room_i`. If even the box corner does not reach the hyperplane, the corner step is
    returned (as the official code does).

    Args:
      points: [N, D] points.
      w: [N, D] hyperplane normals.
      b: [N] offsets.

    Returns:
      [N, D] steps `d`.
    """
    t = points
    sign = tf.where(tf.reduce_sum(w * t, 1) - b >= 0, 1.0, -1.0)
    w = w * sign[:, None]
    b = b * sign
    nonzero = tf.cast(tf.not_equal(w, 0.0), t.dtype)
    a = tf.cast(w < 0, t.dtype)
    d = (a - t) * nonzero              # the full step to the box face
    room = a - t * (2.0 * a - 1.0)     # |d_i| for w_i != 0

    # Breakpoints sorted by decreasing room: with lam = room_(k), the k+1 coordinates
    # with the most room move by lam, the others move fully.
    order = tf.argsort(room, axis=1, direction="DESCENDING", stable=True)
    ws = tf.gather(w, order, batch_dims=1)
    ds = tf.gather(d, order, batch_dims=1)
    rooms = tf.gather(room, order, batch_dims=1)
    need = b - tf.reduce_sum(w * t, 1)          # required change of <w, .>, <= 0
    full = tf.reduce_sum(w * d, 1)              # most negative change within the box
    s = tf.cumsum(tf.abs(ws), axis=1)
    sb = tf.cumsum(-ws * ds, axis=1) + full[:, None]
    at_break = sb - s * rooms                   # -g(room_(k))

    below_all = need - at_break[:, -1] > 0      # lam below the smallest room
    reachable = tf.logical_and(need - full > 0, tf.logical_not(below_all))
    # `need > at_break[k]` is monotone in k: the last k where it holds is the count - 1.
    k = tf.maximum(tf.reduce_sum(tf.cast(need[:, None] - at_break > 0, tf.int32), 1) - 1, 0)
    sb_k = tf.gather(sb, k, batch_dims=1)
    s_k = tf.gather(s, k, batch_dims=1)

    def safe_div(num, den):
        return num / tf.where(tf.equal(den, 0.0), tf.ones_like(den), den)

    lam_low = tf.maximum(safe_div(need - sb[:, -1], -s[:, -1]), 0.0)[:, None]
    lam_mid = tf.maximum(safe_div(need - sb_k, -s_k), 0.0)[:, None]
    d_low = (2.0 * a - 1.0) * lam_low
    d_mid = tf.minimum(lam_mid, d) * a + tf.maximum(-lam_mid, d) * (1.0 - a)
    d = tf.where(below_all[:, None], d_low, tf.where(reachable[:, None], d_mid, d))
    return d * nonzero


def _final_search(logits_fn, x, y, adv, found, steps):
    """Shrinks found perturbations by interpolating along the clean -> adv segment."""
    a1, a2 = x, adv
    z1 = _common.float_logits(logits_fn, a1)
    z2 = _common.float_logits(logits_fn, a2)
    l2 = _common.predicted_label(z2)
    for _ in range(steps):
        def diff(z, lab):
            return (tf.gather(z, y, axis=1, batch_dims=1)
                    - tf.gather(z, lab, axis=1, batch_dims=1))
        t1 = diff(z1, l2)
        t2 = -diff(z2, l2)
        t3 = t1 / (t1 + t2 + 1e-10)
        t3 = tf.where(tf.logical_and(t3 >= 0.0, t3 <= 1.0), t3, tf.ones_like(t3))
        t3e = _common.expand_to(t3, x)
        a3 = a1 * (1.0 - t3e) + a2 * t3e
        z3 = _common.float_logits(logits_fn, a3)
        l3 = _common.predicted_label(z3)
        same = tf.equal(l3, y)
        se = _common.expand_to(same, x)
        a1, z1 = tf.where(se, a3, a1), tf.where(same[:, None], z3, z1)
        a2, z2 = tf.where(se, a2, a3), tf.where(same[:, None], z2, z3)
        l2 = tf.where(same, l2, l3)
    return tf.where(_common.expand_to(found, x), a2, adv)


def _fab_impl(logits_fn, x, y, target, eps_b, n_iter, alpha_max, eta, beta, final_steps):
    bs = tf.shape(x)[0]
    x0 = tf.reshape(x, [bs, -1])

    def body(i, x1, adv, res):
        with tf.GradientTape() as tape:
            tape.watch(x1)
            z = _common.float_logits(logits_fn, x1)
            df = (tf.gather(z, target, axis=1, batch_dims=1)
                  - tf.gather(z, y, axis=1, batch_dims=1))
            total = tf.reduce_sum(df)
        w = tf.reshape(tape.gradient(total, x1,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO),
                       [bs, -1])
        x1f = tf.reshape(x1, [bs, -1])
        b = -df + tf.reduce_sum(w * x1f, 1)
        # One call for both points: they share the hyperplane (as the official code).
        d3 = projection_linf(tf.concat([x1f, x0], 0), tf.concat([w, w], 0),
                             tf.concat([b, b], 0))
        d1 = tf.reshape(d3[:bs], tf.shape(x))
        d2 = tf.reshape(d3[bs:], tf.shape(x))
        a0 = tf.maximum(_common.linf_norm(d3), 1e-8)
        a1, a2 = a0[:bs], a0[bs:]
        alpha = _common.expand_to(tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max), x)
        x1 = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x + eta * d2) * alpha,
                              0.0, 1.0)

        is_adv = tf.not_equal(_common.predicted_label(_common.float_logits(logits_fn, x1)), y)
        norm = _common.linf_norm(x1 - x)
        better = tf.logical_and(is_adv, norm < res)
        adv = tf.where(_common.expand_to(better, x), x1, adv)
        res = tf.where(better, norm, res)
        x1 = tf.where(_common.expand_to(is_adv, x), x + (x1 - x) * beta, x1)
        return i + 1, x1, adv, res

    _, _, adv, res = tf.while_loop(
        lambda i, *_: i < n_iter, body,
        [tf.constant(0), x, x, tf.fill([bs], tf.constant(_NO_ADV, tf.float32))],
        parallel_iterations=1)
    found = res < _NO_ADV
    if final_steps > 0:
        adv = _final_search(logits_fn, x, y, adv, found, final_steps)
    # AutoAttack's success test: the returned point is misclassified and within eps.
    is_adv = tf.not_equal(_common.predicted_label(_common.float_logits(logits_fn, adv)), y)
    success = found & is_adv & (_common.linf_norm(adv - x) <= eps_b)
    return tf.where(_common.expand_to(success, x), adv, x), success


_FAB = {jit: tf.function(_fab_impl, reduce_retracing=True, jit_compile=jit)
        for jit in (False, True)}


def fab_single_target(logits_fn, x, y, target_class, *, epsilon, n_iter=100,
                      alpha_max=ALPHA_MAX, eta=ETA, beta=BETA, final_search_steps=0,
                      jit_compile=False):
    """One FAB run towards the given target labels (no random start, as restart 0).

    Args:
      logits_fn: callable images -> logits.
      x: clean images [B, H, W, C] in [0, 1].
      y: labels [B].
      target_class: target labels [B].
      epsilon: budget (float or [B]) for the success test only; FAB itself is unbounded.
      n_iter: iterations.
      alpha_max, eta, beta: FAB's bias towards the clean input, overshoot, backward step.
      final_search_steps: steps of the optional final search (0 in AutoAttack).
      jit_compile: compile with XLA.

    Returns:
      An `AttackOutput` (success: adversarial with L-inf norm <= epsilon).
    """
    x, y = _common.to_inputs(x, y)
    target = tf.cast(tf.convert_to_tensor(target_class), tf.int32)
    eps_b = _common.per_example_eps(epsilon, x.shape[0])
    out = _FAB[bool(jit_compile)](
        logits_fn, x, y, target, eps_b, tf.constant(int(n_iter)),
        tf.constant(alpha_max, tf.float32), tf.constant(eta, tf.float32),
        tf.constant(beta, tf.float32), int(final_search_steps))
    return autopgd.AttackOutput(*out)


def fab_targeted(logits_fn, x, y, *, epsilon, n_iter=100, n_target_classes=9, seed=0,
                 alpha_max=ALPHA_MAX, eta=ETA, beta=BETA, final_search_steps=0,
                 jit_compile=False):
    """FAB-T as in AutoAttack's standard version: one run per target class.

    Target j is the (j+2)-th highest clean logit; each run only gets the points that
    no earlier target broke (within epsilon).

    Args:
      logits_fn, x, y, epsilon, n_iter, alpha_max, eta, beta, final_search_steps,
        jit_compile: as in `fab_single_target`.
      n_target_classes: number of targets (9 in AutoAttack; capped at K - 1).
      seed: unused: with one restart FAB-T is deterministic (the official code draws a
        random start only for restarts after the first). Kept for a uniform API.

    Returns:
      An `AttackOutput`.
    """
    del seed
    x, y = _common.to_inputs(x, y)
    z = _common.logits(logits_fn, x, jit_compile)
    targets = autopgd.target_ranking(z, n_target_classes).numpy()
    robust = (_common.predicted_label(z).numpy() == y.numpy())
    x_np = x.numpy()
    x_adv = x_np.copy()
    eps = np.asarray(epsilon, np.float32)
    for j in range(targets.shape[1]):
        idx = np.flatnonzero(robust)
        if idx.size == 0:
            break
        out = fab_single_target(
            logits_fn, x_np[idx], tf.gather(y, idx), targets[idx, j],
            epsilon=eps if eps.ndim == 0 else eps[idx], n_iter=n_iter, alpha_max=alpha_max,
            eta=eta, beta=beta, final_search_steps=final_search_steps,
            jit_compile=jit_compile)
        hit = out.success.numpy()
        robust[idx[hit]] = False
        x_adv[idx[hit]] = out.x_adv.numpy()[hit]
    return autopgd.AttackOutput(tf.constant(x_adv), tf.constant(~robust))
