"""The arithmetic of a model and of the steps the benchmark times (counted, not measured).

Only the multiply-accumulates (MACs) of convolutions and dense layers are counted, at 2
FLOPs per MAC: a conv's forward is 2 * H_out * W_out * k_h * k_w * C_in / groups * C_out
per example, a dense layer's 2 * in * out. BatchNorm, activations, additions, pooling
and biases are left out; for the residual networks of the zoo they are well below 1%.

A backward pass is two kernels per layer, each with the forward's MAC count: the
input gradient (`Conv2DBackpropInput`; for a dense layer dY W^T) and the weight gradient
(`Conv2DBackpropFilter`; X^T dY). What a step runs, per pass over the model:

- an attack step needs the gradient with respect to the input only: forward + input
  gradient of every layer (2x the forward). TensorFlow prunes the weight gradients there
  (checked in the profiler on CPU: no `Conv2DBackpropFilter` in the attack loop, one
  `MatMul` for the dense layer's input gradient);
- an update needs the weight gradients: forward + weight gradient of every layer + the
  input gradient of every layer that has a trainable layer before it (the first conv's
  input gradient feeds nothing and is pruned, as the profiler shows: 3F - F_first);
- a forward-only pass (TRADES' KL target, the reference's BatchNorm-only forwards, the
  evaluation's final forward): the forward.
"""

import dataclasses

import keras
import numpy as np

from dac_tf import models

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
               keras.layers.DepthwiseConv2D)


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One counted layer of a model (a convolution or a dense layer), per example.

    Attributes:
      name: the Keras layer's name.
      kind: "conv2d" (a `Conv2D` without groups), "dense", or "other" (another conv
        type: counted, not timed by `dac_tf.benchmark.kernels`).
      input_shape: the layer's input without the batch axis, or None if the layer is
        called more than once (no single input).
      output_shape: its output without the batch axis.
      kernel_shape: the kernel's shape.
      strides, padding, dilation: the conv's settings (None for dense layers).
      compute_dtype: the dtype the layer computes in (the policy it was built under).
      macs: multiply-accumulates of one forward per example.
      input_grad_in_update: whether an update computes this layer's input gradient
        (False when no layer before it has trainable weights).
    """

    name: str
    kind: str
    input_shape: tuple | None
    output_shape: tuple
    kernel_shape: tuple
    strides: tuple | None
    padding: str | None
    dilation: tuple | None
    compute_dtype: str
    macs: int
    input_grad_in_update: bool

    @property
    def flops(self):
        """Forward FLOPs per example (2 per MAC)."""
        return 2 * self.macs

    @property
    def kernel_key(self):
        """What identifies the kernels' work: layers with equal keys run equal kernels."""
        return (self.kind, self.input_shape, self.output_shape, self.kernel_shape,
                self.strides, self.padding, self.dilation, self.compute_dtype)


@dataclasses.dataclass(frozen=True)
class StepPasses:
    """Passes over the model of one step, by what each computes (see the module doc).

    Attributes:
      attack: forward + input gradient (attack steps).
      update: forward + weight gradients + input gradients (weight updates).
      forward: forward only.
    """

    attack: int
    update: int
    forward: int


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        # A layer called more than once has no single `output`.
        return tuple(layer.compute_output_shape(layer.input.shape))


def _input_shape(layer):
    try:
        return tuple(layer.input.shape)[1:]
    except (AttributeError, ValueError):
        return None


def layer_shapes(model):
    """The counted layers of a model, in its layer order (nested models descended into).

    Args:
      model: a built functional or Sequential `keras.Model` (layers need static output
        shapes apart from the batch dimension).

    Returns:
      tuple of `LayerShape`; a layer shared by several calls appears once.

    Raises:
      ValueError: a conv/dense layer whose output shape is not static.
    """
    shapes, trainable_before = [], False
    for layer in _leaf_layers(model):
        counted = isinstance(layer, (*_CONV_TYPES, keras.layers.Dense))
        if counted:
            output = _output_shape(layer)
            positions = output[1:-1]
            if any(d is None for d in positions):
                raise ValueError(f"layer {layer.name} has a dynamic output shape {output}; "
                                 "counting FLOPs needs static shapes.")
            # The kernel's size is the MACs per output position for every conv type
            # (groups and depthwise included) and for dense layers.
            macs = int(np.prod(layer.kernel.shape)) * int(np.prod(positions, dtype=np.int64))
            dense = isinstance(layer, keras.layers.Dense)
            plain_conv = (type(layer) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
                          and getattr(layer, "groups", 1) == 1)
            shapes.append(LayerShape(
                name=layer.name, kind="dense" if dense else "conv2d" if plain_conv else "other",
                input_shape=_input_shape(layer), output_shape=output[1:],
                kernel_shape=tuple(layer.kernel.shape),
                strides=None if dense else tuple(layer.strides),
                padding=None if dense else str(layer.padding),
                dilation=None if dense else tuple(layer.dilation_rate),
                compute_dtype=str(layer.compute_dtype), macs=macs,
                input_grad_in_update=trainable_before))
        trainable_before = trainable_before or bool(layer.trainable_weights)
    return tuple(shapes)


def forward_flops(model):
    """Floating-point operations of one forward pass per example, from the layers.

    Args:
      model: see `layer_shapes`.

    Returns:
      int: FLOPs per example (see the module docstring for what is counted).

    Raises:
      ValueError: a conv/dense layer whose output shape is not static.
    """
    return sum(shape.flops for shape in layer_shapes(model))


def input_layer_flops(model):
    """Forward FLOPs per example of the layers whose input gradient no update computes
    (no trainable layer before them: the stem convolution of the zoo's models)."""
    return sum(s.flops for s in layer_shapes(model) if not s.input_grad_in_update)


def step_passes(method="at", use_dac=True, num_steps=10, kind="train",
                reference_bn_updates=False):
    """The passes over the model of one step of `DACModel` or of the evaluation's PGD.

    Args:
      method: "at", "trades" or "mart". TRADES' attack adds one forward (its KL target on
        the clean input); TRADES' and MART's robust loss backpropagates through the clean
        and the adversarial input (two updates' worth of passes).
      use_dac: add the AC update and the second attack.
      num_steps: attack steps.
      kind: "train", or "eval" (a PGD-`num_steps` attack plus one forward).
      reference_bn_updates: add the forwards that `DACModel(reference_bn_updates=True)`
        makes for the BatchNorm statistics only, with the method's default attack: AT one
        after each attack and one clean forward after the update; TRADES three before the
        AC update (with DAC) and one in the robust step; MART none.

    Returns:
      `StepPasses`.
    """
    if kind == "eval":
        return StepPasses(attack=num_steps, update=0, forward=1)
    attacks = 2 if use_dac else 1
    forward = attacks if method == "trades" else 0
    if reference_bn_updates:
        forward += _reference_bn_forwards(method, use_dac)
    robust_updates = 1 if method == "at" else 2
    return StepPasses(attack=attacks * num_steps, update=robust_updates + int(use_dac),
                      forward=forward)


def _reference_bn_forwards(method, use_dac):
    """Stats-only forwards per step of DACModel(reference_bn_updates=True) (see step_passes)."""
    if method == "at":
        return (2 if use_dac else 1) + 1
    if method == "trades":
        return (3 if use_dac else 0) + 1
    return 0


def step_flops(forward, method="at", use_dac=True, num_steps=10, kind="train",
               reference_bn_updates=False, input_layer_flops=0.0):
    """Arithmetic of one step per image: `step_passes` weighted as the module doc says.

    Args:
      forward: forward FLOPs per image (`forward_flops`).
      method, use_dac, num_steps, kind, reference_bn_updates: see `step_passes`.
      input_layer_flops: forward FLOPs of the layers whose input gradient an update
        does not compute (`input_layer_flops(model)`); 0 counts it.

    Returns:
      float: FLOPs per image. For DAC-AT with F = forward and F1 = input_layer_flops:
      2 x num_steps x 2F (attacks) + 2 x (3F - F1) (the AC and the robust update).
    """
    passes = step_passes(method, use_dac, num_steps, kind, reference_bn_updates)
    return (passes.attack * 2.0 * forward + passes.update * (3.0 * forward - input_layer_flops)
            + passes.forward * float(forward))


def arch_layer_shapes(arch, num_classes=10, policy="float32"):
    """`layer_shapes` of a zoo architecture on 32x32x3 images, built under a Keras dtype
    policy ("float32" or "mixed_bfloat16"); the caller's policy is restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = models.build(arch, num_classes=num_classes, input_shape=(32, 32, 3))
        shapes = layer_shapes(model)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        keras.backend.clear_session()
    return shapes
