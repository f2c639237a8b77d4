"""Adversarial certainty (AC): how spread out a model's logits are.

The paper (Definition 1) measures AC as the population variance of the logits over the
class axis; the authors' reference code, which produced the published numbers, uses the
standard deviation with Bessel's correction (divide by m - 1). `tf.math.reduce_std`
divides by m, so neither is a one-liner and both are written out here.
"""

import tensorflow as tf

MEASURES = ("std", "var")


def validate_measure(measure):
    """Raises ValueError naming the valid measures if `measure` is not one."""
    if measure not in MEASURES:
        raise ValueError(
            f"ac_measure={measure!r} is not valid; use one of {', '.join(MEASURES)} "
            "('std': reference code, unbiased std over classes; 'var': the paper's "
            "Definition 1, population variance)."
        )


def per_example_certainty(logits, measure="std"):
    """AC of each example: spread of its logits over the class axis.

    Args:
      logits: float tensor [batch, num_classes]. Computed in float32 whatever the
        input dtype (mixed precision).
      measure: "std" (unbiased standard deviation, the reference code) or "var"
        (population variance, the paper's Definition 1).

    Returns:
      float32 tensor [batch].
    """
    validate_measure(measure)
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    centered = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
    sum_sq = tf.reduce_sum(tf.square(centered), axis=-1)
    if measure == "var":
        return sum_sq / num_classes
    # sqrt has an infinite derivative at 0 (all logits equal, e.g. a freshly zeroed
    # head); a tiny floor keeps the AC gradient finite without changing any value
    # that matters (1e-12 squared-logit units).
    return tf.sqrt(tf.maximum(sum_sq / (num_classes - 1.0), 1e-24))


def adversarial_certainty(logits, measure="std"):
    """Batch AC: the mean over the batch of `per_example_certainty`.

    Args:
      logits: float tensor [batch, num_classes], usually logits on adversarial inputs.
      measure: "std" (reference code) or "var" (paper's Definition 1).

    Returns:
      float32 scalar.
    """
    return tf.reduce_mean(per_example_certainty(logits, measure))
