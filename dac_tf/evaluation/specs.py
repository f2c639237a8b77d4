"""The evaluation's attacks by name: what `--attacks` means and what a result depends on.

`parse_attacks` reads the names (`clean`, `fgsm`, `pgdK`, `cw` / `cwK`, `autoattack`),
`column_label` gives each its column in the paper's table, and `attack_settings` /
`autoattack_settings` everything that determines an attack's result, which is stored
with it and must match for `--resume` to reuse it. `attack_seed` is the base seed of an
attack family. The attacks themselves run in `dac_tf.evaluation.attacks` (CleverHans)
and `dac_tf.autoattack`; this module imports neither CleverHans nor the attacks.
"""

import dataclasses
import re
import zlib

import tensorflow as tf

from dac_tf import attacks as training_attacks
from dac_tf import autoattack
from dac_tf import errors
from dac_tf import protocol

NORMS = training_attacks.NORMS
KINDS = ("clean", "fgsm", "pgd", "cw", "autoattack")

# CW-inf as in the CAT / FAT / GAIRAT evaluation code (`cwloss`, confidence=50,
# perturb_steps=30, step eps/4 with a uniform random start: FAT's attack_test.py).
DEFAULT_CW_CONFIDENCE = 50.0
DEFAULT_CW_STEPS = 30
# Step eps/4, i.e. 2/255 at eps = 8/255: the robust-overfitting code base's
# `--pgd-alpha 2`, inherited by the DAC reference, and its selection attack's step.
DEFAULT_STEP_FRACTION = protocol.SELECTION_PROTOCOLS["at"].step_fraction

# The standard AutoAttack: its components and budgets are the native implementation's.
AUTOATTACK_STANDARD = autoattack.STANDARD_ATTACKS
AUTOATTACK_BUDGETS = autoattack.STANDARD_CONFIG
WHITE_BOX_AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t")
# --autoattack_impl -> the PyTorch package `dac_tf.torch_bridge` runs (None: native).
AUTOATTACK_PACKAGES = {"native": None, "official": "autoattack",
                       "pyautoattack": "pyautoattack"}
AUTOATTACK_IMPLS = tuple(AUTOATTACK_PACKAGES)

VALID_ATTACKS_TEXT = ("clean, fgsm, pgdK (K steps, e.g. pgd20, pgd100), cw (CW-inf, "
                      f"{DEFAULT_CW_STEPS} steps) or cwK, autoattack")


class AttackError(errors.UserError):
    """An attack name or setting that cannot be used (the message says what is valid)."""


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One entry of `--attacks`.

    Attributes:
      name: the name as given (the key of every per-attack result).
      kind: "clean", "fgsm", "pgd", "cw" or "autoattack".
      steps: iterations (pgd, cw); 1 for fgsm, 0 otherwise.
    """
    name: str
    kind: str
    steps: int = 0

    @property
    def canonical(self):
        """Lower-case name with the default spelled out ("cw" -> "cw30")."""
        return f"{self.kind}{self.steps}" if self.kind in ("pgd", "cw") else self.kind


def parse_attacks(names):
    """Parses `--attacks`.

    Args:
      names: a comma-separated string or a sequence of names.

    Returns:
      A tuple of `AttackSpec`, in the given order.

    Raises:
      AttackError: empty list, unknown or repeated name, zero steps.
    """
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise AttackError(f"--attacks is empty; use a comma-separated list of "
                          f"{VALID_ATTACKS_TEXT}.")
    specs = []
    for name in names:
        low = name.lower()
        match = re.fullmatch(r"(pgd|cw)(\d*)", low)
        if low in ("clean", "fgsm", "autoattack"):
            spec = AttackSpec(name, low, 1 if low == "fgsm" else 0)
        elif match and (match.group(2) or match.group(1) == "cw"):
            steps = int(match.group(2)) if match.group(2) else DEFAULT_CW_STEPS
            if steps < 1:
                raise AttackError(f"--attacks: {name!r} needs at least one step.")
            spec = AttackSpec(name, match.group(1), steps)
        else:
            raise AttackError(f"--attacks: unknown attack {name!r}; use "
                              f"{VALID_ATTACKS_TEXT}.")
        specs.append(spec)
    canon = [s.canonical for s in specs]
    if len(set(canon)) != len(canon):
        raise AttackError(f"--attacks: {','.join(names)} names an attack twice.")
    return tuple(specs)


def column_label(spec):
    """The attack's column header in the paper's table ("PGD-20", "CW-inf", ...)."""
    if spec.kind == "clean":
        return "Clean"
    if spec.kind == "fgsm":
        return "FGSM"
    if spec.kind == "pgd":
        return f"PGD-{spec.steps}"
    if spec.kind == "cw":
        return "CW-inf" if spec.steps == DEFAULT_CW_STEPS else f"CW-inf-{spec.steps}"
    return "AutoAttack"


def check_norm(norm):
    """Raises AttackError for a norm other than "linf" or "l2"."""
    if norm not in NORMS:
        raise AttackError(f"--norm={norm!r} is not valid; use one of {', '.join(NORMS)}.")


def attack_settings(spec, *, epsilon, norm="linf", step_size=None, restarts=1,
                    cw_confidence=DEFAULT_CW_CONFIDENCE, cw_step_size=None, seed=0,
                    batch_size=None):
    """Everything that determines a CleverHans attack's result (stored with it).

    A stored result is reused on `--resume` only if these are equal.

    Args:
      spec: an `AttackSpec` of kind clean, fgsm, pgd or cw.
      epsilon: radius in [0, 1] pixel units.
      norm: "linf" or "l2".
      step_size: PGD step; None: `DEFAULT_STEP_FRACTION * epsilon`.
      restarts: random restarts of pgd / cw.
      cw_confidence: kappa of the CW loss.
      cw_step_size: CW-inf step; None: the PGD step.
      seed: integer seed.
      batch_size: batch size (the noise of batch k depends on k).

    Returns:
      A JSON-serialisable dict.
    """
    check_norm(norm)
    epsilon = protocol.unit_value("epsilon", epsilon)
    step_size = protocol.unit_value("step_size", step_size, allow_none=True)
    cw_step_size = protocol.unit_value("cw_step_size", cw_step_size, allow_none=True)
    if spec.kind == "clean":
        return dict(kind="clean")
    if spec.kind == "fgsm":
        return dict(kind="fgsm", norm=norm, epsilon=float(epsilon), loss="ce")
    if spec.kind not in ("pgd", "cw"):
        raise AttackError(f"{spec.name!r} is not a CleverHans attack.")
    if step_size is None:
        step_size = DEFAULT_STEP_FRACTION * epsilon
    if spec.kind == "cw" and cw_step_size is not None:
        step_size = cw_step_size
    if restarts < 1:
        raise AttackError(f"--pgd_restarts={restarts} must be at least 1.")
    if step_size < 0 or (step_size == 0 and epsilon > 0):
        raise AttackError(f"the step size of {spec.name} must be positive, got {step_size}.")
    out = dict(kind=spec.kind, norm=norm, epsilon=float(epsilon), steps=int(spec.steps),
               step_size=float(step_size), restarts=int(restarts), random_start=True,
               loss="ce" if spec.kind == "pgd" else "cw", seed=int(seed),
               batch_size=None if batch_size is None else int(batch_size))
    if spec.kind == "cw":
        out["confidence"] = float(cw_confidence)
    return out


def autoattack_settings(epsilon, *, seed, batch_size, options=None):
    """The settings of one AutoAttack run (what must match for its result to be reused).

    Args:
      epsilon: L-inf budget in [0, 1] units.
      seed: integer seed.
      batch_size: examples per attack batch.
      options: overrides: `impl` ("native": `dac_tf.autoattack`; "official" or
        "pyautoattack": that PyTorch package through `dac_tf.torch_bridge`), `attacks`
        (components, in order), `jit_compile` (not a setting: it does not change the
        result) and the budgets `apgd_n_iter`, `fab_n_iter`, `square_n_queries`,
        `n_target_classes` (for tests and smoke runs; anything non-default marks the
        result non-standard).

    Returns:
      A JSON-serialisable dict.

    Raises:
      AttackError: an unknown option, component or implementation.
    """
    epsilon = protocol.unit_value("epsilon", epsilon)
    options = dict(options or {})
    unknown = set(options) - {"attacks", "jit_compile", "impl", *AUTOATTACK_BUDGETS}
    if unknown:
        raise AttackError(f"unknown AutoAttack options {sorted(unknown)}.")
    components = tuple(options.pop("attacks", AUTOATTACK_STANDARD))
    bad = [c for c in components if c not in AUTOATTACK_STANDARD]
    if bad or not components or len(set(components)) != len(components):
        raise AttackError(f"--autoattack_attacks={','.join(components)} must be distinct "
                          f"names among {', '.join(AUTOATTACK_STANDARD)}.")
    options.pop("jit_compile", None)
    impl = options.pop("impl", "native")
    if impl not in AUTOATTACK_IMPLS:
        raise AttackError(f"--autoattack_impl={impl!r} is not valid; use one of "
                          f"{', '.join(AUTOATTACK_IMPLS)}.")
    budgets = {k: int(options.get(k, v)) for k, v in AUTOATTACK_BUDGETS.items()}
    return dict(kind="autoattack", impl=impl, norm="linf", epsilon=float(epsilon),
                seed=int(seed), batch_size=int(batch_size), attacks=list(components), **budgets)


def autoattack_label(components, settings):
    """The table header of an AutoAttack column; never "AutoAttack" for a subset."""
    if tuple(components) != AUTOATTACK_STANDARD:
        return f"AA({','.join(components)})"
    if any(settings[k] != v for k, v in AUTOATTACK_BUDGETS.items()):
        return "AutoAttack*"
    return "AutoAttack"


def attack_seed(seed, name):
    """The base stateless seed of an attack family ("pgd", "cw", ...).

    It depends on (seed, name) only, not on the order of the attacks, so a resumed run
    draws the same noise. Pass the kind, not "pgd20": PGD-20 and PGD-100 then start
    from the same random points, and PGD-100 continues PGD-20's path, so comparing
    them isolates the effect of the extra steps.
    """
    return tf.constant([int(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF], tf.int64)
