"""The training configuration: one dataclass that defines the flags, the defaults and the
record of a run.

Every field of `TrainConfig` whose metadata carries a flag kind is a flag of
`python -m dac_tf.train` with the same name; its help text, its group in `--help`, its
unit, and whether `--resume` may change it are stated once, next to the field.
`define_flags` builds the absl flags from the fields, `resolve` turns raw flag values into
a validated config, `flagfile_text` writes the run back as a flagfile. Library code never
reads `FLAGS`; `TrainConfig` is what `train.train_and_evaluate` takes.

Every flag is optional: an unset method-dependent value (epsilon, lr, epochs, ...)
resolves to the reference code's value for `--method` (`objectives.DEFAULTS`), so the
paper's setting is the default and each config file only states what it pins.

Units: `--epsilon`, `--step_size`, `--select_epsilon` and `--select_step_size` are in
pixel units out of 255, as the field writes them (`--epsilon=8` is 8/255); the config
holds [0, 1] units (`protocol.from_pixels`).
"""

import dataclasses
import json
import math
import os

from absl import flags

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import data
from dac_tf import errors
from dac_tf import models
from dac_tf import objectives
from dac_tf import protocol
from dac_tf import schedules

STRATEGIES = ("mirrored", "one_device", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
NORMALIZATIONS = ("auto", "none", "cifar10")
GROUPS = ("data", "model", "method", "optimization", "selection", "run")

# The default method's reference values: the dataclass defaults are AT's (the default
# --method); `resolve` takes every method's from `objectives.DEFAULTS`, the one table.
_AT = objectives.DEFAULTS["at"]
_AT_SELECTION = protocol.SELECTION_PROTOCOLS["at"]

# What --resume may do with a key whose value differs from the run's config.json.
IGNORED = "ignored"          # never part of the run's identity (where/how it runs)
MAY_CHANGE = "may_change"    # may change with --resume (length of the run, speed)
# Appended to the --help text of every MAY_CHANGE flag (`define_flags`).
RESUMABLE_MARK = "[resumable]"


class ConfigError(errors.UserError):
    """A bad flag value or combination (the message names the flag and what is valid)."""


def _flag(kind, default, help_text, *, group, choices=None, pixels=False, resume=None):
    """A `TrainConfig` field that is also a flag.

    Args:
      kind: "string", "integer", "float", "boolean" or "enum".
      default: the config's default; the flag's default is None (unset) when the value
        depends on the method or the dataset, which `help_text` then says.
      help_text: the flag's help.
      group: one of GROUPS (sections of --help and the README).
      choices: the valid values of an enum flag.
      pixels: the flag is in pixel units /255 and the field in [0, 1] units.
      resume: None (part of the run's identity), IGNORED or MAY_CHANGE.
    """
    assert group in GROUPS, group
    return dataclasses.field(default=default, metadata=dict(
        kind=kind, help=help_text, group=group, choices=choices, pixels=pixels,
        resume=resume))


def _derived(default, *, resume=None):
    """A field resolved from flags (not a flag itself); recorded in config.json."""
    return dataclasses.field(default=default, metadata=dict(kind=None, resume=resume))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A fully resolved training run (no None left for method-dependent values)."""

    # --- data
    dataset: str = _flag("string", "cifar10", f"One of {', '.join(data.DATASETS)}, or "
                         "npz:PATH (arrays x_train, y_train, x_test, y_test).", group="data")
    data_dir: str | None = _flag("string", None, "tfds data directory (pre-downloaded "
                                 "datasets).", group="data", resume=IGNORED)
    val_size: int = _flag("integer", 0, "Held-out validation examples taken from the "
                          "training set for model selection. 0 selects on the test set, as "
                          "the reference did; the robust-overfitting code base holds out "
                          "1000.", group="data")
    augment: str = _flag(
        "enum", _AT.augmentation_padding,
        "Augmentation; default per method: reflect (AT), zero (TRADES, MART); "
        "none for digits.",
        group="data", choices=data.AUGMENTATIONS)
    pad: int = _flag("integer", 4, "Padding (pixels) before the random crop.", group="data")
    # --- model
    arch: str = _flag("enum", "preact_resnet18", "Architecture.", group="model",
                      choices=models.ARCHITECTURES)
    depth: int | None = _flag("integer", None, "WideResNet depth (--arch=wide_resnet).",
                              group="model")
    widen_factor: int | None = _flag("integer", None, "WideResNet widen factor "
                                     "(--arch=wide_resnet).", group="model")
    normalization: str = _flag("enum", "cifar10", "Input normalisation inside the model; "
                               "auto: CIFAR-10 mean/std for AT on CIFAR (its reference "
                               "normalises), none otherwise.", group="model",
                               choices=NORMALIZATIONS)
    # --- method
    method: str = _flag("enum", "at", "Base robust method.", group="method",
                        choices=objectives.METHODS)
    use_dac: bool = _flag("boolean", True, "Add the DAC step (False: the plain baseline).",
                          group="method")
    ac_step: float = _flag("float", _AT.ac_step, "AC loss weight (reference: 0.3 AT/MART, 0.1 "
                           "TRADES).", group="method")
    ac_measure: str = _flag("enum", "std", "std: reference code (unbiased std); var: the "
                            "paper's Definition 1.", group="method", choices=certainty.MEASURES)
    epsilon: float = _flag("float", _AT.epsilon, "Training attack radius, pixel units /255 "
                           "(AT: 8; TRADES/MART: 7.905 = 0.031).", group="method", pixels=True)
    step_size: float = _flag("float", _AT.step_size, "Training attack step, pixel units /255 "
                             "(AT: 2; TRADES: 1.989 = 0.0078; MART: 1.785 = 0.007).",
                             group="method", pixels=True)
    num_steps: int = _flag("integer", _AT.num_steps, "Training attack steps (reference: 10).",
                           group="method")
    norm: str = _flag("enum", "linf", "Threat model.", group="method", choices=attacks.NORMS)
    beta: float | None = _flag("float", None, "TRADES/MART regulariser weight (6 / 5); not "
                               "for AT.", group="method")
    random_start: bool = _flag("boolean", True, "Random attack start (False: "
                               "deterministic).", group="method")
    reference_bn_updates: bool = _flag(
        "boolean", False, "Make the reference code's extra train-mode forward passes that "
        "only move BatchNorm statistics (AT: the attack's final forward and the clean "
        "forward after the update; TRADES: the discarded trades_loss passes of the AC "
        "step). Set in every paper config.", group="method")
    attack_start: str = _derived(_AT.attack_start)
    attack_training: bool = _derived(_AT.attack_training)
    # --- optimisation
    epochs: int = _flag(
        "integer", _AT.epochs,
        "Epochs (reference: AT 200, TRADES 76, MART 120).",
        group="optimization", resume=MAY_CHANGE)
    batch_size: int = _flag("integer", _AT.batch_size, "Global batch size, split over replicas "
                            "(reference: 128; MART 512).", group="optimization")
    lr: float = _flag("float", _AT.learning_rate, "Learning rate (reference: 0.1; MART 0.01).",
                      group="optimization")
    lr_schedule: str = _flag("enum", _AT.lr_schedule, "Default per method: piecewise_at "
                             "(AT), piecewise_trades (TRADES, MART).", group="optimization",
                             choices=schedules.SCHEDULES)
    weight_decay: float = _flag(
        "float", _AT.weight_decay,
        "Coupled L2 (reference: 5e-4 AT, 2e-4 TRADES, 3.5e-3 MART).",
        group="optimization")
    momentum: float = _flag("float", _AT.momentum, "SGD momentum (PyTorch convention).",
                            group="optimization")
    # --- model selection (the per-epoch attacked evaluation that picks `best`)
    select_protocol: str = _flag(
        "enum", "at", "Selection attack preset: " + "; ".join(
            f"{k}: {p.description}" for k, p in protocol.SELECTION_PROTOCOLS.items()) + ".",
        group="selection", choices=tuple(protocol.SELECTION_PROTOCOLS))
    select_epsilon: float = _flag(
        "float", protocol.BENCHMARK_LINF_EPSILON,
        "Selection attack radius, pixel units /255 (default: the preset's).",
        group="selection", pixels=True)
    select_step_size: float = _flag(
        "float", _AT_SELECTION.step_fraction * protocol.BENCHMARK_LINF_EPSILON,
        "Selection attack step, pixel units /255 (default: the preset's).",
        group="selection", pixels=True)
    select_steps: int = _flag(
        "integer", _AT_SELECTION.num_steps,
        "Selection attack steps (default: the preset's).",
        group="selection")
    select_start: str = _flag(
        "enum", _AT_SELECTION.start,
        "Selection attack start (default: the preset's).",
        group="selection", choices=attacks.STARTS)
    eval_examples: int = _flag("integer", 0, "Examples of the per-epoch attacked "
                               "evaluation, the first N of the split (0: the whole split, "
                               "as the reference). The split is the validation split "
                               "(--val_size > 0), else the test split.", group="selection",
                               resume=MAY_CHANGE)
    eval_batch_size: int = _flag("integer", 256, "Batch size of the per-epoch evaluation.",
                                 group="selection", resume=IGNORED)
    # --- run
    model_dir: str = _flag("string", "runs/default", "Where the run is written; default "
                           "runs/<dataset>_<arch>_<method>[_dac].", group="run",
                           resume=IGNORED)
    resume: bool = _flag("boolean", False, "Continue the run in --model_dir from its last "
                         f"epoch, allowing the flags marked {RESUMABLE_MARK} to change "
                         "(never the learning rate of a planned epoch: --lr_schedule="
                         "piecewise_at and cosine keep --epochs, non-constant schedules "
                         "their batches per epoch). Flags of where and how it runs "
                         "(--data_dir, --strategy, --verbose, ...) may always differ.",
                         group="run", resume=IGNORED)
    seed: int = _flag("integer", 0, "Seed of initialisation, data order, augmentation, "
                      "attacks.", group="run")
    mixed_precision: str = _flag("enum", "float32", "Compute dtype policy.", group="run",
                                 choices=PRECISIONS)
    jit_compile: bool = _flag("boolean", False, "Compile the train step with XLA.",
                              group="run", resume=MAY_CHANGE)
    strategy: str = _flag("enum", "mirrored", "mirrored: all visible GPUs (one device or "
                          "the CPU when there is one or none); one_device; multi_worker: "
                          "MultiWorkerMirroredStrategy from TF_CONFIG.", group="run",
                          choices=STRATEGIES, resume=IGNORED)
    cluster_timeout: float = _flag(
        "float", 600.0, "With --strategy=multi_worker: seconds to wait for the other tasks "
        "to start, and for any collective step; then the task stops with exit code 138 "
        "(retry).", group="run", resume=IGNORED)
    cpu_replicas: int = _flag("integer", 1, "With --strategy=mirrored and no GPU: split "
                              "the CPU into this many replicas (testing distribution).",
                              group="run", resume=IGNORED)
    max_steps_per_epoch: int = _flag("integer", 0, "Cap on batches per epoch (0: all; to "
                                     "try a paper config on small data).", group="run",
                                     resume=MAY_CHANGE)
    report: bool = _flag("boolean", True, "Write the plots (dac_tf.report) at the end.",
                         group="run", resume=IGNORED)
    deterministic: bool = _flag("boolean", False, "tf.config.experimental."
                                "enable_op_determinism(): bit-exact reruns on GPU, at some "
                                "speed cost.", group="run", resume=IGNORED)
    verbose: int = _flag("integer", 1, "0: one summary line per epoch; 1: also progress "
                         "bars over the training and evaluation batches.", group="run",
                         resume=IGNORED)

    @property
    def arch_kwargs(self):
        """Extra `models.build` arguments (WideResNet depth and width)."""
        return {k: getattr(self, k) for k in ("depth", "widen_factor")
                if getattr(self, k) is not None}

    def to_json_dict(self):
        record = dataclasses.asdict(self)
        record["arch_kwargs"] = self.arch_kwargs   # what checkpoints.build_model reads
        return record


FLAG_FIELDS = tuple(f for f in dataclasses.fields(TrainConfig) if f.metadata.get("kind"))
FLAG_NAMES = tuple(f.name for f in FLAG_FIELDS)
RESUME_MAY_CHANGE = tuple(f.name for f in dataclasses.fields(TrainConfig)
                          if f.metadata.get("resume") == MAY_CHANGE)
RESUME_IGNORED = tuple(f.name for f in dataclasses.fields(TrainConfig)
                        if f.metadata.get("resume") == IGNORED)


def define_flags(flag_values=flags.FLAGS):
    """Defines the training flags on `flag_values` (idempotent).

    Every flag defaults to None (unset) unless its value is the same for every method and
    dataset: `resolve` fills in the reference's values, so `--helpfull` shows None where
    the default depends on --method.
    """
    if "method" in flag_values:
        return
    for field in FLAG_FIELDS:
        meta = field.metadata
        default = _flag_default(field)
        kwargs = dict(flag_values=flag_values, module_name=f"dac_tf.train ({meta['group']})")
        help_text = meta["help"]
        if meta["resume"] == MAY_CHANGE:
            help_text += f" {RESUMABLE_MARK}"
        if meta["kind"] == "enum":
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), help_text,
                              **kwargs)
        else:
            define = getattr(flags, f"DEFINE_{meta['kind']}")
            define(field.name, default, help_text, **kwargs)


# Flags whose default is the same for every method and dataset; every other flag is unset
# (None) until `resolve` picks the method's or dataset's value.
_FIXED_DEFAULT_FLAGS = (
    "dataset", "val_size", "pad", "arch", "method", "use_dac", "ac_measure", "norm",
    "random_start", "reference_bn_updates", "select_protocol", "eval_examples",
    "cluster_timeout",
    "eval_batch_size", "resume", "seed", "mixed_precision", "jit_compile", "strategy",
    "cpu_replicas", "max_steps_per_epoch", "report", "deterministic", "verbose", "momentum")


def _flag_default(field):
    if field.name == "normalization":
        return "auto"
    return field.default if field.name in _FIXED_DEFAULT_FLAGS else None


def from_flags(flag_values):
    """Reads the defined flags once into a `TrainConfig`."""
    return resolve({name: flag_values[name].value for name in FLAG_NAMES
                    if name in flag_values})


def _check_finite(v):
    for field in FLAG_FIELDS:
        value = v.get(field.name)
        if field.metadata["kind"] == "float" and value is not None and not math.isfinite(
                float(value)):
            raise ConfigError(f"--{field.name}={value} is not valid; it must be a finite "
                              "number.")


def resolve(values):
    """Turns raw flag values (a dict; None = unset) into a validated `TrainConfig`.

    Args:
      values: mapping flag name -> value, e.g. `{k: FLAGS[k].value for k in FLAG_NAMES}`.
        Radii and steps in pixel units /255.

    Returns:
      TrainConfig.

    Raises:
      ConfigError: a value or combination that is not valid, naming the flag.
    """
    v = dict(values)
    unknown = sorted(set(v) - set(FLAG_NAMES))
    if unknown:
        raise ConfigError(f"unknown training flag(s) {', '.join('--' + k for k in unknown)}.")
    _check_finite(v)
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
    if v.get("use_dac") is False and v.get("ac_step") is not None:
        raise ConfigError("--ac_step has no effect with --nouse_dac; drop one of them.")
    if norm == "l2" and (v.get("epsilon") is None or v.get("step_size") is None):
        raise ConfigError("--norm=l2 needs explicit --epsilon and --step_size (the "
                          "defaults are L-inf budgets).")
    arch = v.get("arch") or "preact_resnet18"
    for key in ("depth", "widen_factor"):
        if v.get(key) is not None and arch != "wide_resnet":
            raise ConfigError(f"--{key} applies to --arch=wide_resnet only (got "
                              f"--arch={arch}).")
    protocol_name = v.get("select_protocol") or "at"
    if protocol_name not in protocol.SELECTION_PROTOCOLS:
        raise ConfigError(f"--select_protocol={protocol_name!r} is not valid; use one of "
                          f"{', '.join(protocol.SELECTION_PROTOCOLS)}.")

    def pick(key, default):
        return default if v.get(key) is None else v[key]

    def pixels(key, default):
        try:
            value = protocol.from_pixels(key, v.get(key), radius="epsilon" in key)
        except protocol.UnitError as e:
            raise ConfigError(str(e)) from None
        return default if value is None else value

    augment = v.get("augment") or ("none" if dataset == "digits" else ref.augmentation_padding)
    normalization = v.get("normalization") or "auto"
    if normalization == "auto":
        normalization = ("cifar10" if ref.normalize_inputs
                         and dataset in ("cifar10", "cifar100") else "none")
    use_dac = bool(pick("use_dac", True))
    random_start = bool(pick("random_start", True))
    epsilon = pixels("epsilon", ref.epsilon)
    step_size = pixels("step_size", ref.step_size)
    num_steps = int(pick("num_steps", ref.num_steps))
    attack_start = ref.attack_start if random_start else "none"
    selection = protocol.selection_attack(
        protocol_name, dataset=dataset, norm=norm, epsilon=epsilon, step_size=step_size,
        num_steps=num_steps, attack_start=attack_start,
        overrides=dict(epsilon=pixels("select_epsilon", None),
                       step_size=pixels("select_step_size", None),
                       num_steps=v.get("select_steps"), start=v.get("select_start")))

    config = TrainConfig(
        dataset=dataset, data_dir=v.get("data_dir"), val_size=int(pick("val_size", 0)),
        augment=augment, pad=int(pick("pad", 4)), arch=arch, depth=v.get("depth"),
        widen_factor=v.get("widen_factor"), normalization=normalization, method=method,
        use_dac=use_dac, ac_step=float(pick("ac_step", ref.ac_step)),
        ac_measure=pick("ac_measure", "std"), epsilon=epsilon, step_size=step_size,
        num_steps=num_steps, norm=norm,
        beta=None if method == "at" else float(pick("beta", ref.beta)),
        random_start=random_start,
        reference_bn_updates=bool(pick("reference_bn_updates", False)),
        attack_start=attack_start, attack_training=ref.attack_training,
        epochs=int(pick("epochs", ref.epochs)),
        batch_size=int(pick("batch_size", ref.batch_size)),
        lr=float(pick("lr", ref.learning_rate)),
        lr_schedule=pick("lr_schedule", ref.lr_schedule),
        weight_decay=float(pick("weight_decay", ref.weight_decay)),
        momentum=float(pick("momentum", ref.momentum)),
        select_protocol=protocol_name, select_epsilon=selection["epsilon"],
        select_step_size=selection["step_size"], select_steps=selection["num_steps"],
        select_start=selection["start"],
        eval_examples=int(pick("eval_examples", 0)),
        eval_batch_size=int(pick("eval_batch_size", 256)),
        model_dir=v.get("model_dir") or default_model_dir(dataset, arch, method, use_dac),
        resume=bool(pick("resume", False)), seed=int(pick("seed", 0)),
        mixed_precision=pick("mixed_precision", "float32"),
        jit_compile=bool(pick("jit_compile", False)), strategy=pick("strategy", "mirrored"),
        cpu_replicas=int(pick("cpu_replicas", 1)),
        cluster_timeout=float(pick("cluster_timeout", 600.0)),
        max_steps_per_epoch=int(pick("max_steps_per_epoch", 0)),
        report=bool(pick("report", True)), deterministic=bool(pick("deterministic", False)),
        verbose=int(pick("verbose", 1)))
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
        ("num_steps", config.num_steps >= 0, ">= 0"),
        ("select_steps", config.select_steps >= 0, ">= 0"),
        ("ac_step", config.ac_step >= 0, ">= 0"),
        ("val_size", config.val_size >= 0, ">= 0"),
        ("pad", config.pad >= 0, ">= 0"),
        ("eval_examples", config.eval_examples >= 0, ">= 0 (0: all)"),
        ("eval_batch_size", config.eval_batch_size >= 1, ">= 1"),
        ("cpu_replicas", config.cpu_replicas >= 1, ">= 1"),
        ("cluster_timeout", config.cluster_timeout > 0, "> 0 (seconds)"),
        ("max_steps_per_epoch", config.max_steps_per_epoch >= 0, ">= 0 (0: no cap)"),
        # Keras and NumPy seed their generators with 32-bit values.
        ("seed", 0 <= config.seed < 2**31, "in [0, 2147483647]"),
    ]
    if config.depth is not None and (config.depth < 10 or (config.depth - 4) % 6):
        raise ConfigError(f"--depth={config.depth} is not valid; a WideResNet needs depth "
                          "= 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...).")
    if config.widen_factor is not None and config.widen_factor < 1:
        raise ConfigError(f"--widen_factor={config.widen_factor} is not valid; it must be "
                          ">= 1.")
    if config.beta is not None:
        checks.append(("beta", config.beta >= 0, ">= 0"))
    for name, ok, valid in checks:
        if not ok:
            raise ConfigError(f"--{name}={getattr(config, name)!r} is not valid; it must "
                              f"be {valid}.")
    for field in FLAG_FIELDS:
        if field.metadata["kind"] == "enum":
            value = getattr(config, field.name)
            if value not in field.metadata["choices"]:
                raise ConfigError(f"--{field.name}={value!r} is not valid; use one of "
                                  f"{', '.join(field.metadata['choices'])}.")


def flagfile_text(config):
    """The resolved run as an absl flagfile: `--flagfile=model_dir/flags.cfg` reruns it.

    `--model_dir` is not written: `python -m dac_tf.train --flagfile=RUN/flags.cfg` runs
    in RUN wherever RUN has been moved or copied to (`train.main` sees to it).
    """
    lines = ["# Resolved flags of this run. Rerun or continue it where this file is:",
             "#   python -m dac_tf.train --flagfile=THIS_FILE"]
    for field in FLAG_FIELDS:
        value = getattr(config, field.name)
        if field.name in ("resume", "model_dir") or value is None:
            continue
        if field.metadata["pixels"]:
            value = protocol.to_pixels(value)
        if isinstance(value, bool):
            lines.append(f"--{field.name}" if value else f"--no{field.name}")
        elif isinstance(value, float):
            lines.append(f"--{field.name}={value!r}")
        else:
            lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"


def differing_keys(saved, config):
    """Keys whose values differ between a saved config.json and `config` (keys that never
    matter for resuming excluded; MAY_CHANGE keys included)."""
    current = json.loads(json.dumps(config.to_json_dict()))

    def same(a, b):
        # 7.905 / 255 and 0.031 are the same budget; compare floats to 1e-9 relative.
        if isinstance(a, float) or isinstance(b, float):
            return (a is not None and b is not None
                    and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12))
        return a == b

    return sorted(k for k in current if k not in RESUME_IGNORED
                  and not same(saved.get(k), current.get(k)))
