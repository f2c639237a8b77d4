"""Tests of dac_tf.seeds: `fold` is a chain of stateless fold-ins."""

import numpy as np
import tensorflow as tf

from dac_tf import seeds


def test_seed_fold_is_a_fold_in_chain_whose_data_dtype_is_part_of_the_stream():
    fold_in = tf.random.experimental.stateless_fold_in
    base = tf.constant([3, 0], tf.int64)
    chain64 = fold_in(fold_in(base, tf.constant(5, tf.int64), alg="philox"),
                      tf.constant(1, tf.int64), alg="philox")
    chain32 = fold_in(fold_in(base, tf.constant(5, tf.int32), alg="philox"),
                      tf.constant(1, tf.int32), alg="philox")
    np.testing.assert_array_equal(seeds.fold(3, 5, 1).numpy(), chain64.numpy())
    np.testing.assert_array_equal(seeds.fold(base, 5, 1, data_dtype=tf.int32).numpy(),
                                  chain32.numpy())
    assert not np.array_equal(chain64.numpy(), chain32.numpy())
    assert seeds.fold(3).numpy().tolist() == [3, 0]
    # Inside a traced function, with tensor data.
    traced = tf.function(lambda s, d: seeds.fold(s, d, 1))(base, tf.constant(5, tf.int64))
    np.testing.assert_array_equal(traced.numpy(), chain64.numpy())
