"""Robust losses of the base methods (AT, TRADES, MART) and the attack each one trains with.

Every loss is returned per example, so the caller decides how to average (over the
global batch under `tf.distribute`). Formulas follow the reference code of each method,
and `DEFAULTS` are the argparse defaults and hard-coded settings of the authors' scripts
(TrustMLRG/AdvCertainty: dac_at_cifar10.py; dac_trades_cifar10.py with trades.py
`trades_loss`; dac_mart_cifar10.py with mart.py `mart_loss` and `dac_loss`).
"""

import dataclasses

import tensorflow as tf

from dac_tf import attacks

METHODS = ("at", "trades", "mart")

# MART's reference code keeps its logs and weights away from 0 and 1 with these offsets.
_MART_ONE_MINUS_P_OFFSET = 1.0001
_MART_LOG_EPS = 1e-12
_MART_TRUE_PROB_OFFSET = 1.0000001


@dataclasses.dataclass(frozen=True)
class MethodDefaults:
    """Reference hyperparameters of one base method (CIFAR-10, L-inf).

    Attributes:
      ac_step: weight of the AC loss in the DAC step (`stepsize` in the reference).
      epsilon, step_size, num_steps: the training attack (pixel units in [0, 1]).
      attack_start: "uniform" (AT) or "normal" (x + 0.001 N(0,1): TRADES, MART).
      attack_loss: "ce" (AT, MART) or "kl" (TRADES).
      attack_training: BatchNorm mode during the attack (AT attacks in train mode).
      beta: weight of the robust regulariser (TRADES, MART); None for AT.
      weight_decay: coupled L2 coefficient (PyTorch SGD semantics).
      learning_rate, momentum, batch_size, epochs: the reference's training setup.
      lr_schedule: "piecewise_at" or "piecewise_trades" (see `dac_tf.schedules`).
      augmentation_padding: "reflect" (AT) or "zero" (TRADES, MART).
      normalize_inputs: whether the reference normalises with CIFAR-10 mean/std.
    """

    ac_step: float
    epsilon: float
    step_size: float
    num_steps: int
    attack_start: str
    attack_loss: str
    attack_training: bool
    beta: float | None
    weight_decay: float
    learning_rate: float
    momentum: float
    batch_size: int
    epochs: int
    lr_schedule: str
    augmentation_padding: str
    normalize_inputs: bool


DEFAULTS = {
    "at": MethodDefaults(
        ac_step=0.3, epsilon=8 / 255, step_size=2 / 255, num_steps=10,
        attack_start="uniform", attack_loss="ce", attack_training=True, beta=None,
        weight_decay=5e-4, learning_rate=0.1, momentum=0.9, batch_size=128, epochs=200,
        lr_schedule="piecewise_at", augmentation_padding="reflect", normalize_inputs=True),
    "trades": MethodDefaults(
        ac_step=0.1, epsilon=0.031, step_size=0.0078, num_steps=10,
        attack_start="normal", attack_loss="kl", attack_training=False, beta=6.0,
        weight_decay=2e-4, learning_rate=0.1, momentum=0.9, batch_size=128, epochs=76,
        lr_schedule="piecewise_trades", augmentation_padding="zero",
        normalize_inputs=False),
    "mart": MethodDefaults(
        ac_step=0.3, epsilon=0.031, step_size=0.007, num_steps=10,
        attack_start="normal", attack_loss="ce", attack_training=False, beta=5.0,
        weight_decay=3.5e-3, learning_rate=0.01, momentum=0.9, batch_size=512, epochs=120,
        lr_schedule="piecewise_trades", augmentation_padding="zero",
        normalize_inputs=False),
}


def validate_method(method):
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; use one of {', '.join(METHODS)}.")


def defaults(method):
    """The reference hyperparameters of `method` ("at", "trades" or "mart")."""
    validate_method(method)
    return DEFAULTS[method]


def at_loss(adv_logits, labels):
    """PGD-AT (Madry et al.): cross-entropy on the adversarial examples, per example."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(adv_logits, tf.float32))


def trades_loss(natural_logits, adv_logits, labels, beta):
    """TRADES (Zhang et al. 2019), per example: CE(f(x), y) + beta * KL(f(x) || f(x_adv)).

    The reference sums the KL over the batch and divides by the batch size, i.e. the
    batch mean of this per-example value.
    """
    natural_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(natural_logits, tf.float32))
    return natural_ce + beta * attacks.kl_divergence(natural_logits, adv_logits)


def mart_loss(natural_logits, adv_logits, labels, beta):
    """MART (Wang et al. 2020), per example, as its reference code computes it.

    BCE-style term: CE(f(x_adv), y) - log(1.0001 - p_adv[y'] + 1e-12), y' the most likely
    class other than y; plus beta * KL(p_nat || p_adv) * (1.0000001 - p_nat[y]).
    """
    natural_logits = tf.cast(natural_logits, tf.float32)
    adv_logits = tf.cast(adv_logits, tf.float32)
    adv_probs = tf.nn.softmax(adv_logits)
    natural_probs = tf.nn.softmax(natural_logits)
    num_classes = tf.shape(adv_logits)[-1]
    onehot = tf.one_hot(labels, num_classes, dtype=adv_probs.dtype)

    # Second-best class: the top class unless it is the true one, then the runner-up.
    # (argsort(...)[-2:] in the reference; top_k breaks ties the same way for distinct
    # probabilities, which is all that matters in float arithmetic.)
    _, top2 = tf.math.top_k(adv_probs, k=2)
    top2 = tf.cast(top2, labels.dtype)
    other_class = tf.where(top2[:, 0] == labels, top2[:, 1], top2[:, 0])
    other_prob = tf.gather(adv_probs, other_class, axis=1, batch_dims=1)

    adv_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=adv_logits)
    margin_term = -tf.math.log(_MART_ONE_MINUS_P_OFFSET - other_prob + _MART_LOG_EPS)
    # KL(p_nat || p_adv) with the reference's log(p_adv + 1e-12) and xlogy(0, 0) = 0.
    kl = tf.reduce_sum(
        tf.math.xlogy(natural_probs, natural_probs)
        - natural_probs * tf.math.log(adv_probs + _MART_LOG_EPS), axis=-1)
    true_prob = tf.reduce_sum(onehot * natural_probs, axis=-1)
    return adv_ce + margin_term + beta * kl * (_MART_TRUE_PROB_OFFSET - true_prob)
