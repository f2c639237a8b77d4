"""Per-example losses of the AutoAttack components (all take float32 logits [B, K]).

- `ce_loss`: cross-entropy, maximised by APGD-CE.
- `dlr_loss`: Difference of Logits Ratio (Croce & Hein 2020, eq. 6),
  `-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)`, where `z_pi1 >= z_pi2 >= ...` are
  the sorted logits. Shift- and scale-invariant in the logits.
- `dlr_loss_targeted`: the targeted DLR loss of APGD-T,
  `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`.
- `margin`: `z_y - max_{i!=y} z_i`, the Square attack's (untargeted margin) loss, which
  it *minimises*; the point is misclassified iff the margin is <= 0. It is the negated
  Carlini-Wagner margin of `dac_tf.attacks.cw_margin`, the one implementation of
  "largest other logit minus the true logit" (for finite logits below 1e9 in magnitude
  the same float32 numbers and gradients as the official code's `-inf` masking: the
  maximum over the other logits is exact either way and negating a difference is
  exact).

The 1e-12 in the denominators is the official code's value; it only matters when the
top logits tie.
"""

import tensorflow as tf

from dac_tf import attacks

_DENOM_EPS = 1e-12


def _true_logit(logits, y):
    return tf.gather(logits, y, axis=1, batch_dims=1)


def ce_loss(logits, y):
    """Per-example softmax cross-entropy of `logits` [B, K] against labels `y` [B]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def margin(logits, y):
    """`z_y - max_{i != y} z_i` per example (negative iff misclassified, ties aside)."""
    return -attacks.cw_margin(logits, y)


def dlr_loss(logits, y):
    """Untargeted DLR loss per example; needs at least 3 classes."""
    top = tf.sort(logits, axis=1, direction="DESCENDING")
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + _DENOM_EPS)


def dlr_loss_targeted(logits, y, target):
    """Targeted DLR loss per example (target labels `target` [B]); needs >= 4 classes."""
    top = tf.sort(logits, axis=1, direction="DESCENDING")
    num = _true_logit(logits, y) - _true_logit(logits, target)
    return -num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DENOM_EPS)
