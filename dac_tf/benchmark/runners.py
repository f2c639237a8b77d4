"""What one row of the benchmark runs and measures: a training step, the evaluation's
PGD, the input pipeline alone, or the model's kernels (`dac_tf.benchmark.kernels`).

A training row times the compiled Keras train function of `DACModel`
(`model.make_train_function()`, the function `fit` calls per batch, without `fit`'s
callbacks and progress bar). An evaluation row times the CleverHans PGD that
`python -m dac_tf.evaluate` runs on one batch, through the evaluation's own call.
"""

import keras
import numpy as np
import tensorflow as tf

from dac_tf import data
from dac_tf import models
from dac_tf import objectives
from dac_tf.benchmark import config as config_lib
from dac_tf.benchmark import flops
from dac_tf.benchmark import kernels
from dac_tf.benchmark import timing
from dac_tf.evaluation import attacks as attack_lib
from dac_tf.evaluation import loading
from dac_tf.model import DACModel
from dac_tf.optimizers import TorchSGD

# The input row reads at least this many batches per run, so that batches prefetched
# between runs are a small part of what it counts.
MIN_INPUT_BATCHES = 50


# ------------------------------------------------------------------------ data
def random_images(num, seed, shape=(32, 32, 3)):
    """`num` random uint8 images (CIFAR-shaped by default)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num,) + tuple(shape), dtype=np.uint8)


def random_labels(num, num_classes, seed):
    return np.random.default_rng(seed + 1).integers(0, num_classes, num).astype(np.int32)


def train_input(pipeline, method, batch_size, config):
    """An endless dataset of (float32 images in [0, 1], int32 labels) batches: one random
    batch repeated ("synthetic"), or `dac_tf.data.train_dataset` with the method's
    augmentation on `config.pipeline_examples` in-memory images ("tfds_like")."""
    if pipeline == "synthetic":
        images = random_images(batch_size, config.seed).astype(np.float32) / 255.0
        labels = random_labels(batch_size, config.num_classes, config.seed)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()
    num = config.pipeline_examples
    x = random_images(num, config.seed)
    y = random_labels(num, config.num_classes, config.seed)
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
def set_policy(mode):
    """The Keras dtype policy of a mode ("mixed_bfloat16" for the bf16 modes)."""
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if mode.startswith("bf16") else "float32")


def build_base(arch, method, config):
    """A zoo model with the method's reference input normalisation."""
    normalization = "cifar10" if objectives.defaults(method).normalize_inputs else None
    return models.build(arch, num_classes=config.num_classes, input_shape=(32, 32, 3),
                        normalization=normalization)


def make_train_runner(spec, config):
    """Builds the DACModel of one row and returns `run(n) -> loss tensor` (n steps).

    `run` dispatches n steps without waiting for the device; the caller synchronises by
    reading the returned tensor.
    """
    keras.utils.set_random_seed(config.seed)
    base = build_base(spec["arch"], spec["method"], config)
    model = DACModel(base, method=spec["method"], use_dac=spec["use_dac"],
                     num_steps=config.num_steps, seed=config.seed,
                     reference_bn_updates=spec["reference_bn_updates"])
    xla = spec["mode"].endswith("xla")
    # A small learning rate keeps random-label training finite for many steps; the
    # arithmetic does not depend on it.
    model.compile(optimizer=TorchSGD(learning_rate=0.01, momentum=0.9), jit_compile=xla,
                  steps_per_execution=config.steps_per_execution)
    if bool(model.jit_compile) != xla:
        raise config_lib.BenchError(
            f"Keras set jit_compile={model.jit_compile} for mode {spec['mode']} (op "
            "determinism on, or a layer without XLA support).")
    model.make_train_function()
    iterator = iter(train_input(spec["pipeline"], spec["method"], spec["batch_size"],
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
    base = build_base(spec["arch"], "trades", config)
    batch = spec["batch_size"]
    images = random_images(batch, config.seed).astype(np.float32) / 255.0
    labels = random_labels(batch, config.num_classes, config.seed)
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
    settings = attack_lib.attack_settings(spec, epsilon=config_lib.EVAL_EPSILON,
                                          step_size=config_lib.EVAL_STEP_SIZE, seed=seed,
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
    iterator = iter(train_input("tfds_like", spec["method"], spec["batch_size"], config))

    def run(num):
        batch = None
        for _ in range(num):
            batch = next(iterator)
        return batch[1]

    return run


RUNNERS = {"train": make_train_runner, "eval": make_eval_runner,
           "input": make_input_runner}


# ------------------------------------------------------------------- measuring
def time_row(spec, config, device_kind, profile_path=None):
    """Builds and times one train, eval or input row; returns the measured fields."""
    run = RUNNERS[spec["kind"]](spec, config)
    steps = config.steps
    if spec["kind"] == "input":
        steps = max(steps, MIN_INPUT_BATCHES)
    result = timing.time_runs(run, warmup=config.warmup, runs=config.runs, steps=steps)
    fields = {
        "img_per_s": spec["batch_size"] / result.step_s,
        "step_ms_median": 1000.0 * result.step_s,
        "step_ms_runs": [1000.0 * t for t in result.run_step_s],
        "warmup_s": result.warmup_s,
        "steps": steps,
    }
    if profile_path:
        # After the timing, so a profiler that cannot start (no CUPTI) costs the trace
        # only, never the measurement.
        try:
            tf.profiler.experimental.start(profile_path)
            try:
                timing.sync(run(config.profile_steps))
            finally:
                tf.profiler.experimental.stop()
            fields["profile"] = profile_path
        except Exception as err:  # noqa: BLE001
            fields["profile_error"] = timing.one_line(err)
    fields["peak_memory_mb"] = timing.peak_memory_mb(device_kind)
    return fields


def measure_kernels_row(spec, config, device_kind):
    """Times the kernels of one (arch, batch, mode) row (`dac_tf.benchmark.kernels`),
    in the dtypes the mode's policy gives each layer, `config.runs` timed calls per
    kernel; returns the measured fields:
    `kernels` (the entries of `kernels.measure_model_kernels`) and the rates of
    `kernels.summary`."""
    policy = "mixed_bfloat16" if spec["mode"].startswith("bf16") else "float32"
    shapes = flops.arch_layer_shapes(spec["arch"], config.num_classes, policy)
    # A call repeats a kernel for ~kernels.CALL_SECONDS already: one call per timed run.
    entries = kernels.measure_model_kernels(
        shapes, spec["batch_size"], jit_compile=spec["mode"].endswith("xla"), warmup=1,
        runs=config.runs, steps=1, seed=config.seed)
    fields = {"kernels": entries, **kernels.summary(entries), "steps": 1}
    fields["peak_memory_mb"] = timing.peak_memory_mb(device_kind)
    return fields
