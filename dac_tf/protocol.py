"""How robustness is measured: the evaluation radius, the selection attack, pixel units.

One place for the protocol facts every tool shares, so training, evaluation and the
report cannot drift apart:

- **Evaluation radius.** The paper's table, RobustBench and the DAC reference's
  `eval_autoattack.py` evaluate CIFAR-10 at L-inf eps = 8/255 for every method, although
  TRADES and MART train at 0.031 (= 7.905/255). On the benchmark datasets (CIFAR-10,
  CIFAR-100, SVHN) the L-inf evaluation radius is therefore 8/255 whatever the run trained
  with; on other data (digits, npz) and under L2 there is no benchmark radius and the
  run's own is used.
- **Selection attack** (which epoch is `best`). The references differ: the AT code base
  (robust-overfitting, `train_cifar.py`, inherited by the DAC reference
  `dac_at_cifar10.py`) attacks the test set after every epoch with PGD-10, step 2/255,
  a uniform random start and BatchNorm in inference mode; the MART script
  (`dac_mart_cifar10.py`) uses PGD-20 with step 0.003 at its training radius; the TRADES
  script evaluates only clean accuracy. dac_tf uses the AT protocol for every method by
  default (`SELECTION_PROTOCOLS["at"]`), at the evaluation radius with the step eps/4
  (2/255 at 8/255).
- **Units.** Every CLI takes radii and step sizes in pixel units out of 255, as the field
  writes them (`--epsilon=8` is 8/255, `from_pixels`); the library takes [0, 1] units,
  the Keras and CleverHans habit, and every library entry that takes a radius or a step
  (`DACModel`, `RobustValidation`, `attacks.pgd`, the evaluation API, the export
  metadata) refuses a value above 1, which on [0, 1] images can only be a value out of
  255 given by mistake (`unit_value`: "epsilon=8 looks like x/255: pass 8/255").
"""

import dataclasses
import math
import numbers

import numpy as np

from dac_tf import errors

# Datasets with a published L-inf benchmark radius (the tfds-backed ones).
BENCHMARK_DATASETS = ("cifar10", "cifar100", "svhn")
# CIFAR-10 / CIFAR-100 / SVHN L-inf radius of the paper, RobustBench and eval_autoattack.py.
BENCHMARK_LINF_EPSILON_255 = 8.0
BENCHMARK_LINF_EPSILON = BENCHMARK_LINF_EPSILON_255 / 255


class UnitError(errors.UserError):
    """A radius or step size that is not a valid pixel-unit value (names the flag)."""


def from_pixels(flag, value, *, radius=True):
    """Converts a flag value in pixel units out of 255 to [0, 1] units.

    Args:
      flag: the flag name, for the message (without dashes).
      value: the value as given (None passes through).
      radius: True for a radius (epsilon). A radius below one pixel level (0 < v < 1) is
        refused, not reinterpreted: it is almost surely a [0, 1]-unit value given by
        mistake (`--epsilon=0.031`), and treating it either way silently would be a
        guess. Step sizes may be below one level (MART's 0.003 is 0.765/255).

    Returns:
      value / 255, or None.

    Raises:
      UnitError: not finite, negative, above 255, or a sub-level radius.
    """
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= 255:
        raise UnitError(f"--{flag}={value:g} is not valid; it must be in [0, 255] (pixel "
                        "units /255: 8 means 8/255).")
    if radius and 0 < value < 1:
        raise UnitError(f"--{flag}={value:g} is in pixel units /255 (8 means 8/255); for "
                        f"{value:g} in [0, 1] units pass --{flag}={value * 255:g}.")
    return value / 255


def unit_value(name, value, *, allow_none=False):
    """Checks a radius or step size given to the library in [0, 1] units.

    The library's one unit rule (the CLIs' is `from_pixels`). Images are in [0, 1], so an
    L-inf radius or step above 1 moves every pixel anywhere in the box: such a value can
    only be one written out of 255 by mistake, and is refused with the value to pass.
    The same bound holds under L2 (the CLIs cap both norms at 255/255 too).

    Only Python and numpy numbers are checked: a tensor passes through unchanged, so
    the in-graph callers (`DACModel.train_step`, attacks inside `tf.function`) add no
    host synchronisation.

    Args:
      name: the argument's name, for the message ("epsilon", "step_size").
      value: the value as given.
      allow_none: let None through (an argument whose default is resolved later).

    Returns:
      float(value) for a number; a tensor or None unchanged.

    Raises:
      UnitError: not a number, not finite, negative, or above 1.
    """
    if value is None and allow_none:
        return None
    if tf_tensor(value):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UnitError(f"{name}={value!r} is not valid; it must be a number in [0, 1] "
                        "(pixel units on [0, 1] images: 8/255 for 8 pixel levels).")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise UnitError(f"{name}={number:g} is not valid; it must be a finite number in "
                        "[0, 1] (pixel units on [0, 1] images: 8/255 for 8 levels).")
    if number > 1:
        hint = (f"pass {name}={number:g}/255" if number <= 255 else
                "give it in [0, 1] units (8/255 for 8 pixel levels)")
        raise UnitError(f"{name}={number:g} looks like x/255: images are in [0, 1], so "
                        f"radii and steps are too; {hint}.")
    return number


def tf_tensor(value):
    """True for a TensorFlow tensor or variable (checked without importing TensorFlow)."""
    module = type(value).__module__ or ""
    return module.startswith(("tensorflow", "keras")) and not isinstance(value, numbers.Real)


def to_pixels(value):
    """[0, 1] units -> pixel units out of 255 (None passes through)."""
    return None if value is None else float(value) * 255


def pixels_text(value):
    """A [0, 1]-unit radius as the field writes it: "8/255", "7.905/255 (0.031)"."""
    pixels = float(value) * 255
    shown = f"{pixels:.6g}"
    if abs(pixels - round(pixels)) < 1e-6:
        return f"{round(pixels)}/255"
    return f"{shown}/255 ({float(value):.6g})"


def evaluation_epsilon(dataset, norm, training_epsilon):
    """The radius a run is evaluated at by default, and why.

    Args:
      dataset: the dataset string ("cifar10", "digits", "npz:PATH", ...), or None.
      norm: "linf" or "l2".
      training_epsilon: the run's training radius in [0, 1] units, or None.

    Returns:
      (epsilon in [0, 1] units, source): source is "benchmark" (8/255 on CIFAR-10,
      CIFAR-100 and SVHN under L-inf), "training" (the run's own radius) or "default"
      (neither known: 8/255).
    """
    if norm in (None, "linf") and dataset in BENCHMARK_DATASETS:
        return BENCHMARK_LINF_EPSILON, "benchmark"
    if training_epsilon is not None:
        return float(training_epsilon), "training"
    return BENCHMARK_LINF_EPSILON, "default"


@dataclasses.dataclass(frozen=True)
class SelectionProtocol:
    """A per-epoch selection attack (PGD with cross-entropy, BatchNorm in inference mode).

    Attributes:
      num_steps: PGD steps; None: the training attack's.
      step_size: step in [0, 1] units; None: `step_fraction` of the radius.
      step_fraction: step as a fraction of the radius (used when step_size is None);
        None with step_size None: the training attack's step.
      start: "uniform", "normal", "none"; None: the training attack's start.
      epsilon: "evaluation" (`evaluation_epsilon`) or "training" (the run's radius).
      description: one line for help texts and the README.
    """

    num_steps: int | None
    step_size: float | None
    step_fraction: float | None
    start: str | None
    epsilon: str
    description: str


SELECTION_PROTOCOLS = {
    "at": SelectionProtocol(
        num_steps=10, step_size=None, step_fraction=0.25, start="uniform",
        epsilon="evaluation",
        description="the AT reference's: PGD-10, step eps/4 (2/255 at 8/255), uniform "
                    "start, at the evaluation radius"),
    "mart": SelectionProtocol(
        num_steps=20, step_size=0.003, step_fraction=None, start="uniform",
        epsilon="training",
        description="the MART reference's: PGD-20, step 0.003, uniform start, at the "
                    "training radius"),
    "training": SelectionProtocol(
        num_steps=None, step_size=None, step_fraction=None, start=None, epsilon="training",
        description="the training attack's radius, step, steps and start (CE loss)"),
}


def selection_attack(protocol, *, dataset, norm, epsilon, step_size, num_steps,
                     attack_start, overrides=None):
    """Resolves the selection attack of a run.

    Args:
      protocol: a key of `SELECTION_PROTOCOLS`.
      dataset, norm: the run's dataset string and threat model.
      epsilon, step_size, num_steps, attack_start: the training attack ([0, 1] units).
      overrides: dict with any of epsilon, step_size ([0, 1] units), num_steps, start;
        None values are ignored.

    Returns:
      dict(epsilon, step_size, num_steps, start), [0, 1] units.
    """
    preset = SELECTION_PROTOCOLS[protocol]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "epsilon" in overrides:
        radius = overrides["epsilon"]
    elif preset.epsilon == "evaluation":
        radius = evaluation_epsilon(dataset, norm, epsilon)[0]
    else:
        radius = epsilon
    if preset.step_size is not None:
        step = preset.step_size
    elif preset.step_fraction is not None:
        step = preset.step_fraction * radius
    else:
        step = step_size
    return dict(
        epsilon=float(radius),
        step_size=float(overrides.get("step_size", step)),
        num_steps=int(overrides.get("num_steps", num_steps if preset.num_steps is None
                                    else preset.num_steps)),
        start=overrides.get("start", attack_start if preset.start is None else preset.start))
