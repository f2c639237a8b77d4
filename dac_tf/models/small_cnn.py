"""A small, fast conv net for tests and quick CPU runs (e.g. 8x8 digits)."""

import keras

from dac_tf.models import layers


def small_cnn(num_classes=10, input_shape=(32, 32, 3), normalization=None,
              widths=(32, 64, 64)):
    """Conv-BN-ReLU blocks (first stride 1, then stride 2), global pool, Linear.

    Global pooling makes it work on any input of at least 8x8. With the default widths
    it has about 57k parameters.

    Args:
      num_classes: number of logits.
      input_shape: (height, width, channels) of [0, 1] float images.
      normalization: see `dac_tf.models.build`.
      widths: output channels of each conv block.

    Returns:
      A functional `keras.Model` named "small_cnn" returning float32 logits.

    Raises:
      ValueError: input smaller than 8x8 or empty widths.
    """
    height, width = input_shape[0], input_shape[1]
    if height is not None and width is not None and min(height, width) < 8:
        raise ValueError(f"small_cnn needs inputs of at least 8x8, got {input_shape!r}.")
    if not widths:
        raise ValueError("small_cnn needs at least one conv width.")
    inputs, x = layers.inputs_and_normalization(input_shape, normalization)
    for i, filters in enumerate(widths, start=1):
        x = layers.conv3x3(x, filters, 1 if i == 1 else 2,
                           layers.torch_default_conv_init(), f"conv{i}")
        x = layers.batch_norm(f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.logits_head(x, num_classes, zero_bias=False)
    return keras.Model(inputs, logits, name="small_cnn")
