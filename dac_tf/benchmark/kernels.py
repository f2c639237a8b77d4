"""The ceiling a step is measured against: its own kernels, timed alone on this device.

For each distinct shape of a model's convolutions and dense layers at a batch size,
three kernels are timed in TensorFlow, in the dtype the layer computes in and, for the
XLA modes, compiled with XLA:

- forward: `tf.nn.conv2d` (the `Conv2D` op Keras' Conv2D runs); dense: X W;
- input gradient: `tf.nn.conv2d_transpose` (`Conv2DBackpropInput`, what the backward
  pass runs); dense: dY W^T;
- weight gradient: `tf.raw_ops.Conv2DBackpropFilter`; dense: X^T dY.

Each is timed as `dac_tf.benchmark.timing.time_runs` times a step. A call runs the
kernel several times, each waiting for the previous (as a step's kernels wait for their
inputs), as many as fill about `CALL_SECONDS` (at most `MAX_REPEATS`; a first call of
one kernel says how long it takes), so the call's dispatch is a small part of each
kernel's time. The operands are random and held in variables (a captured constant would
be folded when the graph is optimised: the kernel would run once, before the timing).
Without XLA every repeat reads the same operands (Grappler keeps the repeats: their
control inputs differ); XLA merges identical kernels, so there each repeat has its own
operands. The median run gives the seconds per kernel.

`ideal_step_seconds` weighs those times by what a step runs (`flops.step_passes`): the
time the step would take if it did nothing but its kernels, each at the speed measured
alone. A step's FLOPs over that time is the measured rate it is compared with
(`measured_gflop_per_s`), and that rate over the step's achieved rate is the fraction of
the measured kernel rate the whole step reaches.
"""

import functools
import math

import tensorflow as tf

from dac_tf.benchmark import timing

OPS = ("forward", "input_grad", "weight_grad")
# A call repeats the kernel to last about this long, at most MAX_REPEATS times (under
# XLA, with at most _XLA_OPERAND_BYTES of distinct operands).
CALL_SECONDS = 0.02
MAX_REPEATS = 32
_XLA_OPERAND_BYTES = 2**30


def describe(shape):
    """A short text of a layer shape, e.g. "conv 34x34x64 k3x3 s2 valid -> 16x16x128"."""
    if shape.kind == "dense":
        return f"dense {shape.kernel_shape[0]} -> {shape.kernel_shape[1]}"
    h, w = shape.kernel_shape[:2]
    dims = "x".join(map(str, shape.input_shape or ("?",)))
    out = "x".join(map(str, shape.output_shape))
    dilation = "" if set(shape.dilation) == {1} else f" d{shape.dilation[0]}"
    return f"conv {dims} k{h}x{w} s{shape.strides[0]}{dilation} {shape.padding} -> {out}"


def _operands(shape, batch_size, dtype, seed):
    """(x, w, dy) of one layer at a batch size, random in [0, 1), as variables: a
    captured constant would be folded at graph optimisation (the kernel computed once,
    before the timing), a variable is read when the kernel runs."""
    if shape.kind == "dense":
        rows = batch_size
        for d in shape.output_shape[:-1]:
            rows *= d   # a dense layer on [N, ..., in] multiplies N * ... rows
        x_shape, dy_shape = (rows, shape.kernel_shape[0]), (rows, shape.kernel_shape[1])
    else:
        x_shape = (batch_size, *shape.input_shape)
        dy_shape = (batch_size, *shape.output_shape)
    draw = lambda s, k: tf.Variable(tf.cast(  # noqa: E731
        tf.random.stateless_uniform(s, seed=[seed, k]), dtype), trainable=False)
    return draw(x_shape, 0), draw(shape.kernel_shape, 1), draw(dy_shape, 2)


def kernel_fn(shape, op):
    """The function `f(x, w, dy)` computing one kernel of a layer.

    Args:
      shape: a `flops.LayerShape` of kind "conv2d" or "dense".
      op: one of `OPS`.

    Returns:
      forward: the layer's output for input x and kernel w (no bias); input_grad: the
      gradient of sum(output * dy) with respect to x; weight_grad: the same with respect
      to w.
    """
    if shape.kind == "dense":
        return {"forward": lambda x, w, dy: tf.linalg.matmul(x, w),
                "input_grad": lambda x, w, dy: tf.linalg.matmul(dy, w, transpose_b=True),
                "weight_grad": lambda x, w, dy: tf.linalg.matmul(x, dy, transpose_a=True),
                }[op]
    strides = [1, *shape.strides, 1]
    dilations = [1, *shape.dilation, 1]
    padding = shape.padding.upper()
    if op == "forward":
        return lambda x, w, dy: tf.nn.conv2d(x, w, strides, padding, dilations=dilations)
    if op == "input_grad":
        return lambda x, w, dy: tf.nn.conv2d_transpose(
            dy, w, tf.shape(x), strides, padding, dilations=dilations)
    return lambda x, w, dy: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=strides,
        padding=padding, dilations=dilations)


def _repeated(kernel, operand_sets):
    """The kernel on each operand set in turn, each waiting for the previous. Every
    output is returned: a kernel whose output fed only a control dependency would be
    replaced by a no-op (Grappler's dependency optimizer). The operands are captured
    variables, not arguments: a call costs no argument handling."""
    outputs = []
    for operands in operand_sets:
        with tf.control_dependencies(outputs[-1:]):
            outputs.append(kernel(*operands))
    return outputs


def _seconds_per_call(call, warmup, runs, steps):
    def run(num):
        out = None
        for _ in range(num):
            out = call()
        return tf.reshape(out[-1], [-1])[:1]   # one element: cheap to fetch

    return timing.time_runs(run, warmup=warmup, runs=runs, steps=steps).step_s


def time_layer_kernels(shape, batch_size, *, jit_compile=False, warmup=1, runs=3, steps=3,
                       seed=0):
    """Seconds per kernel of each op of one layer shape (the module docstring).

    Args:
      shape: a `flops.LayerShape` of kind "conv2d" or "dense" with an input shape.
      batch_size: examples per call.
      jit_compile: compile each kernel with XLA.
      warmup, runs, steps: as `timing.time_runs` (steps: calls per timed run).
      seed: seed of the random operands.

    Returns:
      dict op -> median seconds per kernel, for the ops of `OPS`.

    Raises:
      ValueError: a layer kind that is not timed ("other": grouped, depthwise or
        non-2D convolutions) or a layer without a single input shape.
    """
    if shape.kind not in ("conv2d", "dense") or (shape.kind == "conv2d"
                                                 and shape.input_shape is None):
        raise ValueError(f"layer {shape.name}: only Conv2D (no groups) and Dense layers "
                         "called once are timed.")
    operand_sets = [_operands(shape, batch_size, shape.compute_dtype, seed)]
    seconds = {}
    for op in OPS:
        kernel = kernel_fn(shape, op)
        single = tf.function(functools.partial(_repeated, kernel, operand_sets[:1]),
                             jit_compile=jit_compile)
        once = _seconds_per_call(single, warmup=1, runs=1, steps=1)
        repeats = int(min(MAX_REPEATS, max(1, math.ceil(CALL_SECONDS / once))))
        if jit_compile:
            size = sum(v.shape.num_elements() * v.dtype.size for v in operand_sets[0])
            repeats = max(1, min(repeats, _XLA_OPERAND_BYTES // size))
            operand_sets += [_operands(shape, batch_size, shape.compute_dtype, seed + k)
                             for k in range(len(operand_sets), repeats)]
            sets = operand_sets[:repeats]
        else:
            sets = operand_sets[:1] * repeats
        call = tf.function(functools.partial(_repeated, kernel, sets),
                           jit_compile=jit_compile)
        seconds[op] = _seconds_per_call(call, warmup, runs, steps) / repeats
    return seconds


def measure_model_kernels(shapes, batch_size, *, jit_compile=False, warmup=1, runs=3,
                          steps=3, seed=0):
    """Times the kernels of every distinct layer shape of a model (`time_layer_kernels`).

    Args:
      shapes: `flops.layer_shapes(model)` of a model built under the dtype policy to time.
      batch_size, jit_compile, warmup, runs, steps, seed: see `time_layer_kernels`.

    Returns:
      list of dicts, one per distinct shape in model order: `layer` (`describe`),
      `count` (layers of that shape), `count_input_grad_in_update` (those whose input
      gradient an update computes), `gflop` (one kernel over the batch: every op has
      the forward's MACs), `<op>_ms` and `<op>_gflop_per_s` for each op of `OPS`.
    """
    groups = {}
    for shape in shapes:
        group = groups.setdefault(shape.kernel_key, {"shape": shape, "count": 0, "in": 0})
        group["count"] += 1
        group["in"] += int(shape.input_grad_in_update)
    entries = []
    for group in groups.values():
        shape = group["shape"]
        seconds = time_layer_kernels(shape, batch_size, jit_compile=jit_compile,
                                     warmup=warmup, runs=runs, steps=steps, seed=seed)
        gflop = shape.flops * batch_size / 1e9
        entry = {"layer": describe(shape), "dtype": shape.compute_dtype,
                 "count": group["count"], "count_input_grad_in_update": group["in"],
                 "gflop": gflop}
        for op in OPS:
            entry[f"{op}_ms"] = 1000.0 * seconds[op]
            entry[f"{op}_gflop_per_s"] = gflop / seconds[op]
        entries.append(entry)
    return entries


def _weights(entry, passes):
    """How many times one step runs each kernel of an entry's layers."""
    count, in_update = entry["count"], entry["count_input_grad_in_update"]
    return {"forward": count * (passes.attack + passes.update + passes.forward),
            "input_grad": count * passes.attack + in_update * passes.update,
            "weight_grad": count * passes.update}


def ideal_step_seconds(entries, passes):
    """Seconds of one step's kernels at the measured speeds (`measure_model_kernels`
    entries, `flops.StepPasses`): what the step would take doing only its kernels."""
    return sum(n * entry[f"{op}_ms"] / 1000.0
               for entry in entries for op, n in _weights(entry, passes).items())


def step_gflop(entries, passes):
    """GFLOP of one step over the batch, from the entries (equals
    `flops.step_flops` x batch: the same count, summed per layer)."""
    return sum(n * entry["gflop"] for entry in entries
               for n in _weights(entry, passes).values())


def summary(entries):
    """Rates over all entries, each kernel of each layer once: GFLOP / seconds, per op
    and for the three ops together (`kernel_gflop_per_s`)."""
    totals = {}
    for op in OPS:
        work = sum(e["count"] * e["gflop"] for e in entries)
        seconds = sum(e["count"] * e[f"{op}_ms"] / 1000.0 for e in entries)
        totals[op] = (work, seconds)
    out = {f"{op}_gflop_per_s": w / s for op, (w, s) in totals.items()}
    out["kernel_gflop_per_s"] = (sum(w for w, _ in totals.values())
                                 / sum(s for _, s in totals.values()))
    return out
