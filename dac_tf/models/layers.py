"""Building blocks shared by the model zoo, matching the PyTorch reference's defaults.

The published numbers come from PyTorch models, so every layer here reproduces a PyTorch
default that Keras does not share: BatchNorm momentum/epsilon, the initialisers, and
`padding=1` on stride-2 convolutions (Keras "same" pads only bottom/right there).
"""

import math

import keras
import numpy as np

# PyTorch BatchNorm2d(momentum=0.1, eps=1e-5); Keras' momentum is the complement.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@keras.saving.register_keras_serializable(package="dac_tf")
class ChannelNormalization(keras.layers.Layer):
    """Per-channel `(x - mean) / std` on the last axis, with fixed constants.

    The zoo builds Keras' own `Normalization` instead (`normalization_layer`, the same
    numbers, loadable without dac_tf); this layer stays for models saved before that
    and for a std below 1e-7.

    Lives inside the model so that attacks, clipping and the epsilon ball all work on
    [0, 1] images, as in the reference code.

    Args:
      mean: sequence of floats, one per channel.
      std: sequence of positive floats, one per channel.
      **kwargs: passed to `keras.layers.Layer` (name, dtype, ...).
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in np.ravel(mean)]
        self.std = [float(s) for s in np.ravel(std)]
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"normalization mean has {len(self.mean)} values but std has "
                f"{len(self.std)}; give one of each per channel.")
        if not self.std or min(self.std) <= 0:
            raise ValueError(f"normalization std must be positive, got {self.std}.")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels != len(self.mean):
            raise ValueError(
                f"normalization has {len(self.mean)} mean/std values but the input has "
                f"{channels} channels (input shape {tuple(input_shape)}).")
        super().build(input_shape)

    def call(self, inputs):
        mean = keras.ops.convert_to_tensor(self.mean, dtype=inputs.dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std))
        return config


def resolve_normalization(normalization):
    """Turns the `normalization` argument of `build` into (mean, std) or None.

    Args:
      normalization: None or "auto" (no normalisation, as the TRADES/MART reference),
        "cifar10" (the AT reference's per-channel CIFAR-10 statistics), or a
        `(mean, std)` pair of per-channel sequences.

    Returns:
      None, or a `(mean, std)` pair of float tuples.

    Raises:
      ValueError: for any other value.
    """
    if normalization is None or (isinstance(normalization, str)
                                 and normalization == "auto"):
        return None
    if isinstance(normalization, str):
        if normalization == "cifar10":
            return CIFAR10_MEAN, CIFAR10_STD
        raise ValueError(
            f"normalization={normalization!r} is not valid; use None, 'auto', 'cifar10' "
            "or a (mean, std) pair of per-channel sequences.")
    try:
        mean, std = normalization
        mean = tuple(float(m) for m in np.ravel(mean))
        std = tuple(float(s) for s in np.ravel(std))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"normalization={normalization!r} is not valid; use None, 'auto', 'cifar10' "
            "or a (mean, std) pair of per-channel sequences.") from err
    return mean, std


def inputs_and_normalization(input_shape, normalization):
    """The model input and, if asked for, the normalisation applied to it.

    Args:
      input_shape: (height, width, channels) of the [0, 1] float images.
      normalization: as for `resolve_normalization`.

    Returns:
      (inputs, x): the `keras.Input` and the tensor the network body starts from.

    Raises:
      ValueError: bad normalization, or mean/std lengths that differ from the channels.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got "
                         f"{input_shape!r}.")
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    stats = resolve_normalization(normalization)
    if stats is None:
        return inputs, inputs
    channels = input_shape[-1]
    if channels is not None and len(stats[0]) != channels:
        raise ValueError(
            f"normalization has {len(stats[0])} mean/std values but the input has "
            f"{channels} channels (input shape {tuple(input_shape)}).")
    return inputs, normalization_layer(*stats)(inputs)


def normalization_layer(mean, std, name="normalization"):
    """Per-channel `(x - mean) / std` as Keras' built-in `Normalization` layer.

    Built in, so a `.keras` file of a zoo model loads with Keras alone (no
    `import dac_tf`). Keras computes `(x - mean) / max(sqrt(variance), 1e-7)`; with
    `variance` the float32 square of the float32 std, `sqrt` gives that std back
    exactly (the square root of a correctly rounded square is the number itself in
    binary floating point), so the layer computes the reference's `(x - mean) / std`
    bit for bit, as `ChannelNormalization` does.

    Args:
      mean, std: per-channel sequences (std positive).
      name: the layer's name.

    Returns:
      A `keras.layers.Normalization`, or a `ChannelNormalization` for a std below
      Keras' epsilon (1e-7), where Keras' `max` would change the value.
    """
    std32 = np.asarray(std, np.float32).ravel()
    if std32.size == 0 or not np.all(std32 >= keras.config.epsilon()):
        return ChannelNormalization(mean, std, name=name)
    if np.ravel(mean).size != std32.size:
        raise ValueError(
            f"normalization mean has {np.ravel(mean).size} values but std has "
            f"{std32.size}; give one of each per channel.")
    variance = [float(v) for v in std32 * std32]   # float32 products, exact in JSON
    return keras.layers.Normalization(axis=-1, mean=[float(m) for m in np.ravel(mean)],
                                      variance=variance, name=name)


def torch_default_conv_init():
    """PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)).

    Its gain sqrt(2 / (1 + 5)) times the uniform bound sqrt(3 / fan_in) gives
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is VarianceScaling with scale 1/3.
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def kaiming_normal_fan_out():
    """torch kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2/fan_out).

    PyTorch samples an untruncated normal; Keras' "he_normal" is truncated and fan_in.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal")


def batch_norm(name):
    """BatchNorm with PyTorch's momentum 0.1 (Keras 0.9) and epsilon 1e-5."""
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv3x3(x, filters, stride, kernel_initializer, name):
    """3x3 conv without bias and PyTorch padding=1 (one pixel on every side).

    Args:
      x: input tensor, channels last.
      filters: output channels.
      stride: 1 or 2.
      kernel_initializer: a fresh Keras initializer.
      name: layer name; the explicit padding layer gets `name + "_pad"`.

    Returns:
      The output tensor.
    """
    if stride == 1:
        # Stride 1 with an odd kernel: "same" pads 1 on every side, as PyTorch does.
        padding = "same"
    else:
        # "same" with stride 2 pads only bottom/right, shifting every sampled window.
        x = keras.layers.ZeroPadding2D(1, name=name + "_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, 3, strides=stride, padding=padding, use_bias=False,
                               kernel_initializer=kernel_initializer, name=name)(x)


def conv1x1(x, filters, stride, kernel_initializer, name):
    """1x1 shortcut conv without bias, padding 0 (same function in both frameworks)."""
    return keras.layers.Conv2D(filters, 1, strides=stride, padding="valid", use_bias=False,
                               kernel_initializer=kernel_initializer, name=name)(x)


def logits_head(x, num_classes, zero_bias, name="logits"):
    """Final BN-free linear layer with PyTorch's default nn.Linear init.

    Kept in float32 so mixed-precision models still return float32 logits.

    Args:
      x: [batch, features] tensor.
      num_classes: number of logits.
      zero_bias: True for the WideResNet reference (bias zeroed), False for PyTorch's
        default bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
      name: layer name.

    Returns:
      float32 logits [batch, num_classes].
    """
    fan_in = x.shape[-1]
    if zero_bias:
        bias_initializer = keras.initializers.Zeros()
    else:
        bound = 1.0 / math.sqrt(fan_in)
        bias_initializer = keras.initializers.RandomUniform(-bound, bound)
    return keras.layers.Dense(num_classes, kernel_initializer=torch_default_conv_init(),
                              bias_initializer=bias_initializer, dtype="float32",
                              name=name)(x)
