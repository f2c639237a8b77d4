"""The evaluation's attacks: names, settings, and CleverHans run on padded batches.

Evaluation reports robustness with the field's standard attack library, CleverHans
(`cleverhans.tf2`, version 4.0.0), and with AutoAttack (`dac_tf.autoattack`), not with
training's PGD (`dac_tf.attacks`, built for XLA, train-mode BatchNorm and the TRADES
loss): a number is then comparable with the tables of other papers.

- `fgsm`: `fast_gradient_method` with the true labels, one step of eps from the clean
  input, no random start (Goodfellow et al.; the FGSM column of TRADES/FAT tables).
- `pgdK`: CleverHans's `projected_gradient_descent` iteration: `fast_gradient_method`
  steps of `step_size` on the cross-entropy, each followed by CleverHans's `clip_eta`
  and a clip to [0, 1], from a uniform random point of the ball. `restarts` > 1 keeps,
  per example, the worst case (robust only if every restart fails).
- `cw` / `cwK`: CW-inf, the same PGD on the Carlini-Wagner margin loss with confidence
  kappa, `-max(z_y - max_{j != y} z_j + kappa, 0)` (the `cwloss` of the CAT / FAT /
  GAIRAT code bases, kappa = 50), passed to CleverHans as `loss_fn(labels=, logits=)`.
- `autoattack`: its settings are in `dac_tf.evaluation.specs`, its run in
  `dac_tf.evaluation.autoattack_runs`.

The names and settings of every attack are `dac_tf.evaluation.specs` (no CleverHans
import); they are importable from here too, as `dac_tf.evaluate` and `dac_tf.bench`
use them.

Two things differ from calling `projected_gradient_descent` itself, for reasons that
matter in an evaluation (a test checks the iteration is CleverHans's, bit for bit, from
the same start):
- the step loop is a `tf.while_loop`; CleverHans's is a Python `while`, which inside a
  `tf.function` unrolls into K copies of the forward and backward graph (PGD-100 would
  trace and optimise 100 copies);
- the random start is drawn with stateless ops from an explicit seed (same
  distributions as CleverHans's `random_lp_vector`: uniform in the L-inf box, uniform in
  the L2 ball), where CleverHans uses unseeded stateful `tf.random.uniform`: with it a
  run can be neither reproduced nor resumed. The L-inf draw is training's uniform start
  (`dac_tf.attacks.random_init`), the same computation.

CleverHans on Keras 3 (TF 2.21, Keras 3.15; checked for this module):
- works: `fast_gradient_method`, `projected_gradient_descent`,
  `momentum_iterative_method`, `basic_iterative_method` (plain TF on a `model_fn`
  returning logits), eagerly and inside `tf.function`;
- `sanity_checks=True` fails in graph mode (it calls `np.all` on symbolic tensors:
  NotImplementedError): pass `sanity_checks=False` there, as done here, and check the
  inputs separately (`dac_tf.evaluation.checks`);
- broken: `carlini_wagner_l2` (calls `optimizer.variables()`, a list in Keras 3:
  TypeError) and `spsa` (its `SPSAAdam` passes `lr=` to the Keras 3 Adam: ValueError).
  Hence `cw` here is CW-inf (PGD on the CW loss), which is also what the paper's CW-inf
  column is.

Every batch has the same shape (`dac_tf.batching`): the last partial batch is padded to
the full size so that the `tf.function` is traced once, and the padded rows are cut off
before anything is counted.
"""

import weakref

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

from dac_tf import attacks as training_attacks
from dac_tf import batching
from dac_tf import certainty
from dac_tf import protocol
from dac_tf import seeds
from dac_tf.evaluation import specs
from dac_tf.evaluation.specs import DEFAULT_CW_CONFIDENCE
# The names and settings, importable as attacks.X too (see the module docstring).
from dac_tf.evaluation.specs import (  # noqa: F401  pylint: disable=unused-import
    AUTOATTACK_BUDGETS, AUTOATTACK_IMPLS, AUTOATTACK_PACKAGES, AUTOATTACK_STANDARD,
    DEFAULT_CW_STEPS, DEFAULT_STEP_FRACTION, KINDS, NORMS, VALID_ATTACKS_TEXT,
    WHITE_BOX_AUTOATTACK, AttackError, AttackSpec, attack_seed, attack_settings,
    autoattack_label, autoattack_settings, column_label, parse_attacks)

_CLEVERHANS_NORM = {"linf": np.inf, "l2": 2}


# ----------------------------------------------------------------------------- losses
def cw_loss(labels, logits, confidence=DEFAULT_CW_CONFIDENCE):
    """Per-example Carlini-Wagner loss the attack ascends.

    `-max(z_y - max_{j != y} z_j + confidence, 0)`: its gradient is the margin's while
    the true class leads (or trails by less than `confidence`), zero once another
    class leads by `confidence`. The margin is training's `cw_margin` (one
    implementation; the sign and the confidence are this loss's own).

    Args:
      labels: int labels [B].
      logits: [B, K].
      confidence: kappa, in logit units.

    Returns:
      float32 [B].
    """
    margin = training_attacks.cw_margin(logits, tf.cast(labels, tf.int32))
    return -tf.nn.relu(confidence - margin)


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
def random_start(x, norm, epsilon, seed, clip_min=0.0, clip_max=1.0):
    """A uniformly random point of the ball around `x`, clipped to the box.

    CleverHans's `random_lp_vector` distributions, drawn with stateless ops. L-inf:
    uniform per pixel, which is training's uniform start (`dac_tf.attacks.random_init`:
    the same draw; CleverHans's `clip_eta` would not change it). L2: uniform in the ball
    (Calafiore et al.), then CleverHans's `clip_eta` against float rounding; training's
    L2 start has another radius distribution (the robust-overfitting code's).

    Args:
      x: images [B, ...].
      norm: "linf" or "l2".
      epsilon: radius.
      seed: int tensor [2].

    Returns:
      Starting points, same shape as `x`.
    """
    specs.check_norm(norm)
    if norm == "linf":
        return training_attacks.random_init(x, "linf", epsilon, "uniform", seed,
                                            clip_min, clip_max)
    epsilon = tf.cast(epsilon, x.dtype)
    shape = tf.shape(x)
    dir_seed, radius_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2, alg=seeds.RNG_ALG))
    flat = tf.random.stateless_normal(tf.stack([shape[0], tf.reduce_prod(shape[1:])]),
                                      dir_seed, dtype=x.dtype, alg=seeds.RNG_ALG)
    dim = tf.cast(tf.shape(flat)[1], x.dtype)
    w = tf.random.stateless_uniform(tf.stack([shape[0], 1]), radius_seed,
                                    dtype=x.dtype, alg=seeds.RNG_ALG) ** (1.0 / dim)
    flat = flat / tf.maximum(tf.norm(flat, axis=1, keepdims=True), 1e-12)
    eta = clip_eta(tf.reshape(epsilon * w * flat, shape), _CLEVERHANS_NORM[norm], epsilon)
    return tf.clip_by_value(x + eta, clip_min, clip_max)


def fgsm(model_fn, x, y, *, epsilon, norm="linf", loss_fn=None, clip_min=0.0, clip_max=1.0):
    """CleverHans's fast gradient method with the true labels (no random start).

    Args:
      model_fn: images -> logits (inference mode).
      x: clean images [B, ...] in [clip_min, clip_max].
      y: int labels [B].
      epsilon: radius in [0, 1] units (a Python number above 1 is refused:
        `dac_tf.protocol.unit_value`).
      norm: "linf" or "l2".
      loss_fn: `loss_fn(labels=, logits=)`; cross-entropy when None.

    Returns:
      Adversarial images, same shape as `x`.
    """
    specs.check_norm(norm)
    epsilon = protocol.unit_value("epsilon", epsilon)   # Python numbers; tensors pass
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
      epsilon: radius in [0, 1] units (a Python number above 1 is refused:
        `dac_tf.protocol.unit_value`).
      step_size: step length, same units and rule.
      num_steps: int >= 0 (Python int or scalar int32 tensor).
      norm: "linf" or "l2".
      loss_fn: `loss_fn(labels=, logits=)`; cross-entropy when None.
      seed: int tensor [2] for the random start; None starts at `x` (or `x_init`).
      x_init: explicit starting point (overrides `seed`), e.g. to compare with
        CleverHans itself.

    Returns:
      Adversarial images, same shape as `x`.
    """
    specs.check_norm(norm)
    epsilon = protocol.unit_value("epsilon", epsilon)   # Python numbers; tensors pass
    step_size = protocol.unit_value("step_size", step_size)
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
        # CleverHans's own projection, so the iteration is exactly its PGD's.
        eta = clip_eta(x_adv - x, ch_norm, epsilon)
        return i + 1, tf.stop_gradient(tf.clip_by_value(x + eta, clip_min, clip_max))

    _, x_adv = tf.while_loop(
        lambda i, _: i < num_steps, body, (tf.constant(0), x_adv),
        maximum_iterations=num_steps if isinstance(num_steps, int) else None)
    return tf.stop_gradient(x_adv)


def _fold(seed, k):
    # The evaluation's streams fold int32 data (`seeds.fold`).
    return seeds.fold(seed, k, data_dtype=tf.int32)


# -------------------------------------------------------------------- batch functions
def float_logits_fn(logits_fn):
    """`logits_fn` with float32 outputs (mixed-precision models return float16)."""
    return lambda t: tf.cast(logits_fn(t), tf.float32)


def _outputs(x, adv, logits, correct):
    delta = tf.reshape(adv - x, [tf.shape(x)[0], -1])
    flat = tf.reshape(adv, [tf.shape(x)[0], -1])
    return dict(correct=correct,
                finite=tf.reduce_all(tf.math.is_finite(logits), axis=1),
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
      is right on every restart's output), `finite` (bool, every logit of the kept
      output is finite), `certainty` (AC, "std" measure, of the
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
        run = _BUILDERS[kind](float_logits_fn(logits_fn), structure)
        cache[key] = tf.function(run, jit_compile=jit_compile)
    params = dict(epsilon=tf.constant(settings.get("epsilon", 0.0), tf.float32),
                  step_size=tf.constant(settings.get("step_size", 0.0), tf.float32),
                  steps=tf.constant(settings.get("steps", 0), tf.int32),
                  confidence=tf.constant(settings.get("confidence", 0.0), tf.float32))
    return BatchFn(cache[key], params)


def run_batched(batch_fn, x, y, *, batch_size, seed_base=None, progress=None):
    """Runs `batch_fn` over all examples, every batch padded to `batch_size`.

    The padded rows are cut off before the results are joined (`dac_tf.batching`), so
    each example is counted exactly once whatever N and the batch size are.

    Args:
      batch_fn: from `make_batch_fn`.
      x: float32 images [N, ...] in [0, 1].
      y: int labels [N].
      batch_size: examples per call (at most N are used: no needless padding).
      seed_base: `attack_seed(...)`; batch k uses it folded with k.
      progress: optional callable(done_examples, total).

    Returns:
      Dict of NumPy arrays [N] (the keys of `batch_fn`'s output); empty for N = 0.
    """
    if not len(x):
        return {}
    if seed_base is None:
        seed_base = tf.constant([0, 0], tf.int64)

    def call(k, xb, yb):
        return batch_fn(tf.constant(xb), tf.constant(yb), _fold(seed_base, k))

    return batching.map_padded(call, [np.asarray(x), np.asarray(y, np.int32)], batch_size,
                               progress=progress)
