"""The training configuration: one dataclass that defines the flags, the defaults and the
record of a run.

Every `flagdefs.flag` field of `TrainConfig` is a flag of `python -m dac_tf.train` with
the same name (`dac_tf.flagdefs` generates them); its default, help text, group in
`--help`, unit, and whether `--resume` may change it are stated once, on the field.
`resolve` turns raw flag values into a validated config, `flagfile_text` writes the run
back as a flagfile. Library code never reads `FLAGS`; `TrainConfig` is what
`dac_tf.training.train_and_evaluate` takes.

Every flag is optional. A field whose default is None is resolved by `resolve`:
method-dependent values (epsilon, lr, epochs, ...) to the reference code's value for
`--method` (`objectives.DEFAULTS`, the one table; each such field names its entry and
its help text is generated from it), the selection attack to `--select_protocol`'s
preset, the others as their help says (the augmentation and normalisation also depend
on the dataset). So the paper's setting is the default and each config file only
states what it pins.

Units: `--epsilon`, `--step_size`, `--select_epsilon` and `--select_step_size` are in
pixel units out of 255, as the field writes them (`--epsilon=8` is 8/255); the config
holds [0, 1] units (`flagdefs.PIXEL_RADIUS`, `protocol.from_pixels`).
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
from dac_tf import flagdefs
from dac_tf import models
from dac_tf import objectives
from dac_tf import protocol
from dac_tf import schedules

STRATEGIES = ("mirrored", "one_device", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# The input normalisation inside the model: the names `models.build` takes.
NORMALIZATIONS = ("none", "cifar10")
# Datasets on which a method whose reference normalises uses CIFAR-10's statistics.
_NORMALIZED_DATASETS = ("cifar10", "cifar100")
GROUPS = ("data", "model", "method", "optimization", "selection", "run")

# What --resume may do with a key whose value differs from the run's config.json.
IGNORED = flagdefs.IGNORED          # never part of the run's identity (where/how it runs)
MAY_CHANGE = flagdefs.MAY_CHANGE    # may change with --resume (length of the run, speed)
RESUMABLE_MARK = flagdefs.RESUMABLE_MARK   # in the --help text of every MAY_CHANGE flag

# Field metadata: the `objectives.MethodDefaults` attribute an unset (None) flag takes.
METHOD_DEFAULT = "dac_tf.method_default"
_PROGRAM = "dac_tf.train"


class ConfigError(errors.UserError):
    """A bad flag value or combination (the message names the flag and what is valid)."""


def _flag(default, help_text, *, group, **kwargs):
    assert group in GROUPS, group
    return flagdefs.flag(default, help_text, group=group, **kwargs)


def _shown(value, unit):
    if unit is not None:
        return f"{protocol.to_pixels(value):.4g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_values_text(attribute, unit=None):
    """Each method's reference value of `attribute` (`objectives.DEFAULTS`), as a help
    text writes it: "AT 0.1, TRADES 0.1, MART 0.01" (pixel levels for a radius or step)."""
    return ", ".join(f"{method.upper()} {_shown(value, unit)}"
                     for method, value in ((m, getattr(objectives.DEFAULTS[m], attribute))
                                           for m in objectives.METHODS)
                     if value is not None)


def _method_flag(attribute, help_text, *, group, also="", **kwargs):
    """A flag that is unset (None) by default and resolves to `--method`'s reference
    value `objectives.DEFAULTS[method].<attribute>`; the help lists those values."""
    text = (f"{help_text} Default: the reference's for --method "
            f"({method_values_text(attribute, kwargs.get('unit'))}){also}.")
    return _flag(None, text, group=group, metadata={METHOD_DEFAULT: attribute}, **kwargs)


def _derived(default, *, resume=None):
    """A field resolved from flags (not a flag itself); recorded in config.json."""
    return dataclasses.field(default=default, metadata=dict(resume=resume))


_NORMALIZING_METHODS = "/".join(m.upper() for m in objectives.METHODS
                                if objectives.DEFAULTS[m].normalize_inputs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. `resolve` builds it from flag values with no None left for a
    method- or dataset-dependent value; the field defaults are the flags' (None: unset).
    """

    # --- data
    dataset: str = _flag("cifar10", f"One of {', '.join(data.DATASETS)}, or npz:PATH "
                         "(arrays x_train, y_train, x_test, y_test).", group="data")
    data_dir: str | None = _flag(None, "tfds data directory (pre-downloaded datasets).",
                                 group="data", resume=IGNORED)
    val_size: int = _flag(0, "Held-out validation examples taken from the training set "
                          "for model selection. 0 selects on the test set, as the "
                          "reference did; the robust-overfitting code base holds out "
                          "1000.", group="data")
    augment: str | None = _method_flag("augmentation_padding", "Augmentation of the "
                                       "training images.", also="; none on digits",
                                       group="data", choices=data.AUGMENTATIONS)
    pad: int = _flag(4, "Padding (pixels) before the random crop.", group="data")
    # --- model
    arch: str = _flag("preact_resnet18", "Architecture.", group="model",
                      choices=models.ARCHITECTURES)
    depth: int | None = _flag(None, "WideResNet depth (--arch=wide_resnet).", group="model")
    widen_factor: int | None = _flag(None, "WideResNet widen factor (--arch=wide_resnet).",
                                     group="model")
    normalization: str | None = _flag(
        None, "Input normalisation inside the model: cifar10 (CIFAR-10 per-channel "
        "mean/std) or none. Default: the reference's: cifar10 for "
        f"{_NORMALIZING_METHODS} on {' and '.join(_NORMALIZED_DATASETS)}, none otherwise.",
        group="model", choices=NORMALIZATIONS)
    # --- method
    method: str = _flag("at", "Base robust method.", group="method",
                        choices=objectives.METHODS)
    use_dac: bool = _flag(True, "Add the DAC step (False: the plain baseline).",
                          group="method")
    ac_step: float | None = _method_flag("ac_step", "AC loss weight.", group="method")
    ac_measure: str = _flag("std", "std: reference code (unbiased std); var: the paper's "
                            "Definition 1.", group="method", choices=certainty.MEASURES)
    epsilon: float | None = _method_flag("epsilon", "Training attack radius.",
                                         group="method", unit=flagdefs.PIXEL_RADIUS)
    step_size: float | None = _method_flag("step_size", "Training attack step.",
                                           group="method", unit=flagdefs.PIXEL_STEP)
    num_steps: int | None = _method_flag("num_steps", "Training attack steps.",
                                         group="method")
    norm: str = _flag("linf", "Threat model.", group="method", choices=attacks.NORMS)
    beta: float | None = _method_flag("beta", "TRADES/MART regulariser weight; not for AT.",
                                      group="method")
    random_start: bool = _flag(True, "Random attack start (False: deterministic).",
                               group="method")
    reference_bn_updates: bool = _flag(
        False, "Make the reference code's extra train-mode forward passes that only move "
        "BatchNorm statistics (AT: the attack's final forward and the clean forward after "
        "the update; TRADES: the discarded trades_loss passes of the AC step). Set in "
        "every paper config.", group="method")
    attack_start: str | None = _derived(None)
    attack_training: bool | None = _derived(None)
    # --- optimisation
    epochs: int | None = _method_flag("epochs", "Epochs.", group="optimization",
                                      resume=MAY_CHANGE)
    batch_size: int | None = _method_flag("batch_size", "Global batch size, split over "
                                          "replicas.", group="optimization")
    lr: float | None = _method_flag("learning_rate", "Learning rate.", group="optimization")
    lr_schedule: str | None = _method_flag("lr_schedule", "Learning-rate schedule.",
                                           group="optimization", choices=schedules.SCHEDULES)
    weight_decay: float | None = _method_flag("weight_decay", "Coupled L2 (PyTorch SGD's "
                                              "weight_decay).", group="optimization")
    momentum: float | None = _method_flag("momentum", "SGD momentum (PyTorch convention).",
                                          group="optimization")
    # --- model selection (the per-epoch attacked evaluation that picks `best`)
    select_protocol: str = _flag(
        "at", "Selection attack preset: " + "; ".join(
            f"{k}: {p.description}" for k, p in protocol.SELECTION_PROTOCOLS.items()) + ".",
        group="selection", choices=tuple(protocol.SELECTION_PROTOCOLS))
    select_epsilon: float | None = _flag(
        None, "Selection attack radius (default: the preset's).", group="selection",
        unit=flagdefs.PIXEL_RADIUS)
    select_step_size: float | None = _flag(
        None, "Selection attack step (default: the preset's).", group="selection",
        unit=flagdefs.PIXEL_STEP)
    select_steps: int | None = _flag(None, "Selection attack steps (default: the "
                                     "preset's).", group="selection")
    select_start: str | None = _flag(None, "Selection attack start (default: the "
                                     "preset's).", group="selection", choices=attacks.STARTS)
    eval_examples: int = _flag(0, "Examples of the per-epoch attacked evaluation, the first "
                               "N of the split (0: the whole split, as the reference). The "
                               "split is the validation split (--val_size > 0), else the "
                               "test split.", group="selection", resume=MAY_CHANGE)
    eval_batch_size: int = _flag(256, "Batch size of the per-epoch evaluation.",
                                 group="selection", resume=IGNORED)
    # --- run
    model_dir: str | None = _flag(None, "Where the run is written; default "
                                  "runs/<dataset>_<arch>_<method>[_dac].", group="run",
                                  resume=IGNORED)
    resume: bool = _flag(False, "Continue the run in --model_dir from its last epoch, "
                         f"allowing the flags marked {RESUMABLE_MARK} to change (never "
                         "the learning rate of a planned epoch: --lr_schedule="
                         "piecewise_at and cosine keep --epochs, non-constant schedules "
                         "their batches per epoch). Flags of where and how it runs "
                         "(--data_dir, --strategy, --verbose, ...) may always differ.",
                         group="run", resume=IGNORED)
    seed: int = _flag(0, "Seed of initialisation, data order, augmentation, attacks.",
                      group="run")
    mixed_precision: str = _flag("float32", "Compute dtype policy.", group="run",
                                 choices=PRECISIONS)
    jit_compile: bool = _flag(False, "Compile the train step with XLA.", group="run",
                              resume=MAY_CHANGE)
    strategy: str = _flag("mirrored", "mirrored: all visible GPUs (one device or the CPU "
                          "when there is one or none); one_device; multi_worker: "
                          "MultiWorkerMirroredStrategy from TF_CONFIG.", group="run",
                          choices=STRATEGIES, resume=IGNORED)
    cluster_timeout: float = _flag(
        600.0, "With --strategy=multi_worker: seconds to wait for the other tasks to "
        "start, and for any collective step; then the task stops with exit code 138 "
        "(retry).", group="run", resume=IGNORED)
    cpu_replicas: int = _flag(1, "With --strategy=mirrored and no GPU: split the CPU into "
                              "this many replicas (testing distribution).", group="run",
                              resume=IGNORED)
    max_steps_per_epoch: int = _flag(0, "Cap on batches per epoch (0: all; to try a paper "
                                     "config on small data).", group="run",
                                     resume=MAY_CHANGE)
    report: bool = _flag(True, "Write the plots (dac_tf.report) at the end.", group="run",
                         resume=IGNORED)
    deterministic: bool = _flag(False, "tf.config.experimental.enable_op_determinism(): "
                                "bit-exact reruns on GPU, at some speed cost.", group="run",
                                resume=IGNORED)
    verbose: int = _flag(1, "0: one summary line per epoch; 1: also progress bars over the "
                         "training and evaluation batches.", group="run", resume=IGNORED)

    @property
    def arch_kwargs(self):
        """Extra `models.build` arguments (WideResNet depth and width)."""
        return {k: getattr(self, k) for k in ("depth", "widen_factor")
                if getattr(self, k) is not None}

    def to_json_dict(self):
        record = dataclasses.asdict(self)
        record["arch_kwargs"] = self.arch_kwargs   # what checkpoints.build_model reads
        return record


FLAG_FIELDS = flagdefs.flag_fields(TrainConfig)
FLAG_NAMES = flagdefs.flag_names(TrainConfig)


def _resume_rule(field):
    spec = flagdefs.spec_of(field)
    return spec.resume if spec is not None else field.metadata.get("resume")


RESUME_MAY_CHANGE = tuple(f.name for f in dataclasses.fields(TrainConfig)
                          if _resume_rule(f) == MAY_CHANGE)
RESUME_IGNORED = tuple(f.name for f in dataclasses.fields(TrainConfig)
                        if _resume_rule(f) == IGNORED)


def define_flags(flag_values=flags.FLAGS):
    """Defines the training flags on `flag_values` from `TrainConfig` (idempotent)."""
    flagdefs.define_flags(TrainConfig, flag_values, program=_PROGRAM)


def from_flags(flag_values):
    """Reads the defined flags once into a `TrainConfig`."""
    return resolve({name: flag_values[name].value for name in FLAG_NAMES
                    if name in flag_values})


def _check_finite(values):
    for field in FLAG_FIELDS:
        value = values.get(field.name)
        if (flagdefs.flag_type(TrainConfig, field)[0] == "float" and value is not None
                and not math.isfinite(float(value))):
            raise ConfigError(f"--{field.name}={value} is not valid; it must be a finite "
                              "number.")


_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


def _field_value(field, value):
    """A given flag value in the field's type and units (pixel levels -> [0, 1])."""
    try:
        value = flagdefs.to_field(TrainConfig, field.name, value)
    except flagdefs.FlagError as e:
        raise ConfigError(str(e)) from None
    return _CASTS[flagdefs.flag_type(TrainConfig, field)[0]](value)


def resolve(values):
    """Turns raw flag values (a dict; None or "" = unset) into a validated `TrainConfig`.

    An unset flag takes its field's default; a None default is resolved as the field's
    help says (the method's reference value, `objectives.DEFAULTS`; the selection
    preset's; the dataset's).

    Args:
      values: mapping flag name -> value, e.g. `{k: FLAGS[k].value for k in FLAG_NAMES}`.
        Radii and steps in pixel units /255.

    Returns:
      TrainConfig.

    Raises:
      ConfigError: a value or combination that is not valid, naming the flag.
    """
    unknown = sorted(set(values) - set(FLAG_NAMES))
    if unknown:
        raise ConfigError(f"unknown training flag(s) {', '.join('--' + k for k in unknown)}.")
    given = {k: v for k, v in values.items() if v is not None and v != ""}
    _check_finite(given)
    fields = {f.name: f for f in FLAG_FIELDS}
    v = {name: field.default for name, field in fields.items()}
    v.update(given)
    if v["method"] not in objectives.METHODS:
        raise ConfigError(f"--method={v['method']!r} is not valid; use one of "
                          f"{', '.join(objectives.METHODS)}.")
    dataset = v["dataset"]
    if dataset not in data.DATASETS and not dataset.startswith("npz:"):
        raise ConfigError(f"--dataset={dataset!r} is not valid; use one of "
                          f"{', '.join(data.DATASETS)} or npz:PATH.")
    if v["method"] == "at" and "beta" in given:
        raise ConfigError("--beta is a TRADES/MART parameter; --method=at does not use it.")
    if v["use_dac"] is False and "ac_step" in given:
        raise ConfigError("--ac_step has no effect with --nouse_dac; drop one of them.")
    if v["norm"] == "l2" and ("epsilon" not in given or "step_size" not in given):
        raise ConfigError("--norm=l2 needs explicit --epsilon and --step_size (the "
                          "defaults are L-inf budgets).")
    for key in ("depth", "widen_factor"):
        if key in given and v["arch"] != "wide_resnet":
            raise ConfigError(f"--{key} applies to --arch=wide_resnet only (got "
                              f"--arch={v['arch']}).")
    if v["select_protocol"] not in protocol.SELECTION_PROTOCOLS:
        raise ConfigError(f"--select_protocol={v['select_protocol']!r} is not valid; use "
                          f"one of {', '.join(protocol.SELECTION_PROTOCOLS)}.")
    v.update({name: _field_value(fields[name], value) for name, value in given.items()})

    ref = objectives.DEFAULTS[v["method"]]
    if v["augment"] is None and dataset == "digits":
        v["augment"] = "none"
    for field in FLAG_FIELDS:
        attribute = field.metadata.get(METHOD_DEFAULT)
        if attribute and v[field.name] is None:
            v[field.name] = getattr(ref, attribute)
    if v["normalization"] is None:
        v["normalization"] = ("cifar10" if ref.normalize_inputs
                              and dataset in _NORMALIZED_DATASETS else "none")
    if v["model_dir"] is None:
        v["model_dir"] = default_model_dir(dataset, v["arch"], v["method"], v["use_dac"])
    attack_start = ref.attack_start if v["random_start"] else "none"
    selection = protocol.selection_attack(
        v["select_protocol"], dataset=dataset, norm=v["norm"], epsilon=v["epsilon"],
        step_size=v["step_size"], num_steps=v["num_steps"], attack_start=attack_start,
        overrides=dict(epsilon=v["select_epsilon"], step_size=v["select_step_size"],
                       num_steps=v["select_steps"], start=v["select_start"]))
    v.update(select_epsilon=selection["epsilon"], select_step_size=selection["step_size"],
             select_steps=selection["num_steps"], select_start=selection["start"])
    config = TrainConfig(**v, attack_start=attack_start,
                         attack_training=ref.attack_training)
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
        choices = flagdefs.spec_of(field).choices
        value = getattr(config, field.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"--{field.name}={value!r} is not valid; use one of "
                              f"{', '.join(choices)}.")


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
        if flagdefs.spec_of(field).unit is not None:
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
