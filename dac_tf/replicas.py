"""Replica arithmetic: what makes a DAC step the same on N replicas as on one device.

Under a `tf.distribute` strategy each replica runs the step on its share of the global
batch, and the gradients are summed over the replicas. These functions make every loss,
metric, BatchNorm statistic and random seed come out as one device's would, however the
batch is split (unevenly, or with replicas that get no example):

- `global_batch_mean`: a replica's share of the global batch mean;
- `global_results`: metric results over every replica's examples;
- `pad_empty_replica`: one zero-weight example for a replica with none;
- `call_on_nonempty`: a model's outputs for a batch that may be empty (prediction);
- `sync_from_first_replica`: replica 0's BatchNorm statistics on every replica;
- `derive_seed`, `replica_id`: an attack's seed per update and replica.

Outside a strategy (or on one replica) each is the plain single-device computation.
"""

import numpy as np
import tensorflow as tf

from dac_tf import seeds


def num_replicas():
    """The number of replicas running this step (1 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _replica_context():
    """The replica context when several replicas run this step, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def global_batch_mean(per_example, weights=None):
    """This replica's share of the global batch mean of `per_example`.

    The local (weighted) sum divided by the number of examples over all replicas: summed
    over replicas, as gradients are, it is the mean over the global batch however the
    batch was split, an uneven split or a replica with no real example (which adds 0)
    included. Dividing each replica's own mean by the replica count would weight uneven
    splits wrongly and turn an empty replica batch into NaN.

    Args:
      per_example: float tensor [local batch].
      weights: None, or 1 for real examples and 0 for padding (`pad_empty_replica`).

    Returns:
      float32 scalar.
    """
    per_example = tf.cast(per_example, tf.float32)
    if weights is None:
        total = tf.reduce_sum(per_example)
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
    else:
        total = tf.reduce_sum(per_example * weights)
        count = tf.reduce_sum(weights)
    context = _replica_context()
    if context is not None:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return total / tf.maximum(count, 1.0)


def global_results(metrics):
    """{name: result} of `metrics` over every replica's examples.

    Inside a replica, `metric.result()` reads the replica's own totals, and Keras
    averages the logs of the replicas, which weights an uneven split wrongly (53/52) and
    a padded replica as much as a full one. The metrics' variables are summed over the
    replicas first (one all-reduce), so every replica returns the global value.
    """
    context = _replica_context()
    if context is None:
        return {m.name: m.result() for m in metrics}
    variables = [v for m in metrics for v in m.variables]
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
        [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0))
    results, offset = {}, 0
    for metric in metrics:
        summed = []
        for v in metric.variables:
            size = int(np.prod(v.shape))
            summed.append(tf.cast(tf.reshape(flat[offset:offset + size], v.shape), v.dtype))
            offset += size
        results[metric.name] = metric.stateless_result(summed)
    return results


def pad_empty_replica(images, labels):
    """Gives a replica with an empty share of the batch one zero-weight example.

    With several replicas, a last batch smaller than the replica count leaves some
    replicas without examples. TensorFlow's gradients of zero-size batches fail
    (ReluGrad "must have the same size and shape" in TF 2.21) and BatchNorm's batch
    statistics of nothing are NaN, so such a replica trains on one black image of class
    0 with weight 0: every loss and metric is weighted, so it changes nothing (its
    BatchNorm statistics are replaced by replica 0's, `sync_from_first_replica`).

    Returns:
      (images, labels, weights): weights None on a single replica (nothing padded).
    """
    if _replica_context() is None:
        return images, labels, None
    images, count, pad = _pad_to_one_example(images)
    labels = tf.concat([labels, tf.zeros([pad], labels.dtype)], 0)
    weights = tf.concat([tf.ones([count]), tf.zeros([pad])], 0)
    return images, labels, weights


def call_on_nonempty(fn, images):
    """`fn(images)` for a batch that may be empty (a replica's share, a client's request).

    TensorFlow's oneDNN convolution (TF 2.21 with TF_ENABLE_ONEDNN_OPTS=1, the
    programs' default on CPUs without AVX-512 VNNI) returns a wrongly shaped tensor for
    an empty batch, and the next op fails ("Incompatible shapes: [32] vs.
    [0,8,8,3]"); Eigen's kernels return an empty result. An empty batch therefore runs
    on one zero image, and every output is cut back to the batch's size. A non-empty
    batch runs unchanged (nothing is padded).

    Args:
      fn: images -> a tensor or a nest of tensors with the batch as first dimension
        (a model in inference mode: its rows must not depend on each other).
      images: [N, ...] tensor, N >= 0.

    Returns:
      `fn`'s outputs, each [N, ...].
    """
    padded, count, _ = _pad_to_one_example(images)
    return tf.nest.map_structure(lambda output: output[:count], fn(padded))


def _pad_to_one_example(images):
    """(images + one zero image if there were none, the count before, the pad: 0 or 1)."""
    count = tf.shape(images)[0]
    pad = tf.maximum(1 - count, 0)
    zeros = tf.zeros(tf.concat([[pad], tf.shape(images)[1:]], 0), images.dtype)
    return tf.concat([images, zeros], 0), count, pad


def replica_id():
    """This replica's index in its sync group, int64 (0 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def derive_seed(seed, iteration, replica_id=0):
    """The stateless seed of one attack: fold_in(fold_in([seed, 0], iteration), replica_id)."""
    return seeds.fold(tf.constant([int(seed), 0], tf.int64), iteration, replica_id)


def sync_from_first_replica(variables):
    """Gives every replica replica 0's values of `variables` (BatchNorm statistics).

    Under MirroredStrategy, Keras BatchNorm updates each replica's copy of its moving
    statistics with that replica's batch only, and the copies drift apart; a
    checkpoint saves replica 0's. The reference's `nn.DataParallel` keeps device 0's
    statistics and broadcasts them to every device at each forward. Syncing from
    replica 0 gives the same statistics, makes every inference-mode forward
    (TRADES/MART attacks, evaluation) use the statistics a checkpoint saves, and
    replaces the NaN statistics of a replica whose share of a tiny last batch was
    empty (replica 0 always has examples: remainders go to the first replicas).

    Args:
      variables: float variables (mirrored, or synchronised ON_READ per replica).
    """
    context = _replica_context()
    if context is None or not variables:
        return
    flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0)
    first = tf.equal(context.replica_id_in_sync_group, 0)
    # tf.where, not a product: another replica's NaN times 0 would still be NaN.
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM,
                              tf.where(first, flat, tf.zeros_like(flat)))
    offset = 0
    for v in variables:
        size = int(np.prod(v.shape))
        v.assign(tf.cast(tf.reshape(flat[offset:offset + size], v.shape), v.dtype))
        offset += size
