"""The round-trip check of an export: load it back both ways, compare with the model.

`tf.saved_model.load` and TF Serving's own loader (the TF1 `tf.compat.v1.saved_model`
API that TF Serving and `saved_model_cli run` use) take different routes to the
variables, so an export can pass one and fail the other: `verify` runs both.
"""

import json

import numpy as np
import tensorflow as tf

from dac_tf import fileio
from dac_tf.serving.signatures import INPUT_NAME
from dac_tf.serving.signatures import ExportError

# Tolerance of the round-trip check: the SavedModel runs the same ops as the Keras model,
# only traced once more, so anything beyond float rounding means a broken export.
_VERIFY_RTOL = 1e-4
_VERIFY_ATOL = 1e-4


def run_like_tf_serving(path, feeds):
    """Runs signatures the way TF Serving does: the TF1 loader, then a session run.

    TF Serving (and `saved_model_cli run`) restore the variables through the SavedModel's
    restore op and feed the SignatureDef's tensors by name; `tf.saved_model.load` takes
    another route, so an export can pass one and fail the other.
    """
    results = {}
    # The TF1 loader is deprecated for users, which is not what this check is; keep its
    # deprecation notice (two lines, printed twice) out of the export's output.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            meta_graph = tf.compat.v1.saved_model.load(sess, [tf.saved_model.SERVING], path)
            for name, value in feeds.items():
                signature = meta_graph.signature_def[name]
                fetches = {k: t.name for k, t in signature.outputs.items()}
                results[name] = sess.run(fetches,
                                         {signature.inputs[INPUT_NAME].name: value})
    finally:
        logger.setLevel(level)
    return results


def verify(path, model, height, width, channels):
    """Loads the written SavedModel both ways and checks every signature against `model`."""
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, size=(2, height, width, channels)).astype(np.uint8)
    floats = pixels.astype(np.float32) / 255.0
    expected = np.asarray(model(floats, training=False), np.float32)
    feeds = {"serving_default": floats, "serving_uint8": pixels,
             "serving_bytes": np.array([tf.io.encode_png(p).numpy() for p in pixels],
                                       dtype=object)}
    got = {}
    how = "tf.saved_model.load"
    try:
        loaded = tf.saved_model.load(path)
        for name, x in feeds.items():
            got[how, name] = {k: v.numpy() for k, v in
                              loaded.signatures[name](images=tf.constant(x)).items()}
        json.loads(loaded.metadata().numpy().decode("utf-8"))
        how = "TF Serving's loader"
        for name, out in run_like_tf_serving(path, feeds).items():
            got[how, name] = out
    except (tf.errors.OpError, ValueError, KeyError) as e:
        raise ExportError(f"round-trip check failed: loading with {how}: "
                          f"{fileio.first_line(e)}") from None
    scale = max(1.0, float(np.abs(expected).max()))
    for (how, name), out in got.items():
        logits = out["logits"]
        if logits.shape != expected.shape:
            raise ExportError(f"round-trip check failed: {name} loaded by {how} returns "
                              f"logits of shape {logits.shape}, not {expected.shape}.")
        if not np.allclose(logits, expected, rtol=_VERIFY_RTOL, atol=_VERIFY_ATOL * scale):
            raise ExportError(
                f"round-trip check failed: {name} loaded by {how} returns logits that differ "
                f"from the model's by up to {np.abs(logits - expected).max():.3g}.")
        if not np.array_equal(out["classes"], logits.argmax(-1)):
            raise ExportError(f"round-trip check failed: {name} loaded by {how} returns "
                              "classes that are not the argmax of its logits.")
