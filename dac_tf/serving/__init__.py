r"""SavedModels for TensorFlow Serving: the serving module, its metadata, versions.

The library side of `python -m dac_tf.export` (which is a thin program over it):
`export_saved_model(model, export_base)` writes any image classifier,
`export_run(model_dir, export_base)` a training run's base network, in TF Serving's
versioned layout:

    export/at_dac/
      1/
        saved_model.pb  fingerprint.pb  variables/  assets/
        assets.extra/dac_tf_metadata.json

The version is the next free integer unless `version` is given; an existing version is
replaced only with `overwrite`. A version is written into a hidden temporary directory
beside it, loaded back and checked against the in-memory model, and only then renamed into
place, so TF Serving (which watches the numbered directories) never sees half of one (on
object storage, where a rename is a copy, `saved_model.pb` is copied last).

The SavedModel holds plain TensorFlow ops and the network's variables: loading it needs
neither dac_tf nor Keras. Its signatures all return `logits` (float32 [B, K]),
`probabilities` (softmax of the logits) and `classes` (int64 argmax):

- `serving_default`: `images` float32 [B, H, W, C] in [0, 1] (a value outside [0, 1] by
  more than float rounding, or NaN, fails the request with an InvalidArgumentError: TF
  Serving's HTTP 400);
- `serving_uint8`: `images` uint8 [B, H, W, C], divided by 255 in the graph;
- `serving_bytes`: `images` string [B] of encoded PNG/JPEG/GIF/BMP, each exactly H x W
  (decoded to C channels; the REST API takes them as `{"b64": ...}`).

BatchNorm runs in inference mode and the signatures are differentiable with respect to
their float input, so attacks (PGD, AutoAttack) run on the loaded model. The same metadata
(dataset, class names, epsilon, training flags, checkpoint, evaluation results) is in
`assets.extra/dac_tf_metadata.json` and returned as a JSON string by the loaded object's
`metadata()` function. export/README.md shows how to serve and query the export.
"""

import json
import os

import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import fileio
from dac_tf import protocol
from dac_tf.serving import roundtrip
from dac_tf.serving import versions
from dac_tf.serving.metadata import build_metadata
from dac_tf.serving.metadata import read_metadata
from dac_tf.serving.signatures import FORMAT
from dac_tf.serving.signatures import INPUT_NAME
from dac_tf.serving.signatures import METADATA_FILE
from dac_tf.serving.signatures import OUTPUT_NAMES
from dac_tf.serving.signatures import RANGE_MARGIN
from dac_tf.serving.signatures import RANGE_MESSAGE
from dac_tf.serving.signatures import SAVED_MODEL_FILE
from dac_tf.serving.signatures import SIGNATURES
from dac_tf.serving.signatures import ExportError
from dac_tf.serving.signatures import ServingModule
from dac_tf.serving.signatures import image_shape
from dac_tf.serving.versions import list_versions
from dac_tf.serving.versions import next_version
from dac_tf.serving.versions import parse_version

__all__ = [
    "FORMAT", "INPUT_NAME", "METADATA_FILE", "OUTPUT_NAMES", "RANGE_MARGIN", "RANGE_MESSAGE",
    "SAVED_MODEL_FILE", "SIGNATURES", "ExportError", "ServingModule", "build_metadata",
    "export_run", "export_saved_model", "image_shape", "list_versions", "next_version",
    "parse_version", "read_metadata",
]


def _write_version(module, model, tmp, metadata_json, verify):
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    tf.io.gfile.makedirs(os.path.join(tmp, os.path.dirname(METADATA_FILE)))
    fileio.write_atomic(os.path.join(tmp, METADATA_FILE), metadata_json)
    if verify:
        roundtrip.verify(tmp, model, *image_shape(model))



def export_saved_model(model, export_base, *, metadata=None, version=None, overwrite=False,
                       verify=True):
    """Exports a network as a TF Serving SavedModel version.

    Args:
      model: a built `keras.Model` mapping float32 [B, H, W, C] images in [0, 1] to logits.
      export_base: the model's export directory (export/NAME); created if missing.
      metadata: dict merged over `build_metadata(model)` (e.g. from `export_run`); an
        `epsilon` in it is the training radius in [0, 1] units (above 1 is refused as
        a value out of 255 given by mistake) and sets `epsilon_255`.
      version: int (or digit string) version to write; None for the next free one.
      overwrite: replace an existing `version`.
      verify: load the SavedModel back and check every signature against `model` before
        moving it into place.

    Returns:
      The path of the version directory written (export_base/<version>).

    Raises:
      protocol.UnitError: a metadata epsilon above 1 (a value out of 255).
      ExportError: a bad model, version or directory, an existing version without
        `overwrite`, or a failed round-trip check (nothing is left behind then).
    """
    version = versions.check_target(export_base, version, overwrite)
    explicit = version is not None
    meta = build_metadata(model)
    meta.update(metadata or {})
    # The training radius, in [0, 1] units like every library radius (the rule of
    # `protocol.unit_value`); epsilon_255 follows it.
    meta["epsilon"] = protocol.unit_value("metadata['epsilon']", meta.get("epsilon"),
                                          allow_none=True)
    if meta["epsilon"] is not None:
        meta["epsilon_255"] = protocol.to_pixels(meta["epsilon"])
    metadata_json = json.dumps(meta, indent=2, sort_keys=True)
    module = ServingModule(model, metadata_json)
    try:
        tf.io.gfile.makedirs(export_base)
        versions.remove_dead_hidden_dirs(export_base)
        tmp = versions.make_version_dir(export_base)
    except (OSError, tf.errors.OpError) as e:
        raise ExportError(f"cannot write to --export_dir={export_base!r}: "
                          f"{getattr(e, 'strerror', None) or fileio.first_line(e)}; "
                          "choose a writable --export_dir.") from None
    try:
        _write_version(module, model, tmp, metadata_json, verify)
        if not explicit:
            version = versions.next_version(export_base)
        return versions.move_into_place(tmp, export_base, version, explicit, overwrite)
    finally:
        versions.remove_quietly(tmp)


def _evaluation(model_dir, checkpoint, eval_json):
    path = eval_json or checkpoints.eval_result_path(model_dir, checkpoint)
    if not tf.io.gfile.exists(path):
        if eval_json:
            raise ExportError(f"--eval_json={eval_json!r}: no such file.")
        return None, None
    return fileio.read_json(path, ExportError, "evaluation JSON"), path


def export_run(model_dir, export_base, *, checkpoint="best", version=None, overwrite=False,
               eval_json=None, verify=True):
    """Exports the base network of a training run.

    Args:
      model_dir: a `--model_dir` written by `python -m dac_tf.train`.
      export_base: the export directory (export/NAME).
      checkpoint: "best" or "last".
      version: version to write; None for the next free one.
      overwrite: replace an existing `version`.
      eval_json: an evaluation JSON to record; default model_dir/eval_<checkpoint>.json
        when it exists.
      verify: see `export_saved_model`.

    Returns:
      The path of the version directory written.

    Raises:
      ExportError, checkpoints.CheckpointError: the run, checkpoint or export is bad.
    """
    if not model_dir:
        raise ExportError("--model_dir is required (a training run directory).")
    version = versions.check_target(export_base, version, overwrite)
    if not tf.io.gfile.isdir(model_dir):
        raise ExportError(f"--model_dir={model_dir!r}: no such directory.")
    try:
        model, config = checkpoints.load_model(model_dir, checkpoint)
    except checkpoints.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        # models.build's own errors (unknown arch, bad options) or a config.json key missing.
        what = f"lacks the key {e}" if isinstance(e, KeyError) else f"is invalid: {fileio.first_line(e)}"
        raise ExportError(f"{checkpoints.config_path(model_dir)} {what}") from None
    evaluation, evaluation_path = _evaluation(model_dir, checkpoint, eval_json)
    metadata = build_metadata(
        model, config, checkpoint=checkpoint,
        checkpoint_path=checkpoints.checkpoint_path(model_dir, checkpoint),
        model_dir=model_dir, evaluation=evaluation, evaluation_path=evaluation_path)
    return export_saved_model(model, export_base, metadata=metadata, version=version,
                              overwrite=overwrite, verify=verify)
