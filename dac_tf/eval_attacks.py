"""Evaluation attacks through CleverHans, batched with padding, and the sanity checks.

The white-box attacks of `python -m dac_tf.evaluate` are CleverHans's (`cleverhans.tf2`,
version 4.0.0):

- `fgsm`: `fast_gradient_method` with the true labels, one step of eps from the clean
  input, no random start (Goodfellow et al.; the FGSM column of TRADES/FAT tables).
- `pgdK`: CleverHans's `projected_gradient_descent` iteration: `fast_gradient_method`
  steps of `step_size` on the cross-entropy, each followed by CleverHans's `clip_eta`
  and a clip to [0, 1], from a uniform random point of the ball. `restarts` > 1 keeps,
  per example, the worst case (robust only if every restart fails).
- `cw` / `cwK`: CW-inf, the same PGD on the Carlini-Wagner margin loss with confidence
  kappa, `-max(z_y - max_{j != y} z_j + kappa, 0)` (the `cwloss` of the CAT / FAT /
  GAIRAT code bases, kappa = 50), passed to CleverHans as `loss_fn(labels=, logits=)`.

Two things differ from calling `projected_gradient_descent` itself, for reasons that
matter in an evaluation (a test checks the iteration is CleverHans's, bit for bit, from
the same start):
- the step loop is a `tf.while_loop`; CleverHans's is a Python `while`, which inside a
  `tf.function` unrolls into K copies of the forward and backward graph (PGD-100 would
  trace and optimise 100 copies);
- the random start is drawn with stateless ops from an explicit seed (same
  distributions as CleverHans's `random_lp_vector`: uniform in the L-inf box, uniform in
  the L2 ball), where CleverHans uses unseeded stateful `tf.random.uniform`: with it a
  run can be neither reproduced nor resumed.

CleverHans on Keras 3 (TF 2.21, Keras 3.15; checked for this module):
- works: `fast_gradient_method`, `projected_gradient_descent`,
  `momentum_iterative_method`, `basic_iterative_method` (plain TF on a `model_fn`
  returning logits), eagerly and inside `tf.function`;
- `sanity_checks=True` fails in graph mode (it calls `np.all` on symbolic tensors:
  NotImplementedError): pass `sanity_checks=False` there, as done here, and check the
  inputs separately (`check_*` below);
- broken: `carlini_wagner_l2` (calls `optimizer.variables()`, a list in Keras 3:
  TypeError) and `spsa` (its `SPSAAdam` passes `lr=` to the Keras 3 Adam: ValueError).
  Hence `cw` here is CW-inf (PGD on the CW loss), which is also what the paper's CW-inf
  column is.

Every batch has the same shape: the last partial batch is padded (with copies of its
last example) to the full size so that the `tf.function` is traced once, and the padded
rows are cut off before anything is counted.

Sanity checks follow the advice of fra31/auto-attack (`checks.py`): logits and not
probabilities, a deterministic forward pass, non-zero input gradients, black-box not
beating white-box; plus eps = 0 reproducing clean predictions, more PGD steps never
raising the robust accuracy, FGSM never beating PGD, and every adversarial example in
the ball and the box. Each returns a `dict(name, passed, detail)`; `passed` is None when
a check could not be run.
"""

import dataclasses
import re
import sys
import time
import weakref
import zlib

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

from dac_tf import certainty
from dac_tf import errors

NORMS = ("linf", "l2")
KINDS = ("clean", "fgsm", "pgd", "cw", "autoattack")
_CLEVERHANS_NORM = {"linf": np.inf, "l2": 2}

# CW-inf as in the CAT / FAT / GAIRAT evaluation code (`cwloss`, confidence=50,
# perturb_steps=30, step eps/4 with a uniform random start: FAT's attack_test.py).
DEFAULT_CW_CONFIDENCE = 50.0
DEFAULT_CW_STEPS = 30
# Step eps/4, i.e. 2/255 at eps = 8/255: the robust-overfitting code base's
# `--pgd-alpha 2`, inherited by the DAC reference (at_edac_cifar10.py).
DEFAULT_STEP_FRACTION = 0.25
# Tolerances of the checks, in float32 pixel units / fractions of the examples.
BALL_TOL = 1e-5
# fra31/auto-attack `check_square_sr`: Square may lower the accuracy by at most 0.2%.
BLACK_BOX_TOL = 0.002
_RNG_ALG = "philox"

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


# ----------------------------------------------------------------------------- losses
def cw_loss(labels, logits, confidence=DEFAULT_CW_CONFIDENCE):
    """Per-example Carlini-Wagner loss the attack ascends.

    `-max(z_y - max_{j != y} z_j + confidence, 0)`: its gradient is the margin's while
    the true class leads (or trails by less than `confidence`), zero once another
    class leads by `confidence`.

    Args:
      labels: int labels [B].
      logits: [B, K].
      confidence: kappa, in logit units.

    Returns:
      float32 [B].
    """
    logits = tf.cast(logits, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=tf.float32)
    real = tf.reduce_sum(onehot * logits, axis=-1)
    # Large negative offset on the true class so the max runs over the others.
    other = tf.reduce_max(logits - onehot * 1e9, axis=-1)
    return -tf.nn.relu(real - other + confidence)


def make_cw_loss_fn(confidence=DEFAULT_CW_CONFIDENCE):
    """`cw_loss` with CleverHans's `loss_fn(labels=, logits=)` signature."""
    def loss_fn(labels, logits):
        return cw_loss(labels, logits, confidence)
    return loss_fn


def ce_loss_fn(labels, logits):
    """CleverHans's default loss (sparse softmax cross-entropy) on float32 logits."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


# ---------------------------------------------------------------------------- attacks
def _check_norm(norm):
    if norm not in NORMS:
        raise AttackError(f"--norm={norm!r} is not valid; use one of {', '.join(NORMS)}.")


def random_start(x, norm, epsilon, seed, clip_min=0.0, clip_max=1.0):
    """A uniformly random point of the ball around `x`, clipped to the box.

    CleverHans's `random_lp_vector` distributions (L-inf: uniform per pixel; L2:
    uniform in the ball, Calafiore et al.), drawn with stateless ops.

    Args:
      x: images [B, ...].
      norm: "linf" or "l2".
      epsilon: radius.
      seed: int tensor [2].

    Returns:
      Starting points, same shape as `x`.
    """
    _check_norm(norm)
    epsilon = tf.cast(epsilon, x.dtype)
    shape = tf.shape(x)
    if norm == "linf":
        eta = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=x.dtype,
                                          alg=_RNG_ALG) * epsilon
    else:
        dir_seed, radius_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2, alg=_RNG_ALG))
        flat = tf.random.stateless_normal(tf.stack([shape[0], tf.reduce_prod(shape[1:])]),
                                          dir_seed, dtype=x.dtype, alg=_RNG_ALG)
        dim = tf.cast(tf.shape(flat)[1], x.dtype)
        w = tf.random.stateless_uniform(tf.stack([shape[0], 1]), radius_seed,
                                        dtype=x.dtype, alg=_RNG_ALG) ** (1.0 / dim)
        flat = flat / tf.maximum(tf.norm(flat, axis=1, keepdims=True), 1e-12)
        eta = tf.reshape(epsilon * w * flat, shape)
    eta = clip_eta(eta, _CLEVERHANS_NORM[norm], epsilon)
    return tf.clip_by_value(x + eta, clip_min, clip_max)


def fgsm(model_fn, x, y, *, epsilon, norm="linf", loss_fn=None, clip_min=0.0, clip_max=1.0):
    """CleverHans's fast gradient method with the true labels (no random start).

    Args:
      model_fn: images -> logits (inference mode).
      x: clean images [B, ...] in [clip_min, clip_max].
      y: int labels [B].
      epsilon: radius.
      norm: "linf" or "l2".
      loss_fn: `loss_fn(labels=, logits=)`; cross-entropy when None.

    Returns:
      Adversarial images, same shape as `x`.
    """
    _check_norm(norm)
    return tf.stop_gradient(fast_gradient_method(
        model_fn, x, epsilon, _CLEVERHANS_NORM[norm], loss_fn=loss_fn or ce_loss_fn,
        clip_min=clip_min, clip_max=clip_max, y=y, sanity_checks=False))


def pgd(model_fn, x, y, *, epsilon, step_size, num_steps, norm="linf", loss_fn=None,
        seed=None, x_init=None, clip_min=0.0, clip_max=1.0):
    """CleverHans's PGD iteration as a `tf.while_loop`, from a seeded random start.

    Each step is CleverHans's `fast_gradient_method` (size `step_size`, true labels),
    then its `clip_eta` onto the `epsilon`-ball around `x` and a clip to the box: the
    body of `projected_gradient_descent`.

    Args:
      model_fn: images -> logits (inference mode).
      x: clean images [B, ...].
      y: int labels [B].
      epsilon: radius.
      step_size: step length.
      num_steps: int >= 0 (Python int or scalar int32 tensor).
      norm: "linf" or "l2".
      loss_fn: `loss_fn(labels=, logits=)`; cross-entropy when None.
      seed: int tensor [2] for the random start; None starts at `x` (or `x_init`).
      x_init: explicit starting point (overrides `seed`), e.g. to compare with
        CleverHans itself.

    Returns:
      Adversarial images, same shape as `x`.
    """
    _check_norm(norm)
    ch_norm = _CLEVERHANS_NORM[norm]
    loss_fn = loss_fn or ce_loss_fn
    x = tf.convert_to_tensor(x, tf.float32)
    if x_init is not None:
        x_adv = tf.convert_to_tensor(x_init, tf.float32)
    elif seed is not None:
        x_adv = random_start(x, norm, epsilon, seed, clip_min, clip_max)
    else:
        x_adv = x

    def body(i, x_adv):
        x_adv = fast_gradient_method(model_fn, x_adv, step_size, ch_norm, loss_fn,
                                     clip_min=clip_min, clip_max=clip_max, y=y,
                                     sanity_checks=False)
        eta = clip_eta(x_adv - x, ch_norm, epsilon)
        return i + 1, tf.stop_gradient(tf.clip_by_value(x + eta, clip_min, clip_max))

    _, x_adv = tf.while_loop(
        lambda i, _: i < num_steps, body, (tf.constant(0), x_adv),
        maximum_iterations=num_steps if isinstance(num_steps, int) else None)
    return tf.stop_gradient(x_adv)


# --------------------------------------------------------------------- settings, seeds
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
    _check_norm(norm)
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


def attack_seed(seed, name):
    """The base stateless seed of an attack family ("pgd", "cw", ...).

    It depends on (seed, name) only, not on the order of the attacks, so a resumed run
    draws the same noise. Pass the kind, not "pgd20": PGD-20 and PGD-100 then start
    from the same random points, and PGD-100 continues PGD-20's path, so comparing
    them isolates the effect of the extra steps.
    """
    return tf.constant([int(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF], tf.int64)


def _fold(seed, k):
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(k, tf.int32), alg=_RNG_ALG)


# -------------------------------------------------------------------- batch functions
def _float_logits_fn(logits_fn):
    return lambda t: tf.cast(logits_fn(t), tf.float32)


def _outputs(x, adv, logits, correct):
    delta = tf.reshape(adv - x, [tf.shape(x)[0], -1])
    flat = tf.reshape(adv, [tf.shape(x)[0], -1])
    return dict(correct=correct,
                certainty=certainty.per_example_certainty(logits, "std"),
                linf=tf.reduce_max(tf.abs(delta), axis=1),
                l2=tf.norm(delta, axis=1),
                in_box=(tf.reduce_min(flat, axis=1) >= 0.0) & (tf.reduce_max(flat, axis=1) <= 1.0))


def _is_correct(logits, y):
    return tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)


# Each kind has its own traced function (its own code object, which is also what
# TensorFlow's retracing detector counts), built once per (model, structure).
def _clean_run(model_fn, structure):
    del structure

    def clean_run(x, y, seed, params):
        del seed, params
        logits = model_fn(x)
        return _outputs(x, x, logits, _is_correct(logits, y))
    return clean_run


def _fgsm_run(model_fn, structure):
    def fgsm_run(x, y, seed, params):
        del seed
        adv = fgsm(model_fn, x, y, epsilon=params["epsilon"], norm=structure["norm"])
        logits = model_fn(adv)
        return _outputs(x, adv, logits, _is_correct(logits, y))
    return fgsm_run


def _pgd_run(model_fn, structure):
    def pgd_run(x, y, seed, params):
        if structure["loss"] == "ce":
            loss_fn = ce_loss_fn
        else:
            def loss_fn(labels, logits):
                return cw_loss(labels, logits, params["confidence"])
        correct = tf.ones_like(y, tf.bool)
        adv = logits = best_loss = None
        for r in range(structure["restarts"]):
            cand = pgd(model_fn, x, y, epsilon=params["epsilon"],
                       step_size=params["step_size"], num_steps=params["steps"],
                       norm=structure["norm"], loss_fn=loss_fn, seed=_fold(seed, r))
            cand_logits = model_fn(cand)
            correct &= _is_correct(cand_logits, y)
            loss = loss_fn(labels=y, logits=cand_logits)
            if adv is None:
                adv, logits, best_loss = cand, cand_logits, loss
            else:
                take = loss >= best_loss
                adv = tf.where(take[:, None, None, None], cand, adv)
                logits = tf.where(take[:, None], cand_logits, logits)
                best_loss = tf.maximum(loss, best_loss)
        return _outputs(x, adv, logits, correct)
    return pgd_run


_BUILDERS = {"clean": _clean_run, "fgsm": _fgsm_run, "pgd": _pgd_run, "cw": _pgd_run}
# logits_fn -> {structure: tf.function}; weak, so a cached graph never keeps a model alive.
_TRACED = weakref.WeakKeyDictionary()


class BatchFn:
    """One attack on one full batch: `batch_fn(x, y, seed) -> dict of [B] tensors`.

    The numbers (epsilon, step size, steps, confidence) are tensor arguments, so attacks
    that differ only in them (pgd20, pgd100) share one traced graph.
    """

    def __init__(self, function, params):
        self.function = function
        self.params = params

    def __call__(self, x, y, seed):
        return self.function(x, y, seed, self.params)

    def tracing_count(self):
        return self.function.experimental_get_tracing_count()


def make_batch_fn(logits_fn, settings, jit_compile=False):
    """The function running one attack on one (full) batch.

    Args:
      logits_fn: images -> logits, BatchNorm in inference mode.
      settings: from `attack_settings`.
      jit_compile: compile with XLA.

    Returns:
      A `BatchFn` returning a dict of per-example tensors: `correct` (bool, the model
      is right on every restart's output), `certainty` (AC, "std" measure, of the
      logits on the kept adversarial example: the restart with the highest attack
      loss, as the robust-overfitting code keeps), `linf` / `l2` (distance to `x`),
      `in_box` (bool).
    """
    kind = settings["kind"]
    structure = dict(kind=kind, norm=settings.get("norm", "linf"), loss=settings.get("loss"),
                     restarts=settings.get("restarts", 1), jit_compile=bool(jit_compile))
    key = tuple(sorted(structure.items()))
    try:
        cache = _TRACED.setdefault(logits_fn, {})
    except TypeError:   # not weak-referenceable: no cache
        cache = {}
    if key not in cache:
        run = _BUILDERS[kind](_float_logits_fn(logits_fn), structure)
        cache[key] = tf.function(run, jit_compile=jit_compile)
    params = dict(epsilon=tf.constant(settings.get("epsilon", 0.0), tf.float32),
                  step_size=tf.constant(settings.get("step_size", 0.0), tf.float32),
                  steps=tf.constant(settings.get("steps", 0), tf.int32),
                  confidence=tf.constant(settings.get("confidence", 0.0), tf.float32))
    return BatchFn(cache[key], params)


def padded_batches(n, batch_size):
    """(start, stop) of each batch of `range(n)`; every batch is later padded to full size."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def pad_to(a, size):
    """Pads the first axis of `a` to `size` by repeating its last row."""
    missing = size - len(a)
    if missing <= 0:
        return a
    return np.concatenate([a, np.repeat(a[-1:], missing, axis=0)], axis=0)


def run_batched(batch_fn, x, y, *, batch_size, seed_base=None, progress=None):
    """Runs `batch_fn` over all examples, every batch padded to `batch_size`.

    The padded rows are cut off before the results are joined, so each example is
    counted exactly once whatever N and the batch size are.

    Args:
      batch_fn: from `make_batch_fn`.
      x: float32 images [N, ...] in [0, 1].
      y: int labels [N].
      batch_size: examples per call (at most N are used: no needless padding).
      seed_base: `attack_seed(...)`; batch k uses it folded with k.
      progress: optional callable(done_examples, total).

    Returns:
      Dict of NumPy arrays [N] (the keys of `batch_fn`'s output).
    """
    n = len(x)
    batch_size = max(1, min(int(batch_size), n))
    if seed_base is None:
        seed_base = tf.constant([0, 0], tf.int64)
    parts = []
    for k, (start, stop) in enumerate(padded_batches(n, batch_size)):
        xb = tf.constant(pad_to(x[start:stop], batch_size))
        yb = tf.constant(pad_to(np.asarray(y[start:stop], np.int32), batch_size))
        out = batch_fn(xb, yb, _fold(seed_base, k))
        parts.append({key: v.numpy()[:stop - start] for key, v in out.items()})
        if progress is not None:
            progress(stop, n)
    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


class Progress:
    """A one-line progress bar on stderr (a line per 25% when stderr is not a terminal)."""

    def __init__(self, title, stream=None, width=30):
        self.title = title
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_quarter = -1

    def __call__(self, done, total, elapsed=None):
        frac = done / total if total else 1.0
        if elapsed is None:
            elapsed = time.perf_counter() - self.start
        filled = int(round(self.width * frac))
        line = (f"{self.title} [{'=' * filled}{'.' * (self.width - filled)}] "
                f"{done}/{total} {elapsed:.1f}s")
        if self._tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            quarter = int(frac * 4)
            if quarter == self._last_quarter:
                return
            self._last_quarter = quarter
            self.stream.write(line + "\n")
        self.stream.flush()


# --------------------------------------------------------------------- sanity checks
def _check(name, passed, detail):
    return dict(name=name, passed=None if passed is None else bool(passed), detail=detail)


def check_logits(logits):
    """Outputs must be logits: not all rows in [0, 1] summing to 1 (softmax outputs)."""
    logits = np.asarray(logits, np.float64)
    in_unit = bool(np.all((logits >= 0) & (logits <= 1)))
    sums_one = bool(np.allclose(logits.sum(axis=1), 1.0, atol=1e-4))
    passed = not (in_unit and sums_one)
    detail = ("outputs look like logits" if passed else
              "every output row lies in [0, 1] and sums to 1: the model returns "
              "probabilities; attacks and the CW loss need logits")
    return _check("outputs_are_logits", passed, detail)


def check_deterministic(logits_fn, x, tol=1e-5):
    """Two forward passes on the same batch must agree (no dropout, BN in inference)."""
    a = np.asarray(logits_fn(tf.constant(x)), np.float64)
    b = np.asarray(logits_fn(tf.constant(x)), np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
    passed = diff <= tol * scale
    return _check("deterministic_forward", passed,
                  f"max |difference| between two passes: {diff:.3g}"
                  + ("" if passed else " (randomness in the forward pass, e.g. dropout or "
                     "BatchNorm in training mode, makes gradient attacks unreliable)"))


def check_gradients(logits_fn, x, y):
    """The input gradient of the cross-entropy must be non-zero for every example."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = ce_loss_fn(labels=tf.constant(y), logits=logits_fn(x))
    grad = tape.gradient(loss, x)
    if grad is None:
        return _check("nonzero_input_gradients", False,
                      "no gradient flows from the logits to the input")
    norms = np.abs(grad.numpy().reshape(len(y), -1)).max(axis=1)
    zero = int(np.sum(norms == 0))
    return _check("nonzero_input_gradients", zero == 0,
                  f"{zero} of {len(y)} examples have an all-zero input gradient"
                  + ("" if zero == 0 else " (gradient masking: white-box numbers may "
                     "overestimate robustness)"))


def check_eps_zero(logits_fn, x, y, *, norm="linf", steps=5):
    """PGD with eps = 0 must reproduce the clean predictions exactly."""
    model_fn = _float_logits_fn(logits_fn)
    x = tf.constant(x)
    y = tf.constant(np.asarray(y, np.int32))
    adv = pgd(model_fn, x, y, epsilon=0.0, step_size=0.01, num_steps=steps, norm=norm,
              seed=tf.constant([0, 0], tf.int64))
    same_input = bool(np.array_equal(adv.numpy(), x.numpy()))
    clean = np.argmax(model_fn(x).numpy(), -1)
    attacked = np.argmax(model_fn(adv).numpy(), -1)
    passed = same_input and bool(np.array_equal(clean, attacked))
    return _check("eps_zero_is_clean", passed,
                  "PGD with eps=0 returns the input and its predictions" if passed else
                  f"PGD with eps=0 changed the input ({not same_input}) or "
                  f"{int(np.sum(clean != attacked))} predictions")


def check_in_ball(name, results, epsilon, norm):
    """Every adversarial example lies in the eps-ball around its input and in [0, 1]."""
    dist = results["linf" if norm == "linf" else "l2"]
    worst = float(dist.max()) if len(dist) else 0.0
    out_of_box = int(np.sum(~results["in_box"]))
    passed = worst <= epsilon + BALL_TOL and out_of_box == 0
    return _check(f"{name}_in_ball_and_box", passed,
                  f"max {norm} distance {worst:.6g} (eps {epsilon:.6g}), "
                  f"{out_of_box} examples outside [0, 1]")


def check_monotone(specs, accuracy, n):
    """More PGD steps never raise the accuracy; FGSM never beats PGD (CW likewise).

    Random starts make two runs differ slightly, so a rise of at most
    max(1 example, 0.1%) is tolerated.

    Args:
      specs: the `AttackSpec`s that ran.
      accuracy: name -> robust accuracy in [0, 1].
      n: number of examples.

    Returns:
      A list of check dicts (empty when no pair applies).
    """
    tol = max(1.0 / n, 0.001) if n else 0.0
    checks = []
    pgds = sorted((s for s in specs if s.kind == "pgd" and s.name in accuracy),
                  key=lambda s: s.steps)
    for few, many in zip(pgds, pgds[1:]):
        a_few, a_many = accuracy[few.name], accuracy[many.name]
        checks.append(_check(
            f"{many.name}_not_above_{few.name}", a_many <= a_few + tol,
            f"{many.name} {100 * a_many:.2f}% vs {few.name} {100 * a_few:.2f}%"
            + ("" if a_many <= a_few + tol else
               ": more steps gave a higher robust accuracy (the attack has not converged "
               "or the gradients are obfuscated)")))
    for weak in (s for s in specs if s.kind == "fgsm" and s.name in accuracy):
        for strong in pgds:
            a_weak, a_strong = accuracy[weak.name], accuracy[strong.name]
            checks.append(_check(
                f"{weak.name}_not_below_{strong.name}", a_weak + tol >= a_strong,
                f"{weak.name} {100 * a_weak:.2f}% vs {strong.name} {100 * a_strong:.2f}%"
                + ("" if a_weak + tol >= a_strong else
                   ": one-step FGSM beats iterative PGD (a sign of gradient masking)")))
    return checks


def check_black_box(flags_white, flags_after_square, n):
    """Square (black-box) must not break points every white-box attack left robust.

    Args:
      flags_white: [N] bool, robust to every white-box attack run (AND over them).
      flags_after_square: [N] bool, robust after AutoAttack including Square.
      n: number of examples.

    Returns:
      A check dict (fra31/auto-attack's threshold: at most 0.2% of the points).
    """
    extra = int(np.sum(flags_white & ~flags_after_square))
    frac = extra / n if n else 0.0
    passed = frac <= BLACK_BOX_TOL
    return _check("black_box_not_beating_white_box", passed,
                  f"Square broke {extra} points ({100 * frac:.2f}%) that survived every "
                  "white-box attack" + ("" if passed else
                                        ": the white-box numbers are unreliable (gradient "
                                        "masking); consider adaptive attacks"))

