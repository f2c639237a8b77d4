"""Square attack under L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020).

A score-based black-box attack: no gradients, only logits. It starts from vertical
stripes (`x + eps * s`, one random sign per column and channel, constant along the
height) and, each iteration, proposes to set a random square window of side `s_i` to
a vertex of the eps-ball (one random sign per channel over the window); the proposal is
kept if it lowers the margin loss `z_y - max_{j!=y} z_j`, or if it misclassifies. A
point stops as soon as its margin is <= 0.

The square side follows the published schedule of `p` (fraction of pixels changed):
`p_init = 0.8`, halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
(`p_selection`), `s = max(round(sqrt(p * H * W)), 1)`.

AutoAttack's standard version (official `autoattack.py`) uses n_queries = 5000,
p_init = 0.8, one restart, the margin loss, and `resc_schedule=False`: the iteration
thresholds are *not* rescaled to the query budget (5000 queries reach the p_init/64 stage
only). `rescale_schedule=True` gives the Square paper's rescaling by
`n_queries / 10000`; the default follows AutoAttack.

Deviations from the official AutoAttack `square.py` (both towards the Square paper):
- Each image draws its own window position and signs; the official code draws one
  window and one sign per channel per iteration shared by the whole batch (each image
  still accepts or rejects it on its own).
- Window corners are uniform over all positions where the window fits,
  `{0, ..., H - s}`; the official `random_int(0, h - s)` excludes the last one.
- The loop runs on the whole batch with the finished points frozen (masked), instead of
  gathering the unfinished ones each iteration; it stops when every point is done.
  Each point's query count and acceptance rule are unchanged.
"""

import math

import numpy as np
import tensorflow as tf

from dac_tf import seeds
from dac_tf.autoattack import _common
from dac_tf.autoattack import autopgd
from dac_tf.autoattack import losses

P_INIT = 0.8
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256))


def p_selection(iteration, n_queries, p_init=P_INIT, rescale_schedule=False):
    """Fraction of pixels in the window at a (0-based) iteration.

    Args:
      iteration: the iteration index i.
      n_queries: the query budget (only used when rescaling).
      p_init: initial fraction.
      rescale_schedule: map i to `int(i / n_queries * 10000)` first (Square paper).

    Returns:
      `p_init / 2^m` where m counts the thresholds 10, 50, ..., 8000 strictly below i.
    """
    it = int(iteration / n_queries * 10000) if rescale_schedule else int(iteration)
    div = 1
    for threshold, d in _SCHEDULE:
        if it > threshold:
            div = d * 2
    return p_init / div


def square_sizes(n_queries, height, width, p_init=P_INIT, rescale_schedule=False):
    """Window side for each iteration: `max(round(sqrt(p_i * H * W)), 1)`, at most min(H, W).

    Python's `round` (half to even) is used, as the official code does.
    """
    sizes = [max(int(round(math.sqrt(p_selection(i, n_queries, p_init, rescale_schedule)
                                      * height * width))), 1)
             for i in range(n_queries)]
    return np.minimum(np.asarray(sizes, np.int32), min(height, width))


def _square_impl(logits_fn, x, y, eps_b, seed, sizes):
    # Image dimensions are static (only the batch dimension is generalised on retrace);
    # static shapes keep the loop variables' shapes fixed.
    bs = tf.shape(x)[0]
    h, w, c = (int(d) for d in x.shape[1:])
    e = _common.expand_to(eps_b, x)
    n_queries = tf.shape(sizes)[0]

    stripes = tf.sign(tf.random.stateless_uniform(
        [bs, 1, w, c], _common.fold_seed(seed, 0), -1.0, 1.0, alg=seeds.RNG_ALG))
    x_best = tf.clip_by_value(x + e * stripes, 0.0, 1.0)
    margin = losses.margin(_common.float_logits(logits_fn, x_best), y)
    # The standard version's loss is the margin itself, so one tracker serves both the
    # "loss improved" test and the success test (kept apart for clarity below).
    loss_min, margin_min = margin, margin
    queries = tf.ones([bs], tf.int32)
    rows = tf.range(h)[None, :, None, None]
    cols = tf.range(w)[None, None, :, None]

    def cond(i, x_best, loss_min, margin_min, queries):
        return tf.logical_and(i < n_queries, tf.reduce_any(margin_min > 0.0))

    def body(i, x_best, loss_min, margin_min, queries):
        active = margin_min > 0.0
        s = sizes[i]
        sd = _common.fold_seed(seed, i + 1)
        vh = tf.random.stateless_uniform([bs], _common.fold_seed(sd, 0), 0, h - s + 1,
                                         dtype=tf.int32, alg=seeds.RNG_ALG)
        vw = tf.random.stateless_uniform([bs], _common.fold_seed(sd, 1), 0, w - s + 1,
                                         dtype=tf.int32, alg=seeds.RNG_ALG)
        vh = vh[:, None, None, None]
        vw = vw[:, None, None, None]
        signs = tf.random.stateless_uniform([bs, 1, 1, c], _common.fold_seed(sd, 2), 0, 2,
                                            dtype=tf.int32, alg=seeds.RNG_ALG)
        signs = tf.cast(2 * signs - 1, tf.float32)
        window = ((rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s))
        x_new = x_best + tf.cast(window, tf.float32) * 2.0 * e * signs
        x_new = _common.project_linf(x_new, x, eps_b)

        margin = losses.margin(_common.float_logits(logits_fn, x_new), y)
        loss = margin
        improved = tf.logical_and(loss < loss_min, active)
        loss_min = tf.where(improved, loss, loss_min)
        accept = tf.logical_and(tf.logical_or(improved, margin <= 0.0), active)
        margin_min = tf.where(accept, margin, margin_min)
        x_best = tf.where(_common.expand_to(accept, x), x_new, x_best)
        return i + 1, x_best, loss_min, margin_min, queries + tf.cast(active, tf.int32)

    _, x_best, _, margin_min, queries = tf.while_loop(
        cond, body, [tf.constant(0), x_best, loss_min, margin_min, queries],
        parallel_iterations=1)
    success = tf.not_equal(_common.predicted_label(_common.float_logits(logits_fn, x_best)), y)
    return tf.where(_common.expand_to(success, x), x_best, x), success, queries


_SQUARE = {jit: tf.function(_square_impl, reduce_retracing=True, jit_compile=jit)
           for jit in (False, True)}


def square(logits_fn, x, y, *, epsilon, n_queries=5000, p_init=P_INIT, seed=0,
           rescale_schedule=False, jit_compile=False, return_queries=False):
    """Untargeted L-inf Square attack with the margin loss (one restart) on one batch.

    Args:
      logits_fn: callable images -> logits (only evaluated, never differentiated).
      x: clean images [B, H, W, C] in [0, 1].
      y: labels [B].
      epsilon: budget, float or [B].
      n_queries: iterations after the initial query (5000 in AutoAttack).
      p_init: initial fraction of pixels in the window.
      seed: int or [2] seed; iteration i uses `seed` folded with i.
      rescale_schedule: rescale the p schedule by n_queries / 10000 (AutoAttack: False).
      jit_compile: compile with XLA.
      return_queries: also return the per-example number of queries used.

    Returns:
      An `AttackOutput`, and the [B] query counts if `return_queries`.
    """
    x, y = _common.to_inputs(x, y)
    sizes = square_sizes(int(n_queries), int(x.shape[1]), int(x.shape[2]), p_init,
                         rescale_schedule)
    eps_b = _common.per_example_eps(epsilon, x.shape[0])
    x_adv, success, queries = _SQUARE[bool(jit_compile)](
        logits_fn, x, y, eps_b, seeds.as_seed(seed), tf.constant(sizes))
    out = autopgd.AttackOutput(x_adv, success)
    return (out, queries) if return_queries else out
