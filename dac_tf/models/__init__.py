"""Model zoo: every model takes [0, 1] float images and returns float32 logits.

    model = dac_tf.models.build("preact_resnet18", num_classes=10,
                                normalization="cifar10")

Layers reproduce the PyTorch reference's defaults (BatchNorm momentum and epsilon,
initialisers, symmetric padding on stride-2 convs), so the models are the same functions
the published numbers were obtained with. Normalisation, if any, is a layer inside the
model, so attacks work in [0, 1] pixel space.
"""

import functools

from dac_tf.models.layers import ChannelNormalization
from dac_tf.models.preact_resnet import preact_resnet18
from dac_tf.models.small_cnn import small_cnn
from dac_tf.models.wide_resnet import wide_resnet

_BUILDERS = {
    "preact_resnet18": preact_resnet18,
    "wide_resnet34_10": functools.partial(wide_resnet, depth=34, widen_factor=10),
    "wide_resnet": wide_resnet,
    "small_cnn": small_cnn,
}

ARCHITECTURES = tuple(_BUILDERS)


# The named normalisations `build` takes (a (mean, std) pair is the other form).
NORMALIZATIONS = ("none", "cifar10")


def build(name, num_classes=10, input_shape=(32, 32, 3), normalization=None, **kwargs):
    """Builds a model of the zoo.

    Args:
      name: one of `ARCHITECTURES`: "preact_resnet18", "wide_resnet34_10",
        "wide_resnet" (kwargs depth=34, widen_factor=10, dropout=0.0) or "small_cnn"
        (kwarg widths).
      num_classes: number of logits.
      input_shape: (height, width, channels) of the float images in [0, 1].
      normalization: None or "none" (no normalisation, as the TRADES/MART reference),
        "cifar10" (per-channel CIFAR-10 mean/std, as the AT reference), or a (mean, std)
        pair of per-channel sequences. (Which one a method's reference uses is the
        training config's business: `dac_tf.config.TrainConfig.normalization`.)
      **kwargs: architecture-specific options (see each builder).

    Returns:
      A functional `keras.Model` returning float32 logits.

    Raises:
      ValueError: unknown name, bad normalization, or bad architecture options.
      TypeError: a keyword argument the architecture does not take.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown architecture {name!r}; valid names: "
                         f"{', '.join(ARCHITECTURES)}.")
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r} is not valid; use None or "
                             "'none', 'cifar10', or a (mean, std) pair of per-channel "
                             "sequences.")
        normalization = None if normalization == "none" else normalization
    return _BUILDERS[name](num_classes=num_classes, input_shape=tuple(input_shape),
                           normalization=normalization, **kwargs)


__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "ChannelNormalization", "build", "preact_resnet18",
           "small_cnn", "wide_resnet"]
