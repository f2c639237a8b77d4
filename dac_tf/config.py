"""The training configuration: absl flags defined once, read once into a frozen dataclass.

Library code never reads `FLAGS`; `TrainConfig` is what `train.train_and_evaluate` takes.
Every flag is optional: unset method-dependent values (epsilon, lr, epochs, ...) resolve
to the reference's values for `--method` (REFERENCE.md), so the paper's setting is the
default and each config file only states what differs.

Units: `--epsilon` and `--step_size` are in pixel units out of 255, as the field writes
them (`--epsilon=8` is 8/255 on images in [0, 1]); TRADES/MART's 0.031 is 7.905.
"""

import dataclasses
import json
import math
import os

from absl import flags

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import data
from dac_tf import models
from dac_tf import objectives
from dac_tf import schedules

STRATEGIES = ("mirrored", "one_device", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
NORMALIZATIONS = ("auto", "none", "cifar10")


class ConfigError(ValueError):
    """A bad flag value or combination (the message names the flag and what is valid)."""


def define_flags():
    """Defines the training flags (idempotent, so tests can import twice)."""
    if "method" in flags.FLAGS:
        return
    f = flags
    # Data.
    f.DEFINE_string("dataset", "cifar10",
                    f"One of {', '.join(data.DATASETS)}, or npz:PATH (x_train, y_train, "
                    "x_test, y_test arrays).")
    f.DEFINE_string("data_dir", None, "tfds data directory (pre-downloaded datasets).")
    f.DEFINE_integer("val_size", 0,
                     "Held-out validation examples taken from the training set for model "
                     "selection. 0 selects on the test set, as the reference did; the "
                     "robust-overfitting code base holds out 1000.")
    f.DEFINE_enum("augment", None, list(data.AUGMENTATIONS),
                  "Augmentation; default per method: reflect (AT), zero (TRADES, MART); "
                  "none for digits.")
    f.DEFINE_integer("pad", 4, "Padding (pixels) before the random crop.")
    # Model.
    f.DEFINE_enum("arch", "preact_resnet18", list(models.ARCHITECTURES), "Architecture.")
    f.DEFINE_integer("depth", None, "WideResNet depth (arch=wide_resnet).")
    f.DEFINE_integer("widen_factor", None, "WideResNet widen factor (arch=wide_resnet).")
    f.DEFINE_enum("normalization", "auto", list(NORMALIZATIONS),
                  "Input normalisation inside the model; auto: CIFAR-10 mean/std for AT "
                  "(its reference normalises), none for TRADES/MART and for digits/npz.")
    # Method.
    f.DEFINE_enum("method", "at", list(objectives.METHODS), "Base robust method.")
    f.DEFINE_boolean("use_dac", True, "Add the DAC step (False: the plain baseline).")
    f.DEFINE_float("ac_step", None, "AC loss weight (reference: 0.3 AT/MART, 0.1 TRADES).")
    f.DEFINE_enum("ac_measure", "std", list(certainty.MEASURES),
                  "std: reference code (unbiased std); var: paper's Definition 1.")
    f.DEFINE_float("epsilon", None, "Attack radius in pixel units /255 (AT: 8; "
                   "TRADES/MART: 7.905 = 0.031).")
    f.DEFINE_float("step_size", None, "Attack step in pixel units /255 (AT: 2; TRADES: "
                   "1.989 = 0.0078; MART: 1.785 = 0.007).")
    f.DEFINE_integer("num_steps", None, "Attack steps (reference: 10).")
    f.DEFINE_enum("norm", "linf", list(attacks.NORMS), "Threat model.")
    f.DEFINE_float("beta", None, "TRADES/MART regulariser weight (6 / 5); not for AT.")
    f.DEFINE_boolean("random_start", True, "Random attack start (False: deterministic).")
    # Optimisation.
    f.DEFINE_integer("epochs", None, "Epochs (reference: AT 200, TRADES 76, MART 120).")
    f.DEFINE_integer("batch_size", None, "Global batch size (reference: 128; MART 512).")
    f.DEFINE_float("lr", None, "Learning rate (reference: 0.1; MART 0.01).")
    f.DEFINE_enum("lr_schedule", None, list(schedules.SCHEDULES),
                  "Default per method: piecewise_at (AT), piecewise_trades (TRADES, MART).")
    f.DEFINE_float("weight_decay", None, "Coupled L2 (reference: 5e-4 AT, 2e-4 TRADES, "
                   "3.5e-3 MART).")
    f.DEFINE_float("momentum", 0.9, "SGD momentum (PyTorch convention).")
    # Run.
    f.DEFINE_string("model_dir", None, "Where the run is written; default runs/<name>.")
    f.DEFINE_boolean("resume", False, "Continue the run in --model_dir from its last epoch.")
    f.DEFINE_integer("seed", 0, "Seed of initialisation, data order, augmentation, attacks.")
    f.DEFINE_enum("mixed_precision", "float32", list(PRECISIONS), "Compute dtype policy.")
    f.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
    f.DEFINE_enum("strategy", "mirrored", list(STRATEGIES),
                  "mirrored: all visible GPUs (falls back to one device/CPU); one_device; "
                  "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.")
    f.DEFINE_integer("cpu_replicas", 1, "With --strategy=mirrored and no GPU: split the CPU "
                     "into this many replicas (testing and debugging distribution).")
    f.DEFINE_integer("eval_examples", 0, "Examples of the per-epoch attacked evaluation "
                     "(0: the whole split, as the reference).")
    f.DEFINE_integer("eval_batch_size", 256, "Batch size of the per-epoch evaluation.")
    f.DEFINE_integer("max_steps_per_epoch", 0, "Cap on batches per epoch (0: all; for "
                     "smoke tests).")
    f.DEFINE_boolean("report", True, "Write the plots (dac_tf.report) at the end.")
    f.DEFINE_boolean("deterministic", False, "tf.config.experimental.enable_op_determinism(): "
                     "bit-exact reruns on GPU, at some speed cost.")
    f.DEFINE_integer("verbose", 1, "Keras progress: 0 silent, 1 bar, 2 one line/epoch.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A fully resolved training run (no None left for method-dependent values)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    val_size: int = 0
    augment: str = "reflect"
    pad: int = 4
    arch: str = "preact_resnet18"
    arch_kwargs: dict = dataclasses.field(default_factory=dict)
    normalization: str = "cifar10"
    method: str = "at"
    use_dac: bool = True
    ac_step: float = 0.3
    ac_measure: str = "std"
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    num_steps: int = 10
    norm: str = "linf"
    beta: float | None = None
    random_start: bool = True
    attack_start: str = "uniform"
    attack_training: bool = True
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "piecewise_at"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    model_dir: str = "runs/default"
    resume: bool = False
    seed: int = 0
    mixed_precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "mirrored"
    cpu_replicas: int = 1
    eval_examples: int = 0
    eval_batch_size: int = 256
    max_steps_per_epoch: int = 0
    report: bool = True
    verbose: int = 1

    def to_json_dict(self):
        return dataclasses.asdict(self)

    # Keys that may differ between a run and its resumption.
    RESUMABLE_KEYS = ("resume", "verbose", "report", "strategy", "cpu_replicas",
                      "eval_batch_size", "data_dir", "model_dir")


def resolve(values):
    """Turns raw flag values (a dict; None = unset) into a validated `TrainConfig`.

    Args:
      values: mapping flag name -> value, e.g. `{k: FLAGS[k].value for k in ...}`.

    Returns:
      TrainConfig.

    Raises:
      ConfigError: a value or combination that is not valid, naming the flag.
    """
    v = dict(values)
    method = v.get("method") or "at"
    if method not in objectives.METHODS:
        raise ConfigError(f"--method={method!r} is not valid; use one of "
                          f"{', '.join(objectives.METHODS)}.")
    ref = objectives.defaults(method)
    dataset = v.get("dataset") or "cifar10"
    if dataset not in data.DATASETS and not dataset.startswith("npz:"):
        raise ConfigError(f"--dataset={dataset!r} is not valid; use one of "
                          f"{', '.join(data.DATASETS)} or npz:PATH.")
    norm = v.get("norm") or "linf"

    if method == "at" and v.get("beta") is not None:
        raise ConfigError("--beta is a TRADES/MART parameter; --method=at does not use it.")
    if not v.get("use_dac", True) and v.get("ac_step") is not None:
        raise ConfigError("--ac_step has no effect with --nouse_dac; drop one of them.")
    if norm == "l2" and (v.get("epsilon") is None or v.get("step_size") is None):
        raise ConfigError("--norm=l2 needs explicit --epsilon and --step_size (the "
                          "defaults are L-inf budgets).")
    arch = v.get("arch") or "preact_resnet18"
    arch_kwargs = {}
    for key in ("depth", "widen_factor"):
        if v.get(key) is not None:
            if arch != "wide_resnet":
                raise ConfigError(f"--{key} applies to --arch=wide_resnet only (got "
                                  f"--arch={arch}).")
            arch_kwargs[key] = int(v[key])

    small_images = dataset == "digits"
    augment = v.get("augment") or ("none" if small_images else ref.augmentation_padding)
    normalization = v.get("normalization") or "auto"
    if normalization == "auto":
        normalization = ("cifar10" if ref.normalize_inputs and dataset in ("cifar10", "cifar100")
                         else "none")

    def pick(key, default):
        return default if v.get(key) is None else v[key]

    config = TrainConfig(
        dataset=dataset, data_dir=v.get("data_dir"), val_size=int(pick("val_size", 0)),
        augment=augment, pad=int(pick("pad", 4)), arch=arch, arch_kwargs=arch_kwargs,
        normalization=normalization, method=method, use_dac=bool(pick("use_dac", True)),
        ac_step=float(pick("ac_step", ref.ac_step)), ac_measure=pick("ac_measure", "std"),
        epsilon=float(v["epsilon"]) / 255 if v.get("epsilon") is not None else ref.epsilon,
        step_size=(float(v["step_size"]) / 255 if v.get("step_size") is not None
                   else ref.step_size),
        num_steps=int(pick("num_steps", ref.num_steps)), norm=norm,
        beta=None if method == "at" else float(pick("beta", ref.beta)),
        random_start=bool(pick("random_start", True)),
        attack_start=ref.attack_start if pick("random_start", True) else "none",
        attack_training=ref.attack_training,
        epochs=int(pick("epochs", ref.epochs)), batch_size=int(pick("batch_size", ref.batch_size)),
        lr=float(pick("lr", ref.learning_rate)),
        lr_schedule=pick("lr_schedule", ref.lr_schedule),
        weight_decay=float(pick("weight_decay", ref.weight_decay)),
        momentum=float(pick("momentum", ref.momentum)),
        model_dir=v.get("model_dir") or default_model_dir(dataset, arch, method,
                                                          pick("use_dac", True)),
        resume=bool(pick("resume", False)), seed=int(pick("seed", 0)),
        mixed_precision=pick("mixed_precision", "float32"),
        jit_compile=bool(pick("jit_compile", False)), strategy=pick("strategy", "mirrored"),
        cpu_replicas=int(pick("cpu_replicas", 1)),
        eval_examples=int(pick("eval_examples", 0)),
        eval_batch_size=int(pick("eval_batch_size", 256)),
        max_steps_per_epoch=int(pick("max_steps_per_epoch", 0)),
        report=bool(pick("report", True)), verbose=int(pick("verbose", 1)))
    validate(config)
    return config


def default_model_dir(dataset, arch, method, use_dac):
    name = dataset.split(":")[0]
    return os.path.join("runs", f"{name}_{arch}_{method}{'_dac' if use_dac else ''}")


def validate(config):
    """Range checks; ConfigError names the flag and the valid range."""
    checks = [
        ("epochs", config.epochs >= 1, ">= 1"),
        ("batch_size", config.batch_size >= 1, ">= 1"),
        ("lr", config.lr > 0, "> 0"),
        ("weight_decay", config.weight_decay >= 0, ">= 0"),
        ("momentum", 0 <= config.momentum < 1, "in [0, 1)"),
        ("epsilon", 0 <= config.epsilon * 255 <= 255, "in [0, 255] (pixel units /255)"),
        ("step_size", 0 <= config.step_size * 255 <= 255, "in [0, 255] (pixel units /255)"),
        ("num_steps", config.num_steps >= 0, ">= 0"),
        ("ac_step", config.ac_step >= 0, ">= 0"),
        ("val_size", config.val_size >= 0, ">= 0"),
        ("pad", config.pad >= 0, ">= 0"),
        ("eval_examples", config.eval_examples >= 0, ">= 0 (0: all)"),
        ("eval_batch_size", config.eval_batch_size >= 1, ">= 1"),
        ("cpu_replicas", config.cpu_replicas >= 1, ">= 1"),
        ("max_steps_per_epoch", config.max_steps_per_epoch >= 0, ">= 0 (0: no cap)"),
    ]
    if config.beta is not None:
        checks.append(("beta", config.beta >= 0, ">= 0"))
    for name, ok, valid in checks:
        if not ok:
            raise ConfigError(f"--{name}={getattr(config, name)!r} is not valid; it must "
                              f"be {valid}.")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy={config.strategy!r} is not valid; use one of "
                          f"{', '.join(STRATEGIES)}.")
    if config.mixed_precision not in PRECISIONS:
        raise ConfigError(f"--mixed_precision={config.mixed_precision!r} is not valid; use "
                          f"one of {', '.join(PRECISIONS)}.")


def from_flags(flag_values):
    """Reads the defined flags once into a `TrainConfig`."""
    names = [name for name in flag_values if name in _FLAG_NAMES]
    return resolve({name: flag_values[name].value for name in names})


_FLAG_NAMES = (
    "dataset", "data_dir", "val_size", "augment", "pad", "arch", "depth", "widen_factor",
    "normalization", "method", "use_dac", "ac_step", "ac_measure", "epsilon", "step_size",
    "num_steps", "norm", "beta", "random_start", "epochs", "batch_size", "lr",
    "lr_schedule", "weight_decay", "momentum", "model_dir", "resume", "seed",
    "mixed_precision", "jit_compile", "strategy", "cpu_replicas", "eval_examples", "eval_batch_size",
    "max_steps_per_epoch", "report", "verbose")


def flagfile_text(config):
    """The resolved run as an absl flagfile: `--flagfile=model_dir/flags.cfg` reruns it."""
    lines = ["# Resolved flags of this run: python -m dac_tf.train --flagfile=THIS_FILE"]
    values = config.to_json_dict()
    values.update(config.arch_kwargs)
    values["epsilon"] = config.epsilon * 255
    values["step_size"] = config.step_size * 255
    for name in _FLAG_NAMES:
        value = values.get(name)
        if name == "resume" or value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        else:
            lines.append(f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}")
    return "\n".join(lines) + "\n"


def differing_keys(saved, config):
    """Keys whose values differ between a saved config.json and `config` (resumable ones
    excluded)."""
    current = json.loads(json.dumps(config.to_json_dict()))

    def same(a, b):
        # 7.905 / 255 and 0.031 are the same budget; compare floats to 1e-9 relative.
        if isinstance(a, float) or isinstance(b, float):
            return (a is not None and b is not None
                    and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12))
        return a == b

    return sorted(k for k in current if k not in TrainConfig.RESUMABLE_KEYS
                  and not same(saved.get(k), current.get(k)))
