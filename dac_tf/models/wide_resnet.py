"""WideResNet as in the TRADES / MART reference code.

The reference's BasicBlock, when the widths differ, overwrites `x` with relu(bn1(x))
and feeds that activated tensor to both conv1 and the 1x1 shortcut; when they match, the
shortcut is the raw input. Its unused `sub_block1` has no counterpart here (it never
runs and is not part of the parameter count).
"""

import keras

from dac_tf.models import layers


def _basic_block(x, in_planes, out_planes, stride, dropout, name):
    """One reference BasicBlock: bn1-relu-conv1-bn2-relu-(dropout)-conv2 + shortcut."""
    init = layers.kaiming_normal_fan_out
    equal_in_out = in_planes == out_planes
    activated = layers.batch_norm(name + "_bn1")(x)
    activated = keras.layers.ReLU(name=name + "_relu1")(activated)
    if equal_in_out:
        shortcut = x
    else:
        shortcut = layers.conv1x1(activated, out_planes, stride, init(),
                                  name + "_conv_shortcut")
    out = layers.conv3x3(activated, out_planes, stride, init(), name + "_conv1")
    out = layers.batch_norm(name + "_bn2")(out)
    out = keras.layers.ReLU(name=name + "_relu2")(out)
    if dropout > 0:
        out = keras.layers.Dropout(dropout, name=name + "_dropout")(out)
    out = layers.conv3x3(out, out_planes, 1, init(), name + "_conv2")
    return keras.layers.Add(name=name + "_add")([shortcut, out])


def wide_resnet(num_classes=10, input_shape=(32, 32, 3), normalization=None, depth=34,
                widen_factor=10, dropout=0.0):
    """WideResNet-depth-widen_factor (default WRN-34-10, the paper's large model).

    Stem 3x3 conv of 16 channels, three groups of (depth - 4) / 6 BasicBlocks of widths
    16k, 32k, 64k with strides 1, 2, 2, final BN-ReLU, global average pooling and a
    Linear layer. Convs: kaiming_normal(fan_out, relu), no bias; Linear bias zero.

    Args:
      num_classes: number of logits.
      input_shape: (height, width, channels) of [0, 1] float images.
      normalization: see `dac_tf.models.build`.
      depth: total depth; (depth - 4) must be divisible by 6.
      widen_factor: width multiplier k.
      dropout: dropout rate between the two convs of each block (0 in the paper).

    Returns:
      A functional `keras.Model` returning float32 logits, named
      "wide_resnet{depth}_{widen_factor}".

    Raises:
      ValueError: depth, widen_factor or dropout out of range.
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be an integer >= 10 with (depth - 4) % 6 "
                         f"== 0 (e.g. 10, 16, 28, 34), got {depth!r}.")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"widen_factor must be a positive integer, got {widen_factor!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    blocks_per_group = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

    inputs, x = layers.inputs_and_normalization(input_shape, normalization)
    x = layers.conv3x3(x, widths[0], 1, layers.kaiming_normal_fan_out(), "conv1")
    for group, stride in enumerate((1, 2, 2), start=1):
        for i in range(blocks_per_group):
            in_planes = widths[group - 1] if i == 0 else widths[group]
            x = _basic_block(x, in_planes, widths[group], stride if i == 0 else 1,
                             dropout, f"block{group}_layer{i}")
    x = layers.batch_norm("bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.logits_head(x, num_classes, zero_bias=True)
    return keras.Model(inputs, logits, name=f"wide_resnet{depth}_{widen_factor}")
