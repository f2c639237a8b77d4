"""What a dac_tf export serves: its signatures, their names and the module saved.

`ServingModule` holds the network's variables and three signatures, all returning
`logits`, `probabilities` and `classes`: `serving_default` (float32 images in [0, 1],
refusing values outside), `serving_uint8` and `serving_bytes` (encoded images). The
package docstring (`dac_tf.serving`) says what a client sends and gets.
"""

import os

import keras
import tensorflow as tf

from dac_tf import errors
from dac_tf import replicas

FORMAT = "dac_tf.export/1"
METADATA_FILE = os.path.join("assets.extra", "dac_tf_metadata.json")
SAVED_MODEL_FILE = "saved_model.pb"
SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")
INPUT_NAME = "images"
# serving_default accepts [-RANGE_MARGIN, 1 + RANGE_MARGIN]: float32 rounding (1.2e-7 at 1)
# of arithmetic on [0, 1] images, not a different unit.
RANGE_MARGIN = 1e-6
# The error a serving_default request with values outside [0, 1] gets (and its metadata).
RANGE_MESSAGE = ("serving_default takes float32 images in [0, 1]: divide 0..255 pixels by "
                 "255, or send them as uint8 to serving_uint8")
OUTPUT_NAMES = ("logits", "probabilities", "classes")


class ExportError(errors.UserError):
    """A model, export directory or version that cannot be exported (the message says why)."""


def image_shape(model):
    """The (height, width, channels) a model takes, all static.

    Args:
      model: a built `keras.Model` with one image input.

    Returns:
      A tuple of three ints.

    Raises:
      ExportError: not a single-input image model with a static image shape.
    """
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model, got {type(model).__name__}.")
    inputs = getattr(model, "inputs", None)
    if not model.built or not inputs or len(inputs) != 1:
        raise ExportError(f"model {model.name!r} must be a built model with one image "
                          "input (a functional model from dac_tf.models.build).")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ExportError(f"model {model.name!r} takes inputs of shape {shape}; expected "
                          "[batch, height, width, channels] with static height, width and "
                          "channels.")
    return tuple(int(d) for d in shape[1:])


def num_classes(model):
    """The number of logits of a one-output classifier.

    Raises:
      ExportError: the model does not return one [batch, classes] tensor.
    """
    shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else ()
    if len(model.outputs or ()) != 1 or len(shape) != 2 or shape[1] is None:
        raise ExportError(f"model {model.name!r} must return one logits tensor of shape "
                          f"[batch, classes]; it returns {shape}.")
    return int(shape[1])


def _unique(variables):
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


class ServingModule(tf.Module):
    """What is saved: the network's variables and the serving functions.

    It tracks the `tf.Variable`s the serving functions capture, not the Keras variables
    wrapping them: the TF1-style loader of TF Serving and `saved_model_cli run` restores
    only variables tracked as `tf.Variable`s (with the Keras wrappers alone every read
    fails with "Could not find variable ..."), and tracking both, as
    `keras.export.ExportArchive` does, stores every weight twice. The lists are saved
    attributes, so a loaded export has `loaded.model_variables` and
    `loaded.model_trainable_variables` (`tf.Module`'s own `variables` is a property,
    computed on the live object and not saved).

    Args:
      model: the base network, [0, 1] float images -> logits.
      metadata_json: the metadata as a JSON string (returned by `metadata()`).
    """

    def __init__(self, model, metadata_json):
        super().__init__()
        height, width, channels = image_shape(model)
        batch = [None, height, width, channels]

        def outputs(images):
            # TF Serving does not check a request's shape against the signature, and a
            # fully convolutional network would silently classify a wrong-sized image;
            # the model's input depends on this op, so no graph rewrite can skip it.
            images = tf.ensure_shape(images, batch)
            logits = tf.cast(replicas.call_on_nonempty(
                lambda x: model(x, training=False), images), tf.float32)
            return {"logits": logits,
                    "probabilities": tf.nn.softmax(logits, axis=-1),
                    "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

        @tf.function(input_signature=[tf.TensorSpec(batch, tf.float32, name=INPUT_NAME)])
        def serving_default(images):
            # A float outside [0, 1] (0..255 pixels, a negative value, NaN) would get a
            # confident answer for an input the model never saw; refuse it with an op
            # error, which TF Serving returns as HTTP 400 / INVALID_ARGUMENT with the
            # message. NaN fails both comparisons. The margin lets through the float
            # rounding of an attack's convex combinations of [0, 1] images (AutoAttack's
            # FAB interpolates without clipping), never a unit mistake.
            images = tf.ensure_shape(images, batch)
            in_range = tf.reduce_all(tf.logical_and(images >= -RANGE_MARGIN,
                                                    images <= 1.0 + RANGE_MARGIN))
            check = tf.debugging.Assert(
                in_range, [RANGE_MESSAGE, "min:", tf.reduce_min(images),
                           "max:", tf.reduce_max(images)], summarize=1)
            with tf.control_dependencies([check]):
                return outputs(tf.identity(images))

        @tf.function(input_signature=[tf.TensorSpec(batch, tf.uint8, name=INPUT_NAME)])
        def serving_uint8(images):
            return outputs(tf.cast(tf.ensure_shape(images, batch), tf.float32) / 255.0)

        size_message = (f"serving_bytes: every image must be {height}x{width} pixels "
                        "(height x width) as the model was trained; resize before encoding")

        def decode(data):
            image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8,
                                       expand_animations=False)
            # Resizing would silently change what the model sees (and what an attack
            # perturbed), so a wrong size is an error rather than a resize.
            check = tf.debugging.assert_equal(tf.shape(image)[:2], [height, width],
                                              message=size_message)
            with tf.control_dependencies([check]):
                # Grappler does not keep a control dependency ahead of a shape check
                # (tf.ensure_shape failed first, with an unhelpful message), so the image
                # reaches no op that can fail: crop_or_pad is the identity at the right
                # size and gives the static shape; a wrong size fails only the assert.
                return tf.image.resize_with_crop_or_pad(image, height, width)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
        def serving_bytes(images):
            decoded = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(
                [height, width, channels], tf.uint8))
            return outputs(tf.cast(decoded, tf.float32) / 255.0)

        @tf.function(input_signature=[])
        def metadata():
            return tf.constant(metadata_json)

        self.serving_default = serving_default
        self.serving_uint8 = serving_uint8
        self.serving_bytes = serving_bytes
        self.metadata = metadata
        concrete = [getattr(self, name).get_concrete_function() for name in SIGNATURES]
        self.model_variables = _unique(v for fn in concrete for v in fn.variables)
        self.model_trainable_variables = _unique(
            v for fn in concrete for v in fn.trainable_variables)

    def signatures(self):
        """The signature map for `tf.saved_model.save`."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
