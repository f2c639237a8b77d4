"""Tests of dac_tf.batching: fixed-size batches padded with the last row, cut off again."""

import numpy as np
import pytest

from dac_tf import batching


def test_padded_batches_repeat_the_last_row_and_are_cut_off():
    seen = []

    def fn(k, a, b):
        seen.append(a.copy())
        return dict(total=a.sum(axis=1) + b, batch=np.full(len(a), k))

    a = np.arange(14).reshape(7, 2)
    b = np.arange(7) * 10
    out = batching.map_padded(fn, [a, b], 3)
    np.testing.assert_array_equal(out["total"], a.sum(axis=1) + b)
    np.testing.assert_array_equal(out["batch"], [0, 0, 0, 1, 1, 1, 2])
    assert [len(batch) for batch in seen] == [3, 3, 3]
    np.testing.assert_array_equal(seen[2], a[[6, 6, 6]])
    # A batch larger than N shrinks to N (no needless padding); arrays come back too.
    np.testing.assert_array_equal(batching.map_padded(lambda k, t: t * 2, [a], 100), a * 2)
    with pytest.raises(ValueError):
        batching.map_padded(fn, [a, b[:3]], 3)

