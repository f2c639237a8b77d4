"""What a benchmark run times: `BenchConfig`, the one source of `python -m dac_tf.bench`'s
flags (`dac_tf.flagdefs`), and the rules that refuse a run that cannot work."""

import dataclasses

from dac_tf import errors
from dac_tf import objectives
from dac_tf.flagdefs import flag

FORMAT = "dac_tf.bench/1"
MODES = ("fp32", "bf16", "xla", "bf16_xla")
PIPELINES = ("synthetic", "tfds_like")
USE_DAC = ("both", "on", "off")
# Same vocabulary as --use_dac: time DACModel(reference_bn_updates=...) on, off or both.
REFERENCE_BN_UPDATES = ("both", "on", "off")
ON_OFF = {"both": (False, True), "on": (True,), "off": (False,)}
ARCHITECTURES = ("preact_resnet18", "wide_resnet34_10", "small_cnn")
# The paper's evaluation attack: PGD-20, L-inf 8/255, step 2/255, uniform start.
EVAL_EPSILON = 8 / 255
EVAL_STEP_SIZE = 2 / 255
# Keys every row of the JSON has (a kernels row holds None where a key means nothing).
REQUIRED_KEYS = ("arch", "method", "use_dac", "reference_bn_updates", "batch_size", "mode",
                 "img_per_s", "device", "peak_memory_mb", "step_ms_median", "steps", "runs",
                 "tf_version")

_ROWS, _TIMING, _OUTPUT = "rows", "timing", "output"


class BenchError(errors.UserError):
    """A benchmark setting that cannot run (the message says why)."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark; each field with a flag is the flag of the same name.

    `validate` checks a config built in Python as the flags are checked. Rows: every
    (arch, batch_size, mode) x (method, DAC on/off, reference_bn_updates on/off,
    pipeline) training row; with `include_eval` a PGD evaluation row and with
    `include_kernels` a row timing the model's convolution kernels per
    (arch, batch_size, mode); with the tfds_like pipeline an input row per batch size.

    Attributes:
      num_classes: logits of the models (random labels are drawn below it); no flag.
    """

    arch: tuple[str, ...] = flag(
        ("preact_resnet18", "wide_resnet34_10"),
        f"Architectures: {', '.join(ARCHITECTURES)}.", group=_ROWS, choices=ARCHITECTURES)
    method: tuple[str, ...] = flag(objectives.METHODS, "Methods: at, trades, mart.",
                                   group=_ROWS, choices=objectives.METHODS)
    use_dac: str = flag("both", "Time with DAC, without, or both.", group=_ROWS,
                        choices=USE_DAC)
    reference_bn_updates: str = flag(
        "off", "Time DACModel(reference_bn_updates=True) (the reference's extra "
        "BatchNorm-only forwards), False, or both (adds a cost ratio).", group=_ROWS,
        choices=REFERENCE_BN_UPDATES)
    batch_size: tuple[int, ...] = flag((128, 512), "Batch sizes.", group=_ROWS)
    modes: tuple[str, ...] = flag(MODES, f"Modes: {', '.join(MODES)}.", group=_ROWS,
                                  choices=MODES)
    pipeline: tuple[str, ...] = flag(("synthetic",),
                                     f"Input pipelines: {', '.join(PIPELINES)}.",
                                     group=_ROWS, choices=PIPELINES)
    include_train: bool = flag(True, "Time the training steps.", group=_ROWS)
    include_eval: bool = flag(False, "Add PGD evaluation rows.", group=_ROWS)
    include_kernels: bool = flag(
        False, "Add a row per (arch, batch, mode) timing each distinct convolution (and "
        "dense) shape of the model alone: forward, input gradient and weight gradient. "
        "Training and evaluation rows then report their fraction of that measured rate.",
        group=_ROWS)
    num_steps: int = flag(10, "Attack steps of the training attack.", group=_ROWS)
    eval_pgd_steps: int = flag(20, "PGD steps of the evaluation rows.", group=_ROWS)
    pipeline_examples: int = flag(50_000, "Images held in memory by the tfds_like "
                                  "pipeline.", group=_ROWS)
    steps: int = flag(10, "Steps per timed run.", group=_TIMING)
    runs: int = flag(5, "Timed runs per row; the median is reported.", group=_TIMING)
    warmup: int = flag(3, "Untimed steps first (tracing, compilation).", group=_TIMING)
    steps_per_execution: int = flag(1, "Keras steps_per_execution (1: what fit does by "
                                    "default).", group=_TIMING)
    time_budget_s: float = flag(0.0, "Start no new row after this many seconds (0: no "
                                "limit).", group=_TIMING)
    seed: int = flag(0, "Seed of the synthetic data, the models and the attacks.",
                     group=_TIMING)
    output: str = flag("", "JSON file of the rows, rewritten after every row (empty: "
                       "none; the table is printed either way).", group=_OUTPUT)
    profile_dir: str = flag("", "If set, profile --profile_steps extra steps of each "
                            "row here.", group=_OUTPUT)
    profile_steps: int = flag(3, "Steps profiled per row.", group=_OUTPUT)
    num_classes: int = 10

    def validate(self):
        """Raises BenchError naming the bad setting."""
        def check_subset(name, values, valid):
            if not values:
                raise BenchError(f"--{name} is empty; give at least one of {', '.join(valid)}.")
            bad = [v for v in values if v not in valid]
            if bad:
                raise BenchError(f"--{name}: {', '.join(map(str, bad))} not valid; use "
                                 f"{', '.join(valid)}.")
        check_subset("arch", self.arch, ARCHITECTURES)
        check_subset("method", self.method, objectives.METHODS)
        check_subset("modes", self.modes, MODES)
        check_subset("pipeline", self.pipeline, PIPELINES)
        if self.use_dac not in USE_DAC:
            raise BenchError(f"--use_dac={self.use_dac!r} not valid; use {', '.join(USE_DAC)}.")
        if self.reference_bn_updates not in REFERENCE_BN_UPDATES:
            raise BenchError(f"--reference_bn_updates={self.reference_bn_updates!r} not valid; "
                             f"use {', '.join(REFERENCE_BN_UPDATES)}.")
        if not self.batch_size or any(b <= 0 for b in self.batch_size):
            raise BenchError(f"--batch_size must be positive integers, got {self.batch_size}.")
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
        if "tfds_like" in self.pipeline and self.pipeline_examples < max(self.batch_size):
            raise BenchError(f"--pipeline_examples={self.pipeline_examples} is smaller than "
                             f"the batch size {max(self.batch_size)}.")
        if not self.time_budget_s >= 0:
            raise BenchError(f"--time_budget_s must be >= 0 (0: no limit), got "
                             f"{self.time_budget_s}.")
