"""Deterministic, resumable input pipelines over in-memory arrays.

Images are stored as the loaders give them (uint8 in [0, 255] or float32 in [0, 1]);
the cast to float32 [0, 1] happens per batch inside the tf.data pipeline, so CIFAR-10
takes 150 MB in memory instead of 600 MB. `to_float32` is the same conversion in numpy.

Determinism: `train_dataset` makes the order and the augmentation of epoch e a pure
function of (seed, e), using stateless random ops only, so a run resumed at epoch e
sees exactly the batches an uninterrupted run would have seen. Nothing depends on the
global TF seed or on how many random ops ran before.
"""

import numpy as np
import tensorflow as tf

from dac_tf import seeds

AUGMENTATIONS = ("none", "reflect", "zero")

# Second word of the stateless key, so the stream derived from --seed=s cannot collide
# with a stateless stream some other module derives from [s, 0].
_PIPELINE_SALT = 0x0DAC


def to_float32(x):
    """Converts images to float32 in [0, 1], exactly as the tf.data pipelines do.

    Args:
      x: uint8 array in [0, 255] or float array in [0, 1].

    Returns:
      float32 numpy array of the same shape.

    Raises:
      ValueError: `x` is neither uint8 nor float.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")


def steps_per_epoch(num_examples, batch_size):
    """Number of batches in one epoch; the last one may be partial (not dropped).

    Args:
      num_examples: examples per epoch.
      batch_size: examples per batch.

    Returns:
      ceil(num_examples / batch_size).

    Raises:
      ValueError: `batch_size` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return -(-int(num_examples) // int(batch_size))


def _to_float_tf(images):
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _check_arrays(x, y, batch_size):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape [{len(x)}], got {y.shape}")
    if len(x) == 0:
        raise ValueError("cannot build a dataset from 0 examples")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x, y.astype(np.int32)


def _deterministic(ds):
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _augment_batch(images, offsets, flips, augment, pad):
    """Pads, crops at the given per-example offsets and flips the given examples."""
    mode = "REFLECT" if augment == "reflect" else "CONSTANT"
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    # Per-example crops as two batched gathers (rows, then columns): one op for the
    # whole batch instead of one crop op per image.
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    return tf.where(flips[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def train_dataset(x, y, *, batch_size, seed, augment="none", pad=4, start_epoch=0,
                  num_epochs=1, max_steps_per_epoch=0):
    """Shuffled, optionally augmented training batches for a range of epochs.

    Epoch e is a pure function of (seed, e): its order is a stateless shuffle keyed
    by (seed, e), and the augmentation of the example at position p of epoch e is
    drawn from the same key, so `start_epoch=e` reproduces exactly the batches an
    uninterrupted run sees in epoch e (resuming from a checkpoint). Each epoch has
    `steps_per_epoch(N, batch_size)` batches; the last one is partial, as in the
    reference code. Batches never mix epochs.

    With Keras `fit`, pass `steps_per_epoch=steps_per_epoch(N, batch_size)` so one
    iterator runs through all the epochs of the dataset in sequence.

    The arrays are captured in the pipeline (stored once, uint8 stays uint8) and the
    float conversion and augmentation run per batch.

    Args:
      x: images [N, H, W, C], uint8 in [0, 255] or float in [0, 1].
      y: integer labels [N].
      batch_size: examples per batch.
      seed: integer seed of the shuffling and augmentation.
      augment: "none"; "reflect" (AT reference: reflect-pad `pad` pixels, random crop
        back to H x W, random horizontal flip); "zero" (TRADES / MART: the same with
        zero padding).
      pad: padding in pixels for the random crop.
      start_epoch: first epoch (0-based) to produce.
      num_epochs: number of consecutive epochs to produce.
      max_steps_per_epoch: if > 0, each epoch is cut to its first batches (smoke runs
        of a paper config on little data); the next epoch still starts with its own
        first batch.

    Returns:
      A `tf.data.Dataset` of (images float32 [B, H, W, C] in [0, 1], labels int32
      [B]) for epochs start_epoch .. start_epoch + num_epochs - 1.

    Raises:
      ValueError: arrays of the wrong shape or dtype, an unknown `augment`, a seed
        that does not fit in int64, or an invalid epoch range, batch size or `pad`.
    """
    x, y = _check_arrays(x, y, batch_size)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not valid; use one of "
                         f"{', '.join(AUGMENTATIONS)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            -2**63 <= seed < 2**63):
        raise ValueError(f"seed must be an integer that fits in int64, got {seed!r}")
    if start_epoch < 0 or num_epochs < 1:
        raise ValueError(f"need start_epoch >= 0 and num_epochs >= 1, got {start_epoch} "
                         f"and {num_epochs}")
    num, height, width = x.shape[0], x.shape[1], x.shape[2]
    if augment != "none":
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if augment == "reflect" and pad >= min(height, width):
            raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for "
                             f"{height}x{width} images")
    batch_size = int(batch_size)
    steps = steps_per_epoch(num, batch_size)
    if max_steps_per_epoch:
        steps = min(steps, int(max_steps_per_epoch))
    images, labels = tf.constant(x), tf.constant(y)
    key = tf.constant([int(seed), _PIPELINE_SALT], tf.int64)

    def epoch_plan(epoch):
        epoch_key = seeds.fold(key, epoch)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num, dtype=tf.int32), seed=seeds.fold(epoch_key, 0), alg=seeds.RNG_ALG)
        # Drawn for every position of the epoch at once: the draw at position p is a
        # function of (seed, epoch, p) only.
        offsets = tf.random.stateless_uniform(
            [num, 2], seed=seeds.fold(epoch_key, 1), minval=0, maxval=2 * pad + 1,
            dtype=tf.int32, alg=seeds.RNG_ALG)
        flips = tf.random.stateless_uniform(
            [num], seed=seeds.fold(epoch_key, 2), minval=0, maxval=2, dtype=tf.int32,
            alg=seeds.RNG_ALG) > 0
        plan = tf.data.Dataset.from_tensor_slices((order, offsets, flips)).batch(batch_size)
        return plan.take(steps) if max_steps_per_epoch else plan

    def make_batch(order, offsets, flips):
        batch_x = _to_float_tf(tf.gather(images, order))
        if augment != "none":
            batch_x = _augment_batch(batch_x, offsets, flips, augment, pad)
        return batch_x, tf.gather(labels, order)

    ds = tf.data.Dataset.range(start_epoch, start_epoch + num_epochs).flat_map(epoch_plan)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # flat_map hides the length; Keras and progress bars want it.
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_epochs * steps))
    return _deterministic(ds.prefetch(tf.data.AUTOTUNE))


def eval_dataset(x, y, *, batch_size):
    """Batches in the given order, without augmentation; the last batch is partial.

    Args:
      x: images [N, H, W, C], uint8 in [0, 255] or float in [0, 1].
      y: integer labels [N].
      batch_size: examples per batch.

    Returns:
      A `tf.data.Dataset` of (images float32 [B, H, W, C] in [0, 1], labels int32 [B]).

    Raises:
      ValueError: arrays of the wrong shape or dtype, or an invalid batch size.
    """
    x, y = _check_arrays(x, y, batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(batch_size))
    ds = ds.map(lambda bx, by: (_to_float_tf(bx), by),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _deterministic(ds.prefetch(tf.data.AUTOTUNE))
