"""The metadata of an export: `assets.extra/dac_tf_metadata.json` and `metadata()`."""

import datetime
import os

import keras
import tensorflow as tf

import dac_tf
from dac_tf import fileio
from dac_tf import protocol
from dac_tf.serving.signatures import FORMAT
from dac_tf.serving.signatures import METADATA_FILE
from dac_tf.serving.signatures import ExportError
from dac_tf.serving.signatures import image_shape
from dac_tf.serving.signatures import num_classes
from dac_tf.serving.versions import list_versions

# Keys of config.json copied to the top level of the metadata, where dac_tf.evaluate and
# serving clients look for them; the whole config is kept under "training_config".
_CONFIG_KEYS = ("arch", "dataset", "class_names", "normalization", "method", "use_dac",
                "norm", "epsilon")


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_metadata(model, config=None, *, checkpoint=None, checkpoint_path=None,
                   model_dir=None, evaluation=None, evaluation_path=None):
    """The metadata written next to (and into) an export.

    Args:
      model: the exported network (gives the input shape and the number of classes).
      config: the run's config.json dict, if any (kept whole under "training_config").
      checkpoint: "best" or "last", if exported from a run.
      checkpoint_path: the checkpoint prefix restored.
      model_dir: the run directory.
      evaluation: the evaluation JSON content (`python -m dac_tf.evaluate --output`), if any.
      evaluation_path: where it was read from.

    Returns:
      A JSON-serialisable dict. `epsilon` is in [0, 1] units and `epsilon_255` in pixel
      units out of 255.
    """
    config = dict(config or {})
    height, width, channels = image_shape(model)
    meta = {k: config.get(k) for k in _CONFIG_KEYS}
    meta.update(
        format=FORMAT,
        input_shape=[height, width, channels],
        num_classes=num_classes(model),
        epsilon_255=protocol.to_pixels(config.get("epsilon")),
        signatures={
            "serving_default": "images: float32 [batch, H, W, C] in [0, 1]; a value "
                               "outside [0, 1] or NaN fails the request "
                               "(InvalidArgumentError, HTTP 400)",
            "serving_uint8": "images: uint8 [batch, H, W, C]",
            "serving_bytes": "images: string [batch], encoded PNG/JPEG, each H x W",
        },
        outputs={"logits": "float32 [batch, K]", "probabilities": "float32 [batch, K]",
                 "classes": "int64 [batch]"},
        checkpoint=checkpoint,
        checkpoint_path=None if checkpoint_path is None else os.path.abspath(checkpoint_path),
        model_dir=None if model_dir is None else os.path.abspath(model_dir),
        training_config=config or None,
        evaluation=evaluation,
        evaluation_path=None if evaluation_path is None else os.path.abspath(evaluation_path),
        dac_tf_version=dac_tf.__version__,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        export_time=_utc_now(),
    )
    if meta["class_names"] is not None and len(meta["class_names"]) != meta["num_classes"]:
        raise ExportError(f"the run has {len(meta['class_names'])} class names but the model "
                          f"returns {meta['num_classes']} logits.")
    return meta


def read_metadata(path):
    """Reads an export's `assets.extra/dac_tf_metadata.json` (plain JSON, no TensorFlow).

    Args:
      path: a version directory (export/NAME/1) or an export base (highest version).

    Returns:
      The metadata dict.
    """
    versions = list_versions(path)
    if not tf.io.gfile.exists(os.path.join(path, METADATA_FILE)) and versions:
        path = os.path.join(path, versions[max(versions)])
    return fileio.read_json(os.path.join(path, METADATA_FILE), ExportError,
                            "export metadata")
