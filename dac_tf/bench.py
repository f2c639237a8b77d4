r"""Throughput benchmark of the DAC training step and of PGD-20 evaluation.

    python -m dac_tf.bench --arch=preact_resnet18 --method=at --use_dac=both \
        --batch_size=128 --modes=fp32,bf16,xla,bf16_xla --output=bench.json

    # CPU smoke run (a regression check any developer can run in ~1 minute):
    python -m dac_tf.bench --arch=small_cnn --method=at --batch_size=32 --steps=3 \
        --runs=5 --modes=fp32

    # The cost of the reference's BatchNorm-only forwards (DACModel reference_bn_updates):
    python -m dac_tf.bench --arch=small_cnn --method=at,trades --batch_size=32 --steps=3 \
        --runs=5 --modes=fp32 --reference_bn_updates=both

Every row is one configuration (architecture, method, with or without DAC, with or
without `reference_bn_updates`, batch size, precision/compilation mode, input pipeline).
A row times the compiled Keras train function of `DACModel`
(`model.make_train_function()`, the function `fit` calls per batch, without `fit`'s
callbacks and progress bar): `--warmup` steps first (tracing, XLA compilation, cuDNN
autotuning), then `--runs` timed runs of `--steps` steps each.
A run ends by fetching the last step's loss to the host, which waits for the device, so
the time covers all the device work of its steps; inside a run the benchmark itself
never waits for the device. The row reports the median run.

Modes: `fp32`; `bf16` (Keras policy "mixed_bfloat16", restored afterwards); `xla`
(`compile(jit_compile=True)`); `bf16_xla`. Pipelines: `synthetic` (one random batch,
repeated: the device-bound rate) and `tfds_like` (`dac_tf.data.train_dataset` with the
method's augmentation on `--pipeline_examples` random uint8 images held in memory, as
for CIFAR-10; also adds an `input` row timing the pipeline alone), to show whether the
input pipeline starves the device. `--include_eval` adds a PGD-20 evaluation row per
(arch, batch, mode): the CleverHans PGD that `python -m dac_tf.evaluate` runs
(`dac_tf.evaluation.attacks`, BatchNorm in inference mode), one batch through the same
call as the evaluation's (`run_batched` over `make_batch_fn`).

A configuration that fails (XLA not compiling, out of memory, ...) is recorded with
`img_per_s: null` and a one-line `error`, and the benchmark goes on; XLA rows run after
all the others, so an XLA failure that leaves the device unusable costs no other row.
`--time_budget_s` marks the rows it has no time left for as skipped. The JSON
(`--output`) is rewritten after every row, so a run cut short keeps what it measured.
The table is printed last, with the DAC/no-DAC cost ratio per configuration, the
`reference_bn_updates` cost ratio (with / without, from `--reference_bn_updates=both`) and
the arithmetic per image from `forward_flops` (computed from the layers). An arithmetic
floor in images/s needs the device's sustained rate, which is not assumed: it is shown
only when `--peak_tflops` gives one.

Peak memory: on a GPU, `tf.config.experimental.get_memory_info("GPU:0")["peak"]`, reset
before each row. On a CPU there is no per-row counter: the column is the process's
maximum resident set size so far (`resource.getrusage`), which only grows.
"""

import dataclasses
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

from absl import flags
import keras
import numpy as np
import tensorflow as tf

from dac_tf import cli
from dac_tf import data
from dac_tf import errors
from dac_tf import fileio
from dac_tf import models
from dac_tf import objectives
from dac_tf.evaluation import attacks as attack_lib
from dac_tf.evaluation import loading
from dac_tf.model import DACModel
from dac_tf.optimizers import TorchSGD

FORMAT = "dac_tf.bench/1"
MODES = ("fp32", "bf16", "xla", "bf16_xla")
PIPELINES = ("synthetic", "tfds_like")
USE_DAC = ("both", "on", "off")
# Same vocabulary as --use_dac: time DACModel(reference_bn_updates=...) on, off or both.
REFERENCE_BN_UPDATES = ("both", "on", "off")
_ON_OFF = {"both": (False, True), "on": (True,), "off": (False,)}
ARCHITECTURES = ("preact_resnet18", "wide_resnet34_10", "small_cnn")
# The paper's evaluation attack: PGD-20, L-inf 8/255, step 2/255, uniform start.
EVAL_EPSILON = 8 / 255
EVAL_STEP_SIZE = 2 / 255
# The input row reads at least this many batches per run, so that batches prefetched
# between runs are a small part of what it counts.
_MIN_INPUT_BATCHES = 50
REQUIRED_KEYS = ("arch", "method", "use_dac", "reference_bn_updates", "batch_size", "mode",
                 "img_per_s", "device", "peak_memory_mb", "step_ms_median", "steps", "runs",
                 "tf_version")


class BenchError(errors.UserError):
    """A benchmark setting that cannot run (the message says why)."""


# ---------------------------------------------------------------------- FLOPs
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


_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
               keras.layers.DepthwiseConv2D)


def forward_flops(model):
    """Floating-point operations of one forward pass per example, from the layers.

    Counts only the multiply-accumulates of convolutions and dense layers (2 FLOPs per
    MAC): conv 2 * H_out * W_out * k_h * k_w * C_in / groups * C_out, dense
    2 * in * out. BatchNorm, activations, additions, pooling and biases are left out;
    for the residual networks of the zoo they are well below 1% of the total. Nested
    models are descended into; a layer shared by several calls is counted once.

    Args:
      model: a built functional or Sequential `keras.Model` (layers need static
        output shapes apart from the batch dimension).

    Returns:
      int: FLOPs per example.

    Raises:
      ValueError: a conv/dense layer whose output shape is not static.
    """
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, _CONV_TYPES):
            positions = _output_shape(layer)[1:-1]
        elif isinstance(layer, keras.layers.Dense):
            positions = _output_shape(layer)[1:-1]
        else:
            continue
        if any(d is None for d in positions):
            raise ValueError(f"layer {layer.name} has a dynamic output shape "
                             f"{_output_shape(layer)}; forward_flops needs static shapes.")
        # The kernel's size is the MACs per output position for every conv type
        # (groups and depthwise included) and for dense layers.
        macs = int(np.prod(layer.kernel.shape)) * int(np.prod(positions, dtype=np.int64))
        total += 2 * macs
    return total


def step_flops(forward, method="at", use_dac=True, num_steps=10, kind="train",
               reference_bn_updates=False):
    """Arithmetic of one step per image, in multiples of the forward FLOPs.

    Convention: a forward+backward pass costs 3x the forward (the backward computes
    gradients w.r.t. inputs and weights, ~2x the forward). Attack steps are counted as
    forward+backward too, although they only need input gradients; the doc gives the
    tighter figure.

    Args:
      forward: forward FLOPs per image (`forward_flops`).
      method: "at", "trades" or "mart". TRADES' attack adds one forward on the clean
        input; TRADES' and MART's robust loss runs the clean and the adversarial input.
      use_dac: add the AC update and the second attack.
      num_steps: attack steps.
      kind: "train" or "eval" (a PGD-`num_steps` attack plus one forward).
      reference_bn_updates: add the forwards (no backward) that
        `DACModel(reference_bn_updates=True)` makes for the BatchNorm statistics only,
        with the method's default attack: AT one after each attack and one clean forward
        after the update; TRADES three before the AC update (with DAC) and one in the
        robust step; MART none.

    Returns:
      float: FLOPs per image. For DAC-AT: 2 x num_steps x 3F + 2 x 3F.
    """
    fwd_bwd = 3.0 * forward
    if kind == "eval":
        return num_steps * fwd_bwd + forward
    attack = num_steps * fwd_bwd + (forward if method == "trades" else 0.0)
    robust_update = fwd_bwd * (1 if method == "at" else 2)
    extra = _reference_bn_forwards(method, use_dac) * forward if reference_bn_updates else 0.0
    if not use_dac:
        return attack + robust_update + extra
    return 2 * attack + fwd_bwd + robust_update + extra


def _reference_bn_forwards(method, use_dac):
    """Stats-only forwards per step of DACModel(reference_bn_updates=True) (see step_flops)."""
    attacks_per_step = 2 if use_dac else 1
    if method == "at":
        return attacks_per_step + 1
    if method == "trades":
        return (3 if use_dac else 0) + 1
    return 0


# --------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark (the flags of the same names); `validate` checks it.

    Attributes:
      archs, methods, batch_sizes, modes, pipelines: the grid of rows (tuples).
      use_dac: "both", "on" or "off".
      reference_bn_updates: "both", "on" or "off": train rows with
        `DACModel(reference_bn_updates=...)` True, False or both (to read its cost).
      steps, runs, warmup: steps per timed run, timed runs (median reported), untimed
        steps first.
      include_eval, include_train: add PGD evaluation rows; time training rows.
      eval_pgd_steps: attack steps of the evaluation rows.
      num_steps: attack steps of the training attack.
      pipeline_examples: in-memory images of the tfds_like pipeline.
      num_classes: logits of the models (random labels are drawn below it).
      peak_tflops: the device's sustained rate (TFLOP/s) for the arithmetic floor;
        0: unknown, no floor.
      steps_per_execution: Keras `steps_per_execution` of the train function.
      profile_dir, profile_steps: profile this many extra steps of each row there.
      time_budget_s: start no row after this many seconds (0: no limit).
      output: JSON path ("" writes none).
      seed: seed of the synthetic data, the models and the attacks.
    """

    archs: tuple = ("preact_resnet18", "wide_resnet34_10")
    methods: tuple = ("at", "trades", "mart")
    use_dac: str = "both"
    reference_bn_updates: str = "off"
    batch_sizes: tuple = (128, 512)
    steps: int = 10
    runs: int = 5
    warmup: int = 3
    modes: tuple = MODES
    include_eval: bool = False
    include_train: bool = True
    eval_pgd_steps: int = 20
    num_steps: int = 10
    pipelines: tuple = ("synthetic",)
    pipeline_examples: int = 50_000
    num_classes: int = 10
    peak_tflops: float = 0.0
    steps_per_execution: int = 1
    profile_dir: str = ""
    profile_steps: int = 3
    time_budget_s: float = 0.0
    output: str = ""
    seed: int = 0

    def validate(self):
        """Raises BenchError naming the bad setting."""
        def check_subset(name, values, valid):
            if not values:
                raise BenchError(f"--{name} is empty; give at least one of {', '.join(valid)}.")
            bad = [v for v in values if v not in valid]
            if bad:
                raise BenchError(f"--{name}: {', '.join(map(str, bad))} not valid; use "
                                 f"{', '.join(valid)}.")
        check_subset("arch", self.archs, ARCHITECTURES)
        check_subset("method", self.methods, objectives.METHODS)
        check_subset("modes", self.modes, MODES)
        check_subset("pipeline", self.pipelines, PIPELINES)
        if self.use_dac not in USE_DAC:
            raise BenchError(f"--use_dac={self.use_dac!r} not valid; use {', '.join(USE_DAC)}.")
        if self.reference_bn_updates not in REFERENCE_BN_UPDATES:
            raise BenchError(f"--reference_bn_updates={self.reference_bn_updates!r} not valid; "
                             f"use {', '.join(REFERENCE_BN_UPDATES)}.")
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise BenchError(f"--batch_size must be positive integers, got {self.batch_sizes}.")
        for name in ("steps", "runs", "warmup", "steps_per_execution", "profile_steps",
                     "num_classes", "eval_pgd_steps"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name} must be >= 1 (warm-up keeps tracing and "
                                 f"compilation out of the timed runs), got "
                                 f"{getattr(self, name)}.")
        if self.num_steps < 0:
            raise BenchError(f"--num_steps must be >= 0, got {self.num_steps}.")
        for name in ("steps", "warmup", "profile_steps"):
            if getattr(self, name) % self.steps_per_execution:
                raise BenchError(f"--{name}={getattr(self, name)} must be a multiple of "
                                 f"--steps_per_execution={self.steps_per_execution}.")
        if "tfds_like" in self.pipelines and self.pipeline_examples < max(self.batch_sizes):
            raise BenchError(f"--pipeline_examples={self.pipeline_examples} is smaller than "
                             f"the batch size {max(self.batch_sizes)}.")
        if not self.peak_tflops >= 0:
            raise BenchError(f"--peak_tflops must be >= 0 (0: no floor), got "
                             f"{self.peak_tflops}.")


# --------------------------------------------------------------------- device
def device_info():
    """(kind, description) of the device the benchmark runs on: "GPU" or "CPU"."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
        return "GPU", f"GPU:0 {name} (of {len(gpus)})"
    return "CPU", f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _reset_peak_memory(device_kind):
    if device_kind == "GPU":
        tf.config.experimental.reset_memory_stats("GPU:0")


def _peak_memory_mb(device_kind):
    if device_kind == "GPU":
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    # ru_maxrss is in KiB on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ------------------------------------------------------------------------ data
def _random_images(num, seed, shape=(32, 32, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num,) + tuple(shape), dtype=np.uint8)


def _random_labels(num, num_classes, seed):
    return np.random.default_rng(seed + 1).integers(0, num_classes, num).astype(np.int32)


def _train_input(pipeline, method, batch_size, config):
    """An endless dataset of (float32 images in [0, 1], int32 labels) batches."""
    if pipeline == "synthetic":
        images = _random_images(batch_size, config.seed).astype(np.float32) / 255.0
        labels = _random_labels(batch_size, config.num_classes, config.seed)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()
    num = config.pipeline_examples
    x = _random_images(num, config.seed)
    y = _random_labels(num, config.num_classes, config.seed)
    augment = objectives.defaults(method).augmentation_padding
    ds = data.train_dataset(x, y, batch_size=batch_size, seed=config.seed, augment=augment,
                            num_epochs=1_000_000)
    # Each epoch's last batch is partial; a second shape would retrace (and recompile
    # under XLA) inside the timed runs, so only full batches are kept.
    shape = (batch_size,) + x.shape[1:]
    ds = ds.filter(lambda images, labels: tf.shape(labels)[0] == batch_size)
    return ds.map(lambda images, labels: (tf.ensure_shape(images, shape),
                                          tf.ensure_shape(labels, [batch_size])))


# --------------------------------------------------------------------- runners
def _set_policy(mode):
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if mode.startswith("bf16") else "float32")


def _build_base(arch, method, config):
    normalization = "cifar10" if objectives.defaults(method).normalize_inputs else None
    return models.build(arch, num_classes=config.num_classes, input_shape=(32, 32, 3),
                        normalization=normalization)


def make_train_runner(spec, config):
    """Builds the DACModel of one row and returns `run(n) -> loss tensor` (n steps).

    `run` dispatches n steps without waiting for the device; the caller synchronises by
    reading the returned tensor.
    """
    keras.utils.set_random_seed(config.seed)
    base = _build_base(spec["arch"], spec["method"], config)
    model = DACModel(base, method=spec["method"], use_dac=spec["use_dac"],
                     num_steps=config.num_steps, seed=config.seed,
                     reference_bn_updates=spec["reference_bn_updates"])
    xla = spec["mode"].endswith("xla")
    # A small learning rate keeps random-label training finite for many steps; the
    # arithmetic does not depend on it.
    model.compile(optimizer=TorchSGD(learning_rate=0.01, momentum=0.9), jit_compile=xla,
                  steps_per_execution=config.steps_per_execution)
    if bool(model.jit_compile) != xla:
        raise BenchError(f"Keras set jit_compile={model.jit_compile} for mode "
                         f"{spec['mode']} (op determinism on, or a layer without XLA "
                         "support).")
    model.make_train_function()
    iterator = iter(_train_input(spec["pipeline"], spec["method"], spec["batch_size"],
                                 config))
    def run(num):
        logs = None
        # One call runs steps_per_execution steps; `validate` made num a multiple of it.
        for _ in range(num // config.steps_per_execution):
            logs = model.train_function(iterator)
        return logs["loss"]

    return run


def make_eval_runner(spec, config):
    """Returns `run(n)`: n batches of the evaluation's PGD-`eval_pgd_steps` (CleverHans,
    BatchNorm in inference mode) on a random model, as `dac_tf.evaluate` runs them."""
    keras.utils.set_random_seed(config.seed)
    base = _build_base(spec["arch"], "trades", config)
    batch = spec["batch_size"]
    images = _random_images(batch, config.seed).astype(np.float32) / 255.0
    labels = _random_labels(batch, config.num_classes, config.seed)
    return pgd_eval_runner(base, images, labels, num_steps=config.eval_pgd_steps,
                           seed=config.seed, jit_compile=spec["mode"].endswith("xla"))


def pgd_eval_runner(model, images, labels, *, num_steps, seed=0, jit_compile=False):
    """`run(n)`: n times the evaluation's PGD-`num_steps` on one batch, returning the
    number of examples still classified correctly (the last time).

    The attack is `python -m dac_tf.evaluate`'s `pgdK` at the paper's L-inf 8/255 with
    step 2/255 and a uniform start: `dac_tf.evaluation.attacks.make_batch_fn` called
    through `run_batched` with the seed of the evaluation's first batch, so one batch
    here computes exactly the evaluation's first batch (tested).

    Args:
      model: a Keras model mapping [0, 1] images to logits.
      images, labels: one batch (NumPy, float32 in [0, 1] and int32).
      num_steps: PGD steps.
      seed: the evaluation's `--seed`.
      jit_compile: compile the attack with XLA (`--jit_compile` of evaluate).
    """
    spec = attack_lib.parse_attacks(f"pgd{int(num_steps)}")[0]
    settings = attack_lib.attack_settings(spec, epsilon=EVAL_EPSILON,
                                          step_size=EVAL_STEP_SIZE, seed=seed,
                                          batch_size=len(labels))
    batch_fn = attack_lib.make_batch_fn(loading.keras_logits_fn(model), settings,
                                        jit_compile)
    seed_base = attack_lib.attack_seed(seed, spec.kind)

    def run(num):
        out = None
        for _ in range(num):
            out = attack_lib.run_batched(batch_fn, images, labels, batch_size=len(labels),
                                         seed_base=seed_base)
        return int(np.sum(out["correct"]))

    return run


def make_input_runner(spec, config):
    """Returns `run(n)`: reads n batches of the tfds_like pipeline, no model."""
    iterator = iter(_train_input("tfds_like", spec["method"], spec["batch_size"], config))

    def run(num):
        batch = None
        for _ in range(num):
            batch = next(iterator)
        return batch[1]

    return run


_RUNNERS = {"train": make_train_runner, "eval": make_eval_runner,
            "input": make_input_runner}


def _sync(value):
    # Fetching a result waits for every op it depends on: the whole run.
    np.asarray(value)


def _one_line(err):
    """The informative line of an error: TF's "Graph execution error:" puts the
    traceback of the failing node first and the actual message after it."""
    useful, after_frame = [], False
    for line in str(err).splitlines():
        text = line.strip()
        if text.startswith('File "'):
            after_frame = True
            continue
        if after_frame and line.startswith("    ") and text:
            after_frame = False
            continue  # the source line of a traceback frame
        after_frame = False
        if text and not text.startswith(("Detected at node", "Graph execution error", "[[")):
            useful.append(text)
    text = useful[0] if useful else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text[:300]


def _time_row(spec, config, device_kind, profile_path=None):
    """Builds and times one row; returns the measured fields."""
    run = _RUNNERS[spec["kind"]](spec, config)
    steps = config.steps
    if spec["kind"] == "input":
        steps = max(steps, _MIN_INPUT_BATCHES)
    t0 = time.perf_counter()
    _sync(run(config.warmup))
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(config.runs):
        t0 = time.perf_counter()
        _sync(run(steps))
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times) / steps
    fields = {
        "img_per_s": spec["batch_size"] / step_s,
        "step_ms_median": 1000.0 * step_s,
        "step_ms_runs": [1000.0 * t / steps for t in times],
        "warmup_s": warmup_s,
        "steps": steps,
    }
    if profile_path:
        # After the timing, so a profiler that cannot start (no CUPTI) costs the trace
        # only, never the measurement.
        try:
            tf.profiler.experimental.start(profile_path)
            try:
                _sync(run(config.profile_steps))
            finally:
                tf.profiler.experimental.stop()
            fields["profile"] = profile_path
        except Exception as err:  # noqa: BLE001
            fields["profile_error"] = _one_line(err)
    fields["peak_memory_mb"] = _peak_memory_mb(device_kind)
    return fields


# -------------------------------------------------------------------- planning
def plan_rows(config):
    """The row specs of a run, in order (dicts with kind, arch, method, use_dac, ...)."""
    dac_values = _ON_OFF[config.use_dac]
    ref_bn_values = _ON_OFF[config.reference_bn_updates]
    specs = []
    for arch in config.archs:
        for batch in config.batch_sizes:
            if "tfds_like" in config.pipelines:
                specs.append(dict(kind="input", arch="-", method=config.methods[0],
                                  use_dac=None, reference_bn_updates=None,
                                  batch_size=batch, mode="-", pipeline="tfds_like"))
            for mode in config.modes:
                if config.include_train:
                    for method in config.methods:
                        for use_dac in dac_values:
                            for ref_bn in ref_bn_values:
                                for pipeline in config.pipelines:
                                    specs.append(dict(
                                        kind="train", arch=arch, method=method,
                                        use_dac=use_dac, reference_bn_updates=ref_bn,
                                        batch_size=batch, mode=mode, pipeline=pipeline))
                if config.include_eval:
                    specs.append(dict(kind="eval", arch=arch,
                                      method=f"pgd{config.eval_pgd_steps}_eval",
                                      use_dac=None, reference_bn_updates=None,
                                      batch_size=batch, mode=mode, pipeline="synthetic"))
    # The input pipeline does not depend on the architecture: time it once per batch.
    seen, unique = set(), []
    for spec in specs:
        key = tuple(sorted((k, str(v)) for k, v in spec.items()))
        if spec["kind"] == "input" and key in seen:
            continue
        seen.add(key)
        unique.append(spec)
    # XLA rows last (stable sort): on the lent GPU XLA fails inside cuDNN/autotuning,
    # and a failure that leaves the device unusable must not cost the other rows.
    return sorted(unique, key=lambda spec: spec["mode"].endswith("xla"))


def _row_id(spec):
    dac = {None: "", True: "_dac", False: ""}[spec["use_dac"]]
    dac += "_refbn" if spec.get("reference_bn_updates") else ""
    return (f"{spec['kind']}_{spec['arch']}_{spec['method']}{dac}_b{spec['batch_size']}_"
            f"{spec['mode']}_{spec['pipeline']}").replace("-", "x")


def _flop_fields(spec, config, forward_by_arch):
    forward = forward_by_arch.get(spec["arch"])
    if spec["kind"] == "input" or forward is None:
        return {"gflop_per_image": None, "floor_img_per_s": None}
    if spec["kind"] == "eval":
        flops = step_flops(forward, num_steps=config.eval_pgd_steps, kind="eval")
    else:
        flops = step_flops(forward, spec["method"], spec["use_dac"], config.num_steps,
                           reference_bn_updates=spec["reference_bn_updates"])
    return {"gflop_per_image": flops / 1e9,
            "floor_img_per_s": (config.peak_tflops * 1e12 / flops if config.peak_tflops
                                else None)}


def arch_forward_flops(arch, num_classes=10):
    """Forward FLOPs per 32x32x3 image of a zoo architecture (built in float32)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = models.build(arch, num_classes=num_classes, input_shape=(32, 32, 3))
        flops = forward_flops(model)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        keras.backend.clear_session()
    return flops


def add_ratios(rows):
    """Adds `dac_cost_ratio` (step time with DAC / without) to the DAC train rows,
    `ref_bn_cost_ratio` (with `reference_bn_updates` / without) to the rows with it, and
    `input_slowdown` (step time tfds_like / synthetic) to the tfds_like train rows."""
    def key(row, **override):
        fields = dict(row, **override)
        return tuple(fields.get(k) for k in ("kind", "arch", "method", "use_dac",
                                              "reference_bn_updates", "batch_size", "mode",
                                              "pipeline"))

    by_key = {key(r): r for r in rows}
    for row in rows:
        if row["kind"] != "train":
            continue
        if row["use_dac"]:
            base = by_key.get(key(row, use_dac=False))
            row["dac_cost_ratio"] = _ratio(row, base)
        if row.get("reference_bn_updates"):
            base = by_key.get(key(row, reference_bn_updates=False))
            row["ref_bn_cost_ratio"] = _ratio(row, base)
        if row["pipeline"] == "tfds_like":
            base = by_key.get(key(row, pipeline="synthetic"))
            row["input_slowdown"] = _ratio(row, base)
    return rows


def _ratio(row, base):
    if base is None or not row.get("step_ms_median") or not base.get("step_ms_median"):
        return None
    return row["step_ms_median"] / base["step_ms_median"]


# ---------------------------------------------------------------------- output
def _fmt(value, spec="{:,.0f}"):
    return "-" if value is None else spec.format(value)


def format_table(rows, peak_tflops=0.0):
    """A markdown table of the rows (one line per row); the floor columns only with a
    `peak_tflops` (the device's sustained rate, TFLOP/s)."""
    floor = ([f"floor img/s @{peak_tflops:g}TF", "% floor"] if peak_tflops else [])
    header = ["arch", "kind", "method", "DAC", "ref BN", "batch", "mode", "pipeline", "img/s",
              "step ms", "DAC cost", "ref BN cost", "peak MB", "GFLOP/img", *floor,
              "vs synthetic", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        pct = None
        if r.get("img_per_s") and r.get("floor_img_per_s"):
            pct = 100.0 * r["img_per_s"] / r["floor_img_per_s"]
        on_off = {None: "-", True: "on", False: "off"}
        cells = [r["arch"], r["kind"], r["method"], on_off[r["use_dac"]],
                 on_off[r.get("reference_bn_updates")], str(r["batch_size"]),
                 r["mode"], r["pipeline"], _fmt(r.get("img_per_s"), "{:,.1f}"),
                 _fmt(r.get("step_ms_median"), "{:,.1f}"),
                 _fmt(r.get("dac_cost_ratio"), "{:.2f}x"),
                 _fmt(r.get("ref_bn_cost_ratio"), "{:.2f}x"), _fmt(r.get("peak_memory_mb")),
                 _fmt(r.get("gflop_per_image"), "{:.1f}"),
                 *([_fmt(r.get("floor_img_per_s")), _fmt(pct, "{:.1f}%")] if floor else []),
                 _fmt(r.get("input_slowdown"), "{:.2f}x"),
                 (r.get("error") or "")[:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_json(rows, path):
    fileio.write_json_atomic(path, rows)


def run_benchmark(config, log=print):
    """Runs every row of `config`, writes the JSON after each, prints the table last.

    Args:
      config: a `BenchConfig`.
      log: callable taking one string (progress lines, the FLOP note and the table).

    Returns:
      The list of row dicts (also written to `config.output` if set).

    Raises:
      BenchError: an invalid config (nothing is run).
    """
    config.validate()
    device_kind, device = device_info()
    forward_by_arch = {arch: arch_forward_flops(arch, config.num_classes)
                       for arch in config.archs}
    specs = plan_rows(config)
    common = {"device": device, "device_kind": device_kind, "tf_version": tf.__version__,
              "keras_version": keras.__version__, "runs": config.runs,
              "warmup": config.warmup, "num_steps": config.num_steps,
              "steps_per_execution": config.steps_per_execution,
              "peak_tflops": config.peak_tflops or None,
              "memory_kind": ("gpu_peak_allocated" if device_kind == "GPU"
                              else "cpu_process_max_rss"),
              "format": FORMAT}
    log(f"dac_tf.bench: {len(specs)} rows on {device}, TF {tf.__version__}, Keras "
        f"{keras.__version__}")
    if device_kind == "CPU" and set(config.archs) - {"small_cnn"}:
        log("note: no GPU; a PreActResNet-18 DAC step at batch 32 takes ~20 s on 2 CPU "
            "cores. For a quick CPU check: --arch=small_cnn --batch_size=32 --steps=3.")
    rows = []
    previous_policy = keras.mixed_precision.global_policy()
    start = time.perf_counter()
    try:
        for i, spec in enumerate(specs, start=1):
            row = dict(spec, **common, steps=config.steps, img_per_s=None,
                       step_ms_median=None, peak_memory_mb=None, error=None)
            row.update(_flop_fields(spec, config, forward_by_arch))
            if row["kind"] == "eval":
                row["num_steps"] = config.eval_pgd_steps
            elapsed = time.perf_counter() - start
            if config.time_budget_s and elapsed > config.time_budget_s:
                row["error"] = f"skipped: time budget of {config.time_budget_s:g} s spent"
            else:
                keras.backend.clear_session()
                gc.collect()
                _set_policy(spec["mode"] if spec["kind"] != "input" else "fp32")
                _reset_peak_memory(device_kind)
                profile_path = (os.path.join(config.profile_dir, _row_id(spec))
                                if config.profile_dir else None)
                try:
                    row.update(_time_row(spec, config, device_kind, profile_path))
                except Exception as err:  # noqa: BLE001 -- a failing mode must not end the run
                    row["error"] = _one_line(err)
                    row["img_per_s"] = None
                    try:
                        row["peak_memory_mb"] = _peak_memory_mb(device_kind)
                    except Exception:  # noqa: BLE001 -- the device may be unusable now
                        pass
                finally:
                    keras.mixed_precision.set_global_policy(previous_policy)
            rows.append(row)
            add_ratios(rows)
            status = (f"{row['img_per_s']:,.1f} img/s" if row["img_per_s"]
                      else f"FAILED {row['error']}")
            log(f"[{i}/{len(specs)}] {_row_id(spec)}: {status}")
            if config.output:
                _write_json(rows, config.output)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    for arch, forward in forward_by_arch.items():
        dac_at = step_flops(forward, "at", True, config.num_steps)
        floor = (f" = {config.peak_tflops * 1e12 / dac_at:,.0f} img/s at the "
                 f"--peak_tflops={config.peak_tflops:g} given" if config.peak_tflops else "")
        log(f"Arithmetic (computed from the layers, not measured) {arch}: forward "
            f"{forward / 1e9:.3f} GFLOP/img; DAC-AT step {dac_at / 1e9:.1f} GFLOP/img"
            f"{floor}.")
    if device_kind == "CPU":
        log("peak MB on CPU: the process's maximum resident set size so far, not per row.")
    if config.output:
        log(f"JSON: {config.output}")
    log(format_table(rows, config.peak_tflops))
    return rows


# ------------------------------------------------------------------------- CLI
def define_flags(flag_values=flags.FLAGS):
    """Defines the benchmark's absl flags on `flag_values` (read only in `main`)."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_list("arch", ["preact_resnet18", "wide_resnet34_10"],
                      f"Architectures: {', '.join(ARCHITECTURES)}.", **f)
    flags.DEFINE_list("method", list(objectives.METHODS), "Methods: at, trades, mart.", **f)
    flags.DEFINE_enum("use_dac", "both", USE_DAC, "Time with DAC, without, or both.", **f)
    flags.DEFINE_enum("reference_bn_updates", "off", REFERENCE_BN_UPDATES,
                      "Time DACModel(reference_bn_updates=True) (the reference's extra "
                      "BatchNorm-only forwards), False, or both (adds a cost ratio).", **f)
    flags.DEFINE_list("batch_size", ["128", "512"], "Batch sizes.", **f)
    flags.DEFINE_integer("steps", 10, "Steps per timed run.", **f)
    flags.DEFINE_integer("runs", 5, "Timed runs per row; the median is reported.", **f)
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, compilation).", **f)
    flags.DEFINE_list("modes", list(MODES), f"Modes: {', '.join(MODES)}.", **f)
    flags.DEFINE_boolean("include_eval", False, "Add PGD evaluation rows.", **f)
    flags.DEFINE_boolean("include_train", True, "Time the training steps.", **f)
    flags.DEFINE_integer("eval_pgd_steps", 20, "PGD steps of the evaluation rows.", **f)
    flags.DEFINE_integer("num_steps", 10, "Attack steps of the training attack.", **f)
    flags.DEFINE_list("pipeline", ["synthetic"], f"Input pipelines: {', '.join(PIPELINES)}.", **f)
    flags.DEFINE_integer("pipeline_examples", 50_000,
                         "Images held in memory by the tfds_like pipeline.", **f)
    flags.DEFINE_float("peak_tflops", 0.0,
                       "The device's sustained rate (TFLOP/s) to express the arithmetic "
                       "as a floor in images/s; 0 (default): no floor (none is assumed).",
                       **f)
    flags.DEFINE_integer("steps_per_execution", 1,
                         "Keras steps_per_execution (1: what fit does by default).", **f)
    flags.DEFINE_string("profile_dir", "",
                        "If set, profile --profile_steps extra steps of each row here.", **f)
    flags.DEFINE_integer("profile_steps", 3, "Steps profiled per row.", **f)
    flags.DEFINE_float("time_budget_s", 0.0,
                       "Start no new row after this many seconds (0: no limit).", **f)
    flags.DEFINE_string("output", os.path.join(tempfile.gettempdir(), "dac_tf_bench.json"),
                        "JSON file of the rows.", **f)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and the models.", **f)


def config_from_flags(values):
    """A `BenchConfig` from parsed flags (raises BenchError for bad values)."""
    try:
        batch_sizes = tuple(int(b) for b in values.batch_size)
    except ValueError as err:
        raise BenchError(f"--batch_size must be integers, got {values.batch_size}") from err
    return BenchConfig(
        archs=tuple(values.arch), methods=tuple(values.method), use_dac=values.use_dac,
        reference_bn_updates=values.reference_bn_updates,
        batch_sizes=batch_sizes, steps=values.steps, runs=values.runs,
        warmup=values.warmup, modes=tuple(values.modes), include_eval=values.include_eval,
        include_train=values.include_train, eval_pgd_steps=values.eval_pgd_steps,
        num_steps=values.num_steps, pipelines=tuple(values.pipeline),
        pipeline_examples=values.pipeline_examples, peak_tflops=values.peak_tflops,
        steps_per_execution=values.steps_per_execution, profile_dir=values.profile_dir,
        profile_steps=values.profile_steps, time_budget_s=values.time_budget_s,
        output=values.output, seed=values.seed)


@cli.guard("the rows measured so far are in --output; run again for the rest.")
def main(argv, flag_values=None):
    """`python -m dac_tf.bench`: times the rows, writes the JSON, prints the table."""
    if len(argv) > 1:
        raise BenchError(f"unexpected arguments: {' '.join(argv[1:])} (flags are written "
                         "--name=value).")
    config = config_from_flags(flag_values)
    config.validate()
    if config.output:
        tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(config.output)))
    rows = run_benchmark(config)
    if rows and all(r["img_per_s"] is None for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, define_flags)
