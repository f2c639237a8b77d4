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

import datetime
import errno
import json
import os
import uuid

import keras
import numpy as np
import tensorflow as tf

import dac_tf
from dac_tf import checkpoints
from dac_tf import errors
from dac_tf import fileio
from dac_tf import protocol

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
# Keys of config.json copied to the top level of the metadata, where dac_tf.evaluate and
# serving clients look for them; the whole config is kept under "training_config".
_CONFIG_KEYS = ("arch", "dataset", "class_names", "normalization", "method", "use_dac",
                "norm", "epsilon")
# Tolerance of the round-trip check: the SavedModel runs the same ops as the Keras model,
# only traced once more, so anything beyond float rounding means a broken export.
_VERIFY_RTOL = 1e-4
_VERIFY_ATOL = 1e-4


class ExportError(errors.UserError):
    """A model, export directory or version that cannot be exported (the message says why)."""


# ---------------------------------------------------------------------- the model
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


def _num_classes(model):
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
            logits = tf.cast(model(images, training=False), tf.float32)
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


# ---------------------------------------------------------------------- metadata
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
        num_classes=_num_classes(model),
        epsilon_255=None if config.get("epsilon") is None else float(config["epsilon"]) * 255,
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


# ---------------------------------------------------------------------- versions
def parse_version(value):
    """A `--version` value as an int (None stays None: the next free version).

    Args:
      value: None, an int, or a string of digits.

    Returns:
      None or a non-negative int.

    Raises:
      ExportError: anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ExportError(f"--version={value!r} must be a non-negative integer.")
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise ExportError(f"--version={value!r} must be a non-negative integer "
                          "(TF Serving loads numbered directories only).")
    return int(text)


def list_versions(export_base):
    """The versions in an export base directory.

    Args:
      export_base: e.g. export/NAME.

    Returns:
      {version int: directory name}. TF Serving reads "01" as version 1 too, so names
      are parsed as integers.
    """
    if not tf.io.gfile.isdir(export_base):
        return {}
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(export_base)]
    return {int(name): name for name in names
            if name.isdigit() and name.isascii()
            and tf.io.gfile.isdir(os.path.join(export_base, name))}


def next_version(export_base):
    """The next free version: one more than the highest, 1 for an empty base."""
    versions = list_versions(export_base)
    return max(versions) + 1 if versions else 1


# ---------------------------------------------------------------------- export
def _run_like_tf_serving(path, feeds):
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


def _verify(path, model, height, width, channels):
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
        for name, out in _run_like_tf_serving(path, feeds).items():
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


def _write_version(module, model, tmp, metadata_json, verify):
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    tf.io.gfile.makedirs(os.path.join(tmp, os.path.dirname(METADATA_FILE)))
    fileio.write_atomic(os.path.join(tmp, METADATA_FILE), metadata_json)
    if verify:
        _verify(tmp, model, *image_shape(model))


def _rename_dir(source, target):
    """Moves a directory. On a local disk a rename: atomic, and it fails (EEXIST or
    ENOTEMPTY) when `target` exists. On object storage, where a "directory" is a name
    prefix and renames are copies, the files are copied with `saved_model.pb` last (TF
    Serving loads a version only once that file exists), then `source` is deleted."""
    if fileio.is_local(source):
        os.rename(source, target)
        return
    if tf.io.gfile.exists(target):
        raise OSError(errno.EEXIST, "exists", target)
    # Only names that exist: TensorFlow's ram:// lists a phantom "assets/.extra" beside
    # the real "assets.extra/" (it matches names by prefix).
    files = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(source)
             for name in names if tf.io.gfile.exists(os.path.join(root, name))]
    files.sort(key=lambda path: os.path.basename(path) == SAVED_MODEL_FILE)
    for path in files:
        destination = os.path.join(target, os.path.relpath(path, source))
        tf.io.gfile.makedirs(os.path.dirname(destination))
        # Read and write, not tf.io.gfile.copy: not every filesystem plugin implements
        # a server-side copy (TensorFlow's ram:// does not).
        with tf.io.gfile.GFile(path, "rb") as src, tf.io.gfile.GFile(destination, "wb") as dst:
            dst.write(src.read())
    fileio.remove_tree(source)


def _move_into_place(tmp, export_base, version, explicit, overwrite):
    """Renames `tmp` to export_base/<version>; returns the final path."""
    for _ in range(100):
        existing = list_versions(export_base).get(version)
        final = os.path.join(export_base, str(version))
        old = None
        if existing is not None:
            if not overwrite:
                if explicit:
                    raise ExportError(_exists_message(export_base, version))
                # Another export took this version meanwhile: take the next one.
                version = next_version(export_base)
                continue
            # POSIX cannot rename onto a non-empty directory: move the old version aside
            # first (TF Serving sees it gone for an instant, never half-written).
            old = _make_hidden_dir(export_base, f"old-{existing}")
            _rename_dir(os.path.join(export_base, existing), os.path.join(old, existing))
        try:
            _rename_dir(tmp, final)
        except OSError as e:
            if old is not None:
                _rename_dir(os.path.join(old, existing), os.path.join(export_base, existing))
                _rmtree(old)
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and not explicit:
                version = next_version(export_base)
                continue
            raise ExportError(f"cannot move the export into {final}: {e}") from None
        if old is not None:
            _rmtree(old)
        return final
    raise ExportError(f"no free version in {export_base} after 100 tries.")


def _exists_message(export_base, version):
    return (f"version {version} already exists in {export_base}; pass --overwrite to "
            f"replace it, or omit --version to write the next free version "
            f"({next_version(export_base)}).")


def _check_target(export_base, version, overwrite):
    """Fails early (before any loading) on a bad --export_dir or a taken --version."""
    version = parse_version(version)
    if not export_base:
        raise ExportError("--export_dir is required (e.g. --export_dir=export/NAME).")
    if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
        raise ExportError(f"--export_dir={export_base!r} exists and is not a directory.")
    if tf.io.gfile.exists(os.path.join(export_base, SAVED_MODEL_FILE)):
        raise ExportError(f"--export_dir={export_base!r} is itself a SavedModel; give its "
                          "parent, the directory TF Serving watches (export/NAME).")
    if version is not None and version in list_versions(export_base) and not overwrite:
        raise ExportError(_exists_message(export_base, version))
    return version


def _remove_dead_hidden_dirs(export_base):
    """Cleans up after exports that were killed (the pid in a hidden folder's name is gone).

    `.tmp-export-PID-*` (a version being written) is deleted. `.old-V-PID-*` holds
    version V moved aside by `--overwrite`: it is deleted when the new V is in place, and
    moved back when the kill came before that, so an interrupted overwrite never loses
    the version that was served. A live export's folders are left alone.
    """
    for name in tf.io.gfile.listdir(export_base):
        name = name.rstrip("/")
        parts = name.split("-")
        if not name.startswith((".tmp-export-", ".old-")) or len(parts) < 4:
            continue
        if not parts[-2].isdigit():
            continue
        try:
            os.kill(int(parts[-2]), 0)
            continue   # still running (or not ours to judge)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join(export_base, name)
        if name.startswith(".old-"):
            version = parts[1]
            target = os.path.join(export_base, version)
            saved = os.path.join(path, version)
            if not tf.io.gfile.exists(target) and tf.io.gfile.isdir(saved):
                _rename_dir(saved, target)
        _rmtree(path)


def _rmtree(path):
    try:
        fileio.remove_tree(path)
    except (OSError, tf.errors.OpError):
        pass   # another process's to clean


def _make_hidden_dir(parent, kind):
    # Hidden and non-numeric, so TF Serving never loads it; os.mkdir (unlike mkdtemp's
    # 0700) honours the umask, so a server running as another user can read the version.
    path = os.path.join(parent, f".{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if fileio.is_local(path):
        os.mkdir(path)
    else:
        tf.io.gfile.makedirs(path)
    return path


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
    version = _check_target(export_base, version, overwrite)
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
        _remove_dead_hidden_dirs(export_base)
        tmp = _make_hidden_dir(export_base, "tmp-export")
    except (OSError, tf.errors.OpError) as e:
        raise ExportError(f"cannot write to --export_dir={export_base!r}: "
                          f"{getattr(e, 'strerror', None) or fileio.first_line(e)}; "
                          "choose a writable --export_dir.") from None
    try:
        _write_version(module, model, tmp, metadata_json, verify)
        return _move_into_place(tmp, export_base, version if explicit else next_version(
            export_base), explicit, overwrite)
    finally:
        _rmtree(tmp)


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
    version = _check_target(export_base, version, overwrite)
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
