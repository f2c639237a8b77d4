"""The reference code's train-mode forwards that only move the BatchNorm statistics.

Every train-mode forward moves the BatchNorm moving statistics (momentum 0.1 in
PyTorch), so the forwards the reference makes without using their result still shape
the statistics used at test time. With `DACModel(reference_bn_updates=True)` these
functions replay them, per method and in the reference's order, outside any gradient
tape; with False they do nothing. The reference is TrustMLRG/AdvCertainty:
dac_at_cifar10.py, dac_trades_cifar10.py with trades.py, dac_mart_cifar10.py with
mart.py (MART makes no such forward).

Each takes the `DACModel` (its `method`, `attack_training`, `reference_bn_updates` and
`base_model`) and the batch.
"""

import tensorflow as tf


def _forward(model, images):
    """A train-mode forward kept only for its BN updates (and, for AT, its logits)."""
    return tf.stop_gradient(tf.cast(model.base_model(images, training=True), tf.float32))


def _after_attack(model, adv_images):
    # dac_at_cifar10.py `attack_pgd` ends each restart with
    # `all_loss = F.cross_entropy(model(normalize(X + delta)), y, reduction='none')`
    # on the final point, in the attack's BN mode (train mode in the reference).
    if model.method == "at" and model.attack_training:
        _forward(model, adv_images)


def before_ac_update(model, images, adv_images):
    """The reference's stats-only forwards between phase A's attack and its update."""
    if not model.reference_bn_updates:
        return
    _after_attack(model, adv_images)
    if model.method == "trades":
        # dac_trades_cifar10.py gets the AC step's x_adv from trades.py `trades_loss`
        # and discards its loss, but its train-mode forwards run: `model(x_natural)`,
        # then, inside the KL term (arguments evaluated left to right), `model(x_adv)`
        # and `model(x_natural)`.
        for inputs in (images, adv_images, images):
            _forward(model, inputs)


def before_robust_update(model, images, adv_images):
    """The reference's stats-only forwards between phase B's attack and its update."""
    if not model.reference_bn_updates:
        return
    _after_attack(model, adv_images)
    if model.method == "trades":
        # trades.py `trades_loss`: `logits = model(x_natural)` comes first; see
        # `DACModel.robust_loss` for why it only needs to move the statistics.
        _forward(model, images)


def after_robust_update(model, images):
    """AT: the reference's clean forward after the update; its logits, else None."""
    if model.reference_bn_updates and model.method == "at":
        # dac_at_cifar10.py's train loop: `output = model(normalize(X))` after
        # `opt.step()`, in train mode; it feeds the logged Train Acc.
        return _forward(model, images)
    return None
