"""Stateless seeds: one algorithm, one way to derive a seed from another.

Every random draw of dac_tf (the data order and augmentation, the training attack's
start, the evaluation attacks' starts, AutoAttack's noise) is a stateless op keyed by an
explicit `[2]` integer seed. A sub-stream (an epoch, an optimizer step, a replica, a
batch, a restart, an AutoAttack component) gets its seed by folding integers into its
parent's with `fold`, so its numbers depend only on where it is, never on what ran
before it: a resumed run draws exactly what an uninterrupted one draws.

The algorithm is fixed to Philox: "auto_select" may choose another one under XLA or on
another device, and the same seed would then give other numbers.
"""

import numpy as np
import tensorflow as tf

RNG_ALG = "philox"


def as_seed(seed):
    """An int64 `[2]` stateless seed from an int or anything of shape `[2]`.

    Args:
      seed: Python or NumPy int (expanded to `[seed, 0]`), or an integer tensor/array
        of shape `[2]`.

    Returns:
      An int64 tensor of shape `[2]`.

    Raises:
      ValueError: a tensor of another shape.
    """
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or have shape [2], got shape {seed.shape}.")
    return seed


def fold(seed, *data, data_dtype=tf.int64):
    """Derives an independent seed: `seed` folded with each of `data` in turn.

    `tf.random.experimental.stateless_fold_in(seed, d)` draws one integer of `d`'s
    dtype from `seed` and pairs it with `d`, so the dtype the data are cast to is part
    of the stream: int32 and int64 data give different seeds. Training's streams (the
    data pipeline, `DACModel`'s attack seeds) fold int64 data; the evaluation attacks
    and AutoAttack were defined with int32 data and pass `data_dtype=tf.int32`. The
    dtype of `seed` itself does not change the numbers (TensorFlow reads both as int64).

    Args:
      seed: an int or an integer `[2]` seed (`as_seed`).
      *data: integers or integer scalar tensors (usable inside a traced function).
      data_dtype: tf.int64 or tf.int32, what each datum is cast to (see above).

    Returns:
      An int64 tensor of shape `[2]`; `seed` itself when no data are given.
    """
    if isinstance(seed, (int, np.integer)):
        seed = as_seed(seed)
    for d in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, data_dtype),
                                                        alg=RNG_ALG)
    return tf.cast(seed, tf.int64)
