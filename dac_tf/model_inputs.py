"""What `DACModel` accepts: the base model it wraps and the batches it trains on.

Each refusal is a `ValueError` that says what to change; what only the data can show
(pixel range, label range) is checked in the graph, without a host sync.
"""

import keras
import tensorflow as tf


def check_base_model(model):
    """Refuses base models DAC cannot train correctly, with what to change.

    Checked where Keras knows the model's outputs (functional and Sequential models,
    built subclassed ones have no symbolic outputs and are checked at the first batch
    by `unpack_batch`'s checks):
    - one output tensor of logits [batch, classes];
    - at least 2 classes: AC is a spread over the classes, NaN or 0 for one logit;
    - no softmax at the end: AC of probabilities is nearly 0 and the losses would apply a
      second softmax, so training is silently poor (val accuracy 0.76 vs 0.92 with
      logits on the digits).

    Raises:
      ValueError: naming the problem.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"base_model must be a keras.Model, got {type(model).__name__}.")
    outputs = getattr(model, "outputs", None)
    try:
        outputs = list(outputs) if outputs is not None else None
    except TypeError:
        outputs = None
    if outputs is None:
        return
    if len(outputs) != 1:
        raise ValueError(f"base_model {model.name!r} has {len(outputs)} outputs; DACModel "
                         "needs one logits output [batch, classes] (wrap the model so it "
                         "returns the classifier's logits only).")
    shape = tuple(outputs[0].shape)
    if len(shape) != 2:
        raise ValueError(f"base_model {model.name!r} returns shape {shape}; DACModel needs "
                         "logits of shape [batch, classes].")
    if shape[-1] is not None and shape[-1] < 2:
        raise ValueError(f"base_model {model.name!r} returns {shape[-1]} logit; DAC needs "
                         ">= 2 classes (adversarial certainty is the spread of the logits "
                         "over the classes). For a binary task return 2 logits.")
    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if isinstance(last, keras.layers.Softmax) or name in ("softmax", "log_softmax", "sigmoid"):
        raise ValueError(
            f"base_model {model.name!r} ends in {name or 'a Softmax layer'}; DACModel "
            "needs logits (attacks, losses and adversarial certainty are defined on "
            "logits). Remove the final activation (e.g. Dense(classes) instead of "
            "Dense(classes, activation='softmax')).")


def num_classes(base_model):
    """The number of logits of `base_model`, or None when it has no symbolic outputs."""
    try:
        return int(base_model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None   # a subclassed model without symbolic outputs


def unpack_batch(data, num_classes=None):
    """A batch of `fit`/`evaluate` as float32 images and int32 labels, checked.

    Args:
      data: what Keras passes to `train_step` / `test_step`: (images, labels).
      num_classes: the base model's logits (`num_classes`), to check the labels; None:
        not known before the first forward.

    Returns:
      (images float32 [B, ...], labels int32 [B]), with graph-side checks of the pixel
      range [0, 1], one label per image and labels in [0, num_classes).

    Raises:
      ValueError: sample weights, images only, several or ragged tensors, integer
        images or non-integer labels, naming what to pass instead.
    """
    images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if sample_weight is not None:
        raise ValueError("DACModel does not support sample weights.")
    if labels is None:
        raise ValueError("DACModel needs (images, labels) batches; got images only.")
    for what, value in (("images", images), ("labels", labels)):
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(f"DACModel takes {what} as one tensor; got a "
                             f"{type(value).__name__} (the attacks perturb a single "
                             "image tensor: pass (images, labels) batches).")
        if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
            raise ValueError(f"DACModel takes dense {what}; got a "
                             f"{type(value).__name__} (images of one size: resize or "
                             "pad them, then .to_tensor()).")
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels)
    if not images.dtype.is_floating:
        raise ValueError(
            f"DACModel expects float images in [0, 1]; got dtype {images.dtype.name} "
            "(for uint8 images divide by 255 first).")
    if not labels.dtype.is_integer:
        raise ValueError(f"DACModel expects integer class labels; got dtype "
                         f"{labels.dtype.name} (one-hot labels: take argmax first).")
    images = tf.cast(images, tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    # Graph-side checks (no host sync): attacks clip to [0, 1] and a label out of
    # range gives NaN on GPU instead of an error, so both would fail silently.
    checks = [
        tf.debugging.assert_greater_equal(
            tf.reduce_min(images), 0.0, message="DACModel: images must be in [0, 1]"),
        tf.debugging.assert_less_equal(
            tf.reduce_max(images), 1.0, message="DACModel: images must be in [0, 1]"),
        tf.debugging.assert_equal(
            tf.shape(labels)[0], tf.shape(images)[0],
            message="DACModel: one label per image expected"),
        tf.debugging.assert_non_negative(
            labels, message="DACModel: labels must be in [0, num_classes)"),
    ]
    if num_classes is not None:
        checks.append(tf.debugging.assert_less(
            labels, num_classes, message="DACModel: labels must be in [0, num_classes)"))
    with tf.control_dependencies(checks):
        return tf.identity(images), tf.identity(labels)
