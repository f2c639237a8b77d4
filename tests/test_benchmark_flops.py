"""dac_tf.benchmark.flops: the FLOP counter and the step's passes against hand counts."""

import keras
import pytest

from dac_tf import models
from dac_tf.benchmark import flops


def tiny_model():
    """conv (8x8x3 -> 8x8x4, 'same'), BN, ReLU, conv (s2 valid -> 3x3x5), dense 45 -> 7."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)          # out 8x8x4
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="valid")(x)   # out 3x3x5
    x = keras.layers.Flatten()(x)                                  # 45
    outputs = keras.layers.Dense(7)(x)
    return keras.Model(inputs, outputs)


CONV1 = 2 * (8 * 8) * (3 * 3 * 3 * 4)     # H_out W_out k k C_in C_out, 2 per MAC
CONV2 = 2 * (3 * 3) * (3 * 3 * 4 * 5)
DENSE = 2 * 45 * 7


def test_forward_flops_tiny_model_by_hand():
    assert flops.forward_flops(tiny_model()) == CONV1 + CONV2 + DENSE == 17694


def test_forward_flops_descends_into_nested_models():
    inner = tiny_model()
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(inner(outer_in)))
    assert flops.forward_flops(outer) == 17694 + 2 * 7 * 2


def test_forward_flops_preact_resnet18_by_hand():
    def conv(hw, k, cin, cout):
        return hw * hw * k * k * cin * cout
    macs = conv(32, 3, 3, 64) + 4 * conv(32, 3, 64, 64)
    for hw, cin, cout in ((16, 64, 128), (8, 128, 256), (4, 256, 512)):
        # First block: strided conv1, conv2, 1x1 shortcut; second block: two convs.
        macs += conv(hw, 3, cin, cout) + 3 * conv(hw, 3, cout, cout) + conv(hw, 1, cin, cout)
    macs += 512 * 10
    model = models.build("preact_resnet18")
    assert flops.forward_flops(model) == 2 * macs
    assert 2 * macs == 1_110_845_440
    # Only the stem conv has no trainable layer before it.
    assert flops.input_layer_flops(model) == 2 * conv(32, 3, 3, 64)


def test_layer_shapes_say_which_input_gradients_an_update_needs():
    shapes = flops.layer_shapes(tiny_model())
    assert [(s.kind, s.input_shape, s.output_shape) for s in shapes] == [
        ("conv2d", (8, 8, 3), (8, 8, 4)), ("conv2d", (8, 8, 4), (3, 3, 5)),
        ("dense", (45,), (7,))]
    assert [s.input_grad_in_update for s in shapes] == [False, True, True]
    assert [s.strides for s in shapes] == [(1, 1), (2, 2), None]
    assert flops.input_layer_flops(tiny_model()) == CONV1


def test_step_flops_dac_at_is_two_attacks_and_two_updates():
    f, f1 = 1000.0, 100.0
    # An attack step is forward + input gradient (2F); an update is forward + weight
    # gradients + the input gradients below the first layer (3F - F1).
    assert flops.step_flops(f, "at", True, 10, input_layer_flops=f1) == (
        2 * 10 * 2 * f + 2 * (3 * f - f1))
    assert flops.step_flops(f, "at", False, 10) == 10 * 2 * f + 3 * f
    # TRADES: a clean forward in the attack, clean + adversarial in the update.
    assert flops.step_flops(f, "trades", False, 10) == 10 * 2 * f + f + 2 * 3 * f
    assert flops.step_flops(f, "mart", True, 10) == 2 * 10 * 2 * f + 3 * f + 2 * 3 * f
    # PGD-20 evaluation: 20 attack steps and the final forward.
    assert flops.step_flops(f, num_steps=20, kind="eval") == 20 * 2 * f + f


@pytest.mark.parametrize("method, use_dac, extra_forwards", [
    ("at", True, 3),        # one after each of the two attacks + the clean forward
    ("at", False, 2),
    ("trades", True, 4),    # the discarded trades_loss (3) + the robust step's first natural
    ("trades", False, 1),
    ("mart", True, 0),
])
def test_step_flops_counts_the_reference_bn_forwards(method, use_dac, extra_forwards):
    f = 1000.0
    plain = flops.step_flops(f, method, use_dac, 10)
    assert flops.step_flops(f, method, use_dac, 10, reference_bn_updates=True) == (
        plain + extra_forwards * f)
    passes = flops.step_passes(method, use_dac, 10, reference_bn_updates=True)
    assert passes.forward - flops.step_passes(method, use_dac, 10).forward == extra_forwards
