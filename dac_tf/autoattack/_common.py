"""Helpers shared by the AutoAttack components: seeds, budgets, projections, batching.

Everything here is a small pure function; the attacks import them so that every
component projects, measures and seeds the same way.
"""

import numpy as np
import tensorflow as tf

# A fixed algorithm ("auto_select" may choose another one under XLA or on another
# device): the same seed gives the same noise with and without jit_compile.
RNG_ALG = "philox"

# Points are accepted as inside the eps-ball up to float32 rounding of `x + eps - x`.
BALL_TOL = 1e-6


def as_seed(seed):
    """Turns an int or a `[2]` integer tensor/array into an int64 `[2]` stateless seed.

    Args:
      seed: Python int (expanded to `[seed, 0]`) or anything of shape `[2]`.

    Returns:
      An int64 tensor of shape `[2]`.
    """
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or have shape [2], got shape {seed.shape}.")
    return seed


def fold_seed(seed, *data):
    """Derives an independent stateless seed from `seed` and integers `data`.

    Each component, target class and batch gets its own stream this way, so its
    noise does not depend on what ran before it (which keeps a resumed run
    identical to an uninterrupted one).
    """
    seed = as_seed(seed)
    for d in data:
        seed = tf.random.experimental.stateless_fold_in(seed, int(d), alg=RNG_ALG)
    return tf.cast(seed, tf.int64)


def fold_seed_graph(seed, data):
    """`fold_seed` for one int32 tensor `data`, usable inside a traced loop."""
    return tf.cast(tf.random.experimental.stateless_fold_in(
        seed, tf.cast(data, tf.int32), alg=RNG_ALG), tf.int64)


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
    """Projects onto the intersection of the L-inf ball (radius `eps_b` [B]) and [0, 1]."""
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
    """Predicted labels of `x` (NumPy or tensor), computed in batches; returns NumPy int32."""
    x = np.asarray(x, np.float32)
    out = [_PREDICT[jit_compile](logits_fn, tf.constant(x[i:i + batch_size])).numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros([0], np.int32)


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
