"""PreActResNet-18 (He et al., identity mappings), as in the robust-overfitting code base.

Layer names follow the PyTorch module paths (`layer2_block0_conv1` is
`layer2[0].conv1`), so weights can be copied across for checks.
"""

import keras

from dac_tf.models import layers

_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _preact_block(x, in_planes, planes, stride, name):
    """PreActBlock: out = relu(bn1(x)); the shortcut projects `out`, not `x`."""
    init = layers.torch_default_conv_init
    out = layers.batch_norm(name + "_bn1")(x)
    out = keras.layers.ReLU(name=name + "_relu1")(out)
    if stride != 1 or in_planes != planes:
        shortcut = layers.conv1x1(out, planes, stride, init(), name + "_shortcut")
    else:
        shortcut = x
    out = layers.conv3x3(out, planes, stride, init(), name + "_conv1")
    out = layers.batch_norm(name + "_bn2")(out)
    out = keras.layers.ReLU(name=name + "_relu2")(out)
    out = layers.conv3x3(out, planes, 1, init(), name + "_conv2")
    return keras.layers.Add(name=name + "_add")([out, shortcut])


def preact_resnet18(num_classes=10, input_shape=(32, 32, 3), normalization=None):
    """PreActResNet-18: 3x3 stem, blocks [2, 2, 2, 2] of widths 64-128-256-512.

    Convolutions use PyTorch's default init (kaiming_uniform, a=sqrt(5)) and no bias;
    the head is final BN-ReLU, global average pooling (the reference's 4x4 average pool
    on 32x32 inputs) and a PyTorch-default Linear layer.

    Args:
      num_classes: number of logits.
      input_shape: (height, width, channels) of [0, 1] float images.
      normalization: see `dac_tf.models.build`.

    Returns:
      A functional `keras.Model` named "preact_resnet18" returning float32 logits.
    """
    inputs, x = layers.inputs_and_normalization(input_shape, normalization)
    x = layers.conv3x3(x, 64, 1, layers.torch_default_conv_init(), "conv1")
    in_planes = 64
    for stage, (planes, stride) in enumerate(_STAGES, start=1):
        for block in range(2):
            x = _preact_block(x, in_planes, planes, stride if block == 0 else 1,
                              f"layer{stage}_block{block}")
            in_planes = planes
    x = layers.batch_norm("bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.logits_head(x, num_classes, zero_bias=False)
    return keras.Model(inputs, logits, name="preact_resnet18")
