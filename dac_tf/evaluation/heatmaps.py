"""The paper's adversarial heatmaps: mean softmax on PGD adversarial inputs per true class.

For a run's best and last checkpoints and its train and test splits, row t of a matrix
is the model's mean softmax output over the adversarial examples of true class t: an
over-confident robust-overfitted model puts its mass on a few wrong classes, which is
the paper's motivation for decreasing adversarial certainty. The attack is the run's
selection attack (its robust accuracy curve's: PGD-10 at the evaluation radius by
default, `dac_tf.protocol`), i.e. training's PGD (`dac_tf.attacks`) with BatchNorm in
inference mode, not the CleverHans attacks of the table.

`python -m dac_tf.report` draws the result (`compute_heatmaps`); nothing here plots.
"""

import os
import re

import numpy as np
import tensorflow as tf

from dac_tf import attacks
from dac_tf import batching
from dac_tf import checkpoints
from dac_tf import data
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import loading

SPLITS = ("train", "test")
# What rebuilding the model and repeating its attack needs from config.json.
_CONFIG_KEYS = ("dataset", "arch", "num_classes", "input_shape", "epsilon", "step_size",
                "num_steps")
_DATA_CACHE = {}


def mean_softmax_matrix(model, x, y, *, num_classes, epsilon, step_size, num_steps,
                        norm="linf", start="uniform", seed=0, batch_size=256):
    """The model's mean softmax output on PGD adversarial inputs, per true class.

    The attack is the training CLI's evaluation attack: cross-entropy PGD with
    BatchNorm in inference mode (`model(x, training=False)`).

    Args:
      model: a Keras model mapping [0, 1] images to logits.
      x: images (uint8 in [0, 255] or float in [0, 1]), any shape the model takes.
      y: integer labels [N] in [0, num_classes).
      num_classes: number of classes (the model's number of logits).
      epsilon, step_size, num_steps, norm, start: the attack (`attacks.pgd`); epsilon
        and step_size in [0, 1] pixel units.
      seed: integer seed of the attack's random start (batch i uses [seed, i]).
      batch_size: examples per attack batch (the last one is padded, `dac_tf.batching`).

    Returns:
      (matrix, counts): float64 [num_classes, num_classes] whose row t is the mean
      softmax over the examples of true class t (NaN for a class with no example), so
      each non-empty row sums to 1; and int64 [num_classes] examples per class.

    Raises:
      ValueError: labels out of range, mismatched lengths, or a model whose number of
        logits is not num_classes.
    """
    softmax_fn = _adversarial_softmax_fn(model, epsilon=epsilon, step_size=step_size,
                                         num_steps=num_steps, norm=norm, start=start)
    return _mean_softmax(softmax_fn, x, y, num_classes=num_classes, seed=seed,
                         batch_size=batch_size)


def _adversarial_softmax_fn(model, *, epsilon, step_size, num_steps, norm, start):
    """One traced function per model, reused for every split and batch."""

    def logits_fn(images):
        return tf.cast(model(images, training=False), tf.float32)

    @tf.function
    def adversarial_softmax(images, labels, batch_seed):
        adv = attacks.pgd(logits_fn, images, labels, epsilon=epsilon, step_size=step_size,
                          num_steps=num_steps, norm=norm, loss="ce", start=start,
                          seed=batch_seed)
        return tf.nn.softmax(logits_fn(adv))

    return adversarial_softmax


def _mean_softmax(softmax_fn, x, y, *, num_classes, seed, batch_size):
    y = np.asarray(y).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}].")
    sums = np.zeros((num_classes, num_classes))
    counts = np.bincount(y, minlength=num_classes).astype(np.int64)

    def batch_softmax(k, images, labels):
        # Batch k's attack is seeded with [seed, k] (the heatmaps' stream since the
        # first version; not a `seeds.fold`, so stored heatmaps stay reproducible).
        probs = softmax_fn(tf.constant(data.to_float32(images)),
                           tf.constant(labels, tf.int32), tf.constant([seed, k], tf.int64))
        if probs.shape[-1] != num_classes:
            raise ValueError(f"the model returns {probs.shape[-1]} logits; expected "
                             f"{num_classes}.")
        return probs

    if len(y):
        probs = batching.map_padded(batch_softmax, [x, y], batch_size)
        np.add.at(sums, y, probs.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def _checkpoint_epoch(path):
    # The training CLI saves epoch e as ckpt-e (checkpoint_number=epoch).
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def _load_splits(config):
    key = (config["dataset"], config.get("data_dir"), int(config.get("val_size", 0)),
           int(config.get("seed", 0)))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset in memory at a time: CIFAR is 150 MB
        # download=False: a report must never start a multi-GB download by surprise.
        _DATA_CACHE[key] = data.load(key[0], data_dir=key[1], val_size=key[2],
                                     seed=key[3], download=False)
    return _DATA_CACHE[key]


def _json_matrix(matrix):
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in matrix]


def _selection_attack(config):
    """The attack a run's robust accuracy curve was measured with, from its config.json.

    The selection attack (`select_*`, PGD-10 at the evaluation radius by default); runs
    written before the selection flags existed fall back to the training attack.

    Returns:
      dict(epsilon, step_size, num_steps, norm, start), [0, 1] units.
    """
    prefix = "select_" if config.get("select_epsilon") is not None else ""
    return dict(epsilon=float(config[f"{prefix}epsilon"]),
                step_size=float(config[f"{prefix}step_size"]),
                num_steps=int(config["select_steps" if prefix else "num_steps"]),
                norm=config.get("norm", "linf"),
                start=config.get("select_start" if prefix else "attack_start", "uniform"))


def compute_heatmaps(model_dir, config, *, label=None, num_examples=1000):
    """Mean-softmax matrices of a run's best and last checkpoints on train and test.

    Args:
      model_dir: the run directory (`dac_tf.checkpoints` layout).
      config: its config.json as a dict (None when it has none).
      label: the run's name in the result (default: the directory's name).
      num_examples: the first `num_examples` examples of each split are attacked.

    Returns:
      A JSON-ready dict: matrices[split][checkpoint] (lists of lists, None for a
      missing checkpoint), mean_true_class_probability[split][checkpoint],
      counts[split], examples[split], epochs[checkpoint], checkpoints, the attack,
      class_names, model_dir, label.

    Raises:
      EvaluationError: no config, no checkpoint at all, a model that cannot be rebuilt,
        or data that cannot be loaded.
    """
    if not config:
        raise EvaluationError(f"{model_dir!r} has no {checkpoints.CONFIG_FILE}.")
    missing = [k for k in _CONFIG_KEYS if config.get(k) is None]
    if missing:
        raise EvaluationError(f"{checkpoints.config_path(model_dir)} lacks "
                              f"{', '.join(missing)}.")
    if num_examples <= 0:
        raise EvaluationError(f"heatmap_examples must be positive, got {num_examples}.")
    paths = {}
    for which in checkpoints.CHECKPOINTS:
        try:
            paths[which] = checkpoints.checkpoint_path(model_dir, which)
        except checkpoints.CheckpointError:
            paths[which] = None
    if not any(paths.values()):
        raise EvaluationError(f"{model_dir!r} has no best/ or checkpoints/ checkpoint.")
    try:
        splits = _load_splits(config)
    except data.DatasetError as e:
        raise EvaluationError(str(e)) from None
    except ImportError as e:  # tensorflow_datasets or scikit-learn not installed
        raise EvaluationError(f"cannot load --dataset={config['dataset']}: {e}") from None
    num_classes = int(config.get("num_classes", splits.num_classes))
    names = list(config.get("class_names") or splits.class_names)
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    attack = _selection_attack(config)
    arrays = {"train": (splits.x_train, splits.y_train), "test": (splits.x_test, splits.y_test)}

    result = {"model_dir": loading.absolute_path(model_dir),
              "label": label or os.path.basename(os.path.normpath(model_dir)),
              "class_names": names, "attack": dict(attack, loss="ce", bn="inference"),
              "examples": {}, "counts": {}, "epochs": {}, "checkpoints": dict(paths),
              "matrices": {s: {} for s in SPLITS},
              "mean_true_class_probability": {s: {} for s in SPLITS}}
    computed = {}  # epoch -> matrices; best and last are often the same epoch
    for which in checkpoints.CHECKPOINTS:
        epoch = _checkpoint_epoch(paths[which]) if paths[which] else None
        result["epochs"][which] = epoch
        if paths[which] is None:
            for split in SPLITS:
                result["matrices"][split][which] = None
                result["mean_true_class_probability"][split][which] = None
            continue
        cache_key = epoch if epoch is not None else paths[which]
        if cache_key not in computed:
            try:
                model = checkpoints.restore_weights(checkpoints.build_model(config),
                                                    paths[which])
            except (checkpoints.CheckpointError, ValueError, TypeError) as e:
                # build_model's ValueError/TypeError: an arch or arch_kwargs this
                # version does not know.
                raise EvaluationError(f"cannot rebuild the model of {model_dir!r}: {e}"
                                      ) from None
            softmax_fn = _adversarial_softmax_fn(model, **attack)
            computed[cache_key] = {}
            for split in SPLITS:
                x, y = arrays[split]
                x, y = x[:num_examples], y[:num_examples]
                matrix, counts = _mean_softmax(
                    softmax_fn, x, y, num_classes=num_classes,
                    seed=int(config.get("seed", 0)),
                    batch_size=int(config.get("eval_batch_size", 256)))
                computed[cache_key][split] = matrix
                result["counts"][split] = counts.tolist()
                result["examples"][split] = int(len(y))
        for split in SPLITS:
            matrix = computed[cache_key][split]
            result["matrices"][split][which] = _json_matrix(matrix)
            diag = np.diag(matrix)
            weights = np.asarray(result["counts"][split], float)
            ok = np.isfinite(diag)
            result["mean_true_class_probability"][split][which] = (
                float(np.average(diag[ok], weights=weights[ok])) if ok.any() else None)
    return result
