"""`dac_tf.replicas`: the replica arithmetic against closed forms, on 2 logical CPUs.

Each replica gets its own share of a batch (uneven, or empty); summing what the replicas
return must give the single-device value. The whole step built on it:
tests/test_distribute.py.
"""

import keras
import numpy as np
import tensorflow as tf

from dac_tf import replicas
from dac_tf import seeds
from test_distribute import cpu_strategy

VALUES = np.array([0.5, 2.0, -1.0, 4.0, 3.0], np.float32)


def per_replica(strategy, shares):
    """Distributed values: replica i gets `shares[i]`."""
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shares[context.replica_id_in_sync_group]))


def summed(strategy, fn, *args):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(fn, args=args),
                           axis=None).numpy()


def test_global_batch_mean_sums_to_the_mean_however_the_batch_splits():
    strategy = cpu_strategy(2)
    for split in (3, 4, 5):   # 3 + 2, 4 + 1, 5 + 0 examples
        shares = per_replica(strategy, [VALUES[:split], VALUES[split:]])
        total = summed(strategy, lambda v: replicas.global_batch_mean(v), shares)
        np.testing.assert_allclose(total, VALUES.mean(), rtol=1e-6, err_msg=split)
    assert replicas.global_batch_mean(tf.constant(VALUES)).numpy() == VALUES.mean()


def test_an_empty_replica_gets_one_zero_weight_example_that_changes_nothing():
    strategy = cpu_strategy(2)
    images = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    labels = np.array([1, 2, 0], np.int32)

    def step(x, y):
        x, y, weights = replicas.pad_empty_replica(x, y)
        per_example = tf.reduce_sum(x, axis=1) * tf.cast(y + 1, tf.float32)
        return replicas.global_batch_mean(per_example, weights), tf.shape(x)[0]

    x = per_replica(strategy, [images, images[:0]])
    y = per_replica(strategy, [labels, labels[:0]])
    results = strategy.run(step, args=(x, y))
    sizes = [int(t) for t in strategy.experimental_local_results(results[1])]
    assert sizes == [3, 1]                      # the empty replica got one example
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, results[0], axis=None).numpy()
    expected = np.mean(images.sum(axis=1) * (labels + 1))
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert replicas.pad_empty_replica(images, labels)[2] is None   # one device: no padding


def test_global_results_give_every_replica_the_metric_over_all_examples():
    """A Mean over 4 + 1 examples: each replica returns the mean of the 5 (Keras'
    average of the replicas' own results would give (mean of 4 + the 1) / 2)."""
    strategy = cpu_strategy(2)
    with strategy.scope():
        metric = keras.metrics.Mean(name="m")

    def step(v):
        metric.update_state(v)
        return replicas.global_results([metric])["m"]

    out = strategy.run(step, args=(per_replica(strategy, [VALUES[:4], VALUES[4:]]),))
    for value in strategy.experimental_local_results(out):
        np.testing.assert_allclose(value.numpy(), VALUES.mean(), rtol=1e-6)


def test_attack_seeds_fold_the_update_and_the_replica_into_the_seed():
    expected = seeds.fold(tf.constant([7, 0], tf.int64), 5, 1)
    np.testing.assert_array_equal(replicas.derive_seed(7, 5, 1), expected)
    assert not np.array_equal(replicas.derive_seed(7, 5, 0), expected)
    assert replicas.replica_id().numpy() == 0 and replicas.num_replicas() == 1


def test_an_empty_batch_gets_empty_outputs_and_a_full_one_runs_unchanged():
    """An empty batch through a conv + BatchNorm model: empty outputs of the right
    shape (TensorFlow's oneDNN convolution, which the tests run with, returns a wrongly
    shaped tensor for it and the next op fails); a non-empty batch gives the model's
    own outputs, padded with nothing."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(x)))
    fn = tf.function(lambda images: replicas.call_on_nonempty(
        lambda x: {"logits": model(x, training=False)}, images))
    empty = fn(tf.zeros((0, 8, 8, 3)))["logits"]
    assert empty.shape == (0, 4)
    images = np.random.default_rng(0).random((3, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(fn(tf.constant(images))["logits"].numpy(),
                                  model(images, training=False).numpy())
