"""Shared by the evaluation tests (tests/test_evaluate.py, tests/test_evaluation_*.py,
tests/test_torch_bridge.py): the epsilon and model widths of the trained digits model that
tests/conftest.py builds once per session, and a fixed linear model for tests that need none."""

import numpy as np
import tensorflow as tf

EPS = 0.1   # digits are 8x8 in [0, 1]; at 0.1 the trained CNN keeps ~45-65% under attack
SMALL_AA = dict(apgd_n_iter=5, fab_n_iter=5, square_n_queries=20, n_target_classes=2)
WIDTHS = (16, 32, 32)


def linear_fn(seed=0, shape=(8, 8, 1), classes=10):
    rng = np.random.default_rng(seed)
    w = tf.constant(rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32))
    return lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) @ w
