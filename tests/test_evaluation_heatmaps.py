"""dac_tf.evaluation.heatmaps: mean softmax matrices against closed forms."""

import keras
import numpy as np

from dac_tf import models
from dac_tf.evaluation import heatmaps

def test_mean_softmax_rows_sum_to_one_and_empty_classes_are_nan():
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", num_classes=4, input_shape=(8, 8, 1),
                         widths=(4, 8))
    rng = np.random.default_rng(0)
    x = rng.random((21, 8, 8, 1)).astype(np.float32)
    y = np.array([0, 1, 2] * 7)  # class 3 has no example
    matrix, counts = heatmaps.mean_softmax_matrix(
        model, x, y, num_classes=4, epsilon=0.1, step_size=0.05, num_steps=2,
        start="uniform", batch_size=8)
    assert matrix.shape == (4, 4)
    np.testing.assert_array_equal(counts, [7, 7, 7, 0])
    np.testing.assert_allclose(matrix[:3].sum(axis=1), 1.0, rtol=1e-5)
    assert np.isnan(matrix[3]).all()
    assert (matrix[:3] >= 0).all()


def _shift_model(num_classes, scale=50.0):
    """Logits = scale * one_hot((y + 1) mod C) on one-hot inputs of class y."""
    model = keras.Sequential([keras.Input((num_classes,)), keras.layers.Dense(num_classes)])
    kernel = scale * np.roll(np.eye(num_classes, dtype=np.float32), 1, axis=1)
    model.layers[-1].set_weights([kernel, np.zeros(num_classes, np.float32)])
    return model


def test_mean_softmax_matrix_of_a_model_with_known_logits():
    num_classes = 5
    model = _shift_model(num_classes)
    y = np.array([4, 0, 3, 1, 2, 2, 0, 4, 1, 3, 0])
    x = np.eye(num_classes, dtype=np.float32)[y]
    # L-inf eps 0.1 moves each logit by at most 5 of 50: the prediction cannot flip.
    matrix, counts = heatmaps.mean_softmax_matrix(
        model, x, y, num_classes=num_classes, epsilon=0.1, step_size=0.05, num_steps=3,
        batch_size=4)
    expected = np.roll(np.eye(num_classes), 1, axis=1)  # row t: all mass on t + 1
    assert expected[4, 0] == 1.0
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    np.testing.assert_array_equal(counts, np.bincount(y))


def test_mean_softmax_matrix_is_taken_on_the_attacked_inputs():
    # Logits (5 - 10x, 10x - 5): x = 0.45 is class 0 with margin 1. One CE-ascent step
    # of 0.1 from the clean input moves it to 0.55, logits (-0.5, 0.5): by hand the
    # softmax is (sigmoid(-1), sigmoid(1)).
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.array([[-10.0, 10.0]], np.float32),
                                  np.array([5.0, -5.0], np.float32)])
    x, y = np.full((3, 1), 0.45, np.float32), np.zeros(3, np.int64)
    matrix, _ = heatmaps.mean_softmax_matrix(
        model, x, y, num_classes=2, epsilon=0.1, step_size=0.1, num_steps=1, start="none")
    sigmoid = lambda t: 1.0 / (1.0 + np.exp(-t))  # noqa: E731
    np.testing.assert_allclose(matrix[0], [sigmoid(-1.0), sigmoid(1.0)], rtol=1e-5)
    clean, _ = heatmaps.mean_softmax_matrix(
        model, x, y, num_classes=2, epsilon=0.0, step_size=0.1, num_steps=1, start="none")
    np.testing.assert_allclose(clean[0], [sigmoid(1.0), sigmoid(-1.0)], rtol=1e-5)
