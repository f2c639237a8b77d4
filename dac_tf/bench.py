r"""Throughput of the DAC training step and of PGD-20 evaluation: `python -m dac_tf.bench`.

    python -m dac_tf.bench --arch=preact_resnet18 --method=at --use_dac=both \
        --batch_size=128,512 --modes=fp32,bf16,xla,bf16_xla --output=bench.json

    # CPU smoke run (a regression check any developer can run in ~1 minute):
    python -m dac_tf.bench --arch=small_cnn --method=at --batch_size=32 --steps=3 \
        --runs=5 --modes=fp32

    # The kernels alone (the measured ceiling) and each row's share of it:
    python -m dac_tf.bench --arch=small_cnn --method=at --batch_size=32 --steps=3 \
        --runs=5 --modes=fp32 --include_kernels

    # The cost of the reference's BatchNorm-only forwards (DACModel reference_bn_updates):
    python -m dac_tf.bench --arch=small_cnn --method=at,trades --batch_size=32 --steps=3 \
        --runs=5 --modes=fp32 --reference_bn_updates=both

Every row is one configuration (architecture, method, with or without DAC, with or
without `reference_bn_updates`, batch size, mode, input pipeline); the library
(`dac_tf.benchmark`) says what a row measures and docs/PERFORMANCE.md how to read it.
The flags are the fields of `dac_tf.benchmark.BenchConfig`. The JSON (`--output`) is
rewritten after every row; the tables are printed last. The exit status is 1 when every
row failed.
"""

import os
import sys

from absl import flags
import tensorflow as tf

from dac_tf import cli
from dac_tf import flagdefs
from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark import run_benchmark

PROGRAM = "dac_tf.bench"


def define_flags(flag_values=flags.FLAGS):
    """Defines the benchmark's flags (the fields of `BenchConfig`) on `flag_values`."""
    flagdefs.define_flags(BenchConfig, flag_values, program=PROGRAM)


def config_from_flags(flag_values):
    """A `BenchConfig` from parsed flags, validated (raises a UserError for bad values)."""
    config = flagdefs.read_config(BenchConfig, flag_values)
    config.validate()
    return config


@cli.program(config_from_flags,
             "the rows measured so far are in --output (if given); run again for the rest.")
def main(config):
    """`python -m dac_tf.bench`: times the rows, writes the JSON, prints the tables."""
    if config.output:
        tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(config.output)))
    rows = run_benchmark(config)
    if rows and all(r["error"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, define_flags)
