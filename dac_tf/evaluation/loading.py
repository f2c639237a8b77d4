"""What is evaluated: a model as a function from images to logits, the examples, and
fingerprints of both.

A model is a training run (`config.json` and the `best` / `last` checkpoints,
`dac_tf.checkpoints`), a SavedModel (`saved_model.pb`, e.g. `python -m dac_tf.export`'s,
whose `assets.extra` metadata give the data set and radius), or an export base directory
holding numbered versions (the highest is taken, as TF Serving does). Every path goes
through `tf.io.gfile`, so models may live on `gs://` and the like.

The fingerprints are what `--resume` compares before it reuses a stored result: a `last`
checkpoint that moved on, a re-export or a changed data file gets a new one.
"""

import hashlib
import os

import numpy as np
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import data
from dac_tf import serving
from dac_tf import fileio
from dac_tf.evaluation import EvaluationError

# What the run config / export metadata may say about a model, copied into its metadata.
_MODEL_KEYS = ("dataset", "epsilon", "norm", "input_shape", "num_classes", "arch", "method",
               "use_dac")


def absolute_path(path):
    """`os.path.abspath` for local paths; a URL (`gs://...`) is returned as it is."""
    return os.path.abspath(path) if fileio.is_local(path) else path


def resolve_model_path(path):
    """What `--model=PATH` points at.

    Args:
      path: a training run (has config.json), a SavedModel (has saved_model.pb) or an
        export base directory whose numbered subdirectories are SavedModels.

    Returns:
      (kind, path): kind "model_dir" or "saved_model"; for an export base, the path of
      its highest version.

    Raises:
      EvaluationError: none of these.
    """
    if not path or not tf.io.gfile.isdir(path):
        raise EvaluationError(f"--model={path!r}: no such directory.")
    if tf.io.gfile.exists(checkpoints.config_path(path)):
        return "model_dir", path
    if tf.io.gfile.exists(os.path.join(path, serving.SAVED_MODEL_FILE)):
        return "saved_model", path
    # The export's own notion of a version (TF Serving's: "01" is version 1).
    versions = {v: d for v, d in serving.list_versions(path).items()
                if tf.io.gfile.exists(os.path.join(path, d, serving.SAVED_MODEL_FILE))}
    if versions:
        return "saved_model", os.path.join(path, versions[max(versions)])
    raise EvaluationError(
        f"--model={path!r} is neither a training run ({checkpoints.CONFIG_FILE}) nor a "
        f"SavedModel ({serving.SAVED_MODEL_FILE}, or numbered versions holding one).")


class _SavedModelLogits:
    """Calls a SavedModel's serving signature; holds the loaded object (its variables)."""

    def __init__(self, loaded, signature_key="serving_default"):
        if signature_key not in loaded.signatures:
            raise EvaluationError(f"the SavedModel has no {signature_key!r} signature "
                                  f"(has {', '.join(loaded.signatures) or 'none'}).")
        self.loaded = loaded
        self.signature = loaded.signatures[signature_key]
        inputs = self.signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise EvaluationError(f"the {signature_key!r} signature takes {sorted(inputs)}; "
                                  "expected one image input")
        self.input_name = next(iter(inputs))
        self.input_spec = inputs[self.input_name]
        outputs = self.signature.structured_outputs
        if "logits" in outputs:
            self.output_name = "logits"
        elif len(outputs) == 1:
            self.output_name = next(iter(outputs))
        else:
            raise EvaluationError(f"the {signature_key!r} signature returns "
                                  f"{sorted(outputs)} and no 'logits'.")

    def __call__(self, x):
        return self.signature(**{self.input_name: x})[self.output_name]


def keras_logits_fn(model):
    """A Keras model as an evaluation `logits_fn`: BatchNorm (and dropout) in inference
    mode. The function keeps the model alive, and the same object should be reused so
    that the attacks' traced graphs are."""
    def logits_fn(x):
        return model(x, training=False)
    logits_fn.model = model
    return logits_fn


def _label(path, kind, checkpoint):
    name = os.path.basename(os.path.normpath(path))
    if kind == "saved_model" and name.isdigit():
        name = f"{os.path.basename(os.path.dirname(os.path.normpath(path)))}/{name}"
    return f"{name} ({checkpoint})" if kind == "model_dir" else name


def load_logits_fn(path, checkpoint="best"):
    """Loads a model as a function from [0, 1] images to logits (inference mode).

    Args:
      path: see `resolve_model_path`.
      checkpoint: "best" or "last" (training runs only).

    Returns:
      (logits_fn, metadata): `logits_fn(images float32 [B, H, W, C]) -> logits [B, K]`,
      differentiable w.r.t. the images; metadata a dict with `kind`, `path`, `label`,
      `checkpoint` and, where the run config / export metadata give them, `dataset`,
      `epsilon` ([0, 1] units), `norm`, `input_shape`, `num_classes`, `arch`, `method`,
      `use_dac` (and `checkpoint_path` for a run).

    Raises:
      EvaluationError, checkpoints.CheckpointError: the model cannot be loaded.
    """
    kind, resolved = resolve_model_path(path)
    meta = dict(kind=kind, path=absolute_path(resolved), checkpoint=None)
    if kind == "model_dir":
        model, config = checkpoints.load_model(resolved, checkpoint)
        fn = keras_logits_fn(model)
        meta.update(checkpoint=checkpoint,
                    checkpoint_path=checkpoints.checkpoint_path(resolved, checkpoint),
                    **{k: config.get(k) for k in _MODEL_KEYS})
    else:
        try:
            loaded = tf.saved_model.load(resolved)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise EvaluationError(f"cannot load the SavedModel {resolved!r}: "
                                  f"{fileio.first_line(e)}") from None
        fn = _SavedModelLogits(loaded)
        metadata_path = os.path.join(resolved, serving.METADATA_FILE)
        extra = (fileio.read_json(metadata_path, EvaluationError, "export metadata")
                 if tf.io.gfile.exists(metadata_path) else {})
        meta.update({k: extra.get(k) for k in _MODEL_KEYS})
        if meta["input_shape"] is None and fn.input_spec.shape.rank == 4:
            dims = fn.input_spec.shape.as_list()[1:]
            meta["input_shape"] = dims if None not in dims else None
    meta["label"] = _label(resolved, kind, checkpoint)
    return fn, meta


def load_split(dataset, split, *, data_dir=None, num_examples=None):
    """The first `num_examples` examples of a split.

    Args:
      dataset: a `dac_tf.data` dataset string ("cifar10", "digits", "npz:PATH", ...).
      split: "test" or "train".
      data_dir: tfds data directory.
      num_examples: how many (None: all).

    Returns:
      (images float32 [N, H, W, C] in [0, 1], labels int32 [N], the loaded
      `data.Splits`, for the image shape and class names).

    Raises:
      EvaluationError: more examples asked for than the split has.
      data.DatasetError: the data cannot be loaded.
    """
    splits = data.load(dataset, data_dir=data_dir, val_size=0)
    x, y = (splits.x_test, splits.y_test) if split == "test" else (splits.x_train,
                                                                  splits.y_train)
    if num_examples is not None:
        if num_examples > len(x):
            raise EvaluationError(f"--num_examples={num_examples} exceeds the {len(x)} "
                                  f"examples of {dataset} {split}.")
        x, y = x[:num_examples], y[:num_examples]
    return data.to_float32(x), np.asarray(y, np.int32), splits


def _fingerprint_files(paths):
    """sha256 over the bytes of `paths` (what identifies a model's weights)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode())
        with tf.io.gfile.GFile(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_fingerprint(meta):
    """A fingerprint of the weights `load_logits_fn` loaded (see its metadata).

    For a run, the checkpoint's `.index` file (it holds a checksum of every tensor) and
    its name; for a SavedModel, `saved_model.pb` and the variables index. A `last`
    checkpoint that moved on (ckpt-2 -> ckpt-3) or a re-export gets a new fingerprint.
    """
    if meta["kind"] == "model_dir":
        return _fingerprint_files([meta["checkpoint_path"] + ".index"])
    files = [os.path.join(meta["path"], serving.SAVED_MODEL_FILE)]
    index = os.path.join(meta["path"], "variables", "variables.index")
    if tf.io.gfile.exists(index):
        files.append(index)
    return _fingerprint_files(files)


def data_fingerprint(x, y):
    """sha256 of the evaluated examples (float32 images and int32 labels)."""
    digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int32).tobytes())
    return digest.hexdigest()
