"""Helpers shared by the AutoAttack components: budgets, projections, batching.

Everything here is a small pure function; the attacks import them so that every
component projects, measures and predicts the same way. Seeds come from `dac_tf.seeds`
(AutoAttack's streams fold int32 data: `fold_seed`); batched predictions use the padded
batches of `dac_tf.batching`, as the evaluation attacks do.
"""

import numpy as np
import tensorflow as tf

from dac_tf import batching
from dac_tf import seeds

# Points are accepted as inside the eps-ball up to float32 rounding of `x + eps - x`.
BALL_TOL = 1e-6


def fold_seed(seed, *data):
    """`seeds.fold` with AutoAttack's int32 data: a component's, batch's or target's seed.

    Each component, target class and batch gets its own stream this way, so its noise
    does not depend on what ran before it (which keeps a resumed run identical to an
    uninterrupted one). Usable inside a traced loop (`data` may be int32 tensors).
    """
    return seeds.fold(seed, *data, data_dtype=tf.int32)


def per_example_eps(epsilon, batch):
    """The budget as a float32 `[batch]` vector (a scalar is broadcast).

    A per-example budget is not part of AutoAttack; it lets the tests check each
    example against its own closed-form minimal distance in one call.
    """
    eps = tf.cast(tf.convert_to_tensor(epsilon), tf.float32)
    return tf.broadcast_to(tf.reshape(eps, [-1]) if eps.shape.rank else eps, [batch])


def expand_to(v, ref):
    """Reshapes a `[B]` vector so it broadcasts against `ref` of shape `[B, ...]`."""
    return tf.reshape(v, tf.concat([[-1], tf.ones([tf.rank(ref) - 1], tf.int32)], 0))


def project_linf(x_adv, x, eps_b):
    """Projects onto the intersection of the L-inf ball (radius `eps_b` [B]) and [0, 1].

    The official code's formula, `clamp(min(max(x_adv, x - eps), x + eps), 0, 1)`
    (fra31/auto-attack `autopgd_base.py`), with a radius per example. It is not
    `dac_tf.attacks.project` (training's and CleverHans's `x + clip(x_adv - x)`): the
    two agree up to the last bit of float32, and keeping the official form keeps this
    implementation's numbers (and its measured agreement with the official one).
    """
    e = expand_to(eps_b, x)
    return tf.clip_by_value(tf.minimum(tf.maximum(x_adv, x - e), x + e), 0.0, 1.0)


def linf_norm(t):
    """Per-example L-inf norm of a `[B, ...]` tensor."""
    return tf.reduce_max(tf.abs(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)


def float_logits(logits_fn, x):
    """Calls the model; logits are cast to float32 (mixed-precision models return f16)."""
    return tf.cast(logits_fn(x), tf.float32)


def predicted_label(logits):
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def _predict_impl(logits_fn, x):
    return predicted_label(float_logits(logits_fn, x))


def _logits_impl(logits_fn, x):
    return float_logits(logits_fn, x)


_PREDICT = {jit: tf.function(_predict_impl, reduce_retracing=True, jit_compile=jit)
            for jit in (False, True)}
_LOGITS = {jit: tf.function(_logits_impl, reduce_retracing=True, jit_compile=jit)
           for jit in (False, True)}


def batched_predict(logits_fn, x, batch_size=500, jit_compile=False):
    """Predicted labels of `x` (NumPy or tensor) in padded batches; returns NumPy int32."""
    x = np.asarray(x, np.float32)
    if not len(x):
        return np.zeros([0], np.int32)
    return batching.map_padded(
        lambda _, xb: _PREDICT[jit_compile](logits_fn, tf.constant(xb)), [x], batch_size)


def logits(logits_fn, x, jit_compile=False):
    """Float32 logits of one batch, through a cached `tf.function`."""
    return _LOGITS[jit_compile](logits_fn, tf.convert_to_tensor(x, tf.float32))


def to_inputs(x, y):
    """Validates and converts images/labels to float32 / int32 tensors."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    if x.shape.rank != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {x.shape}.")
    if y.shape.rank != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [B] matching the images, got {y.shape}.")
    return x, y
