"""Tests of dac_tf.evaluation.loading: a SavedModel export base directory loads its highest
version as a differentiable logits function."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import loading
from helpers_evaluation import EPS


def test_saved_model_export_base_dir_takes_the_highest_version(trained, tmp_path, digits):
    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def serve(self, images):
            return {"logits": self.model(images, training=False),
                    "probabilities": tf.nn.softmax(self.model(images, training=False))}

    base = tmp_path / "export"
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    for version, model in (("1", other), ("2", trained)):
        module = Serving(model)
        tf.saved_model.save(module, str(base / version),
                            signatures={"serving_default": module.serve})
    os.makedirs(base / "11")   # not a SavedModel: ignored
    (base / "2" / "assets.extra").mkdir()
    (base / "2" / "assets.extra" / "dac_tf_metadata.json").write_text(json.dumps(
        dict(dataset="digits", epsilon=EPS, input_shape=[8, 8, 1])))
    fn, meta = loading.load_logits_fn(str(base))
    assert meta["kind"] == "saved_model" and meta["path"].endswith(os.path.join("export", "2"))
    assert meta["dataset"] == "digits" and meta["epsilon"] == EPS
    x = tf.constant(digits.x_test[:4])
    np.testing.assert_allclose(fn(x).numpy(), trained(x, training=False).numpy(), atol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(fn(x))
    assert float(tf.reduce_max(tf.abs(tape.gradient(out, x)))) > 0
    with pytest.raises(EvaluationError, match="neither a training run"):
        loading.load_logits_fn(str(tmp_path))

