"""Throughput benchmark of the DAC training step and of PGD evaluation (a library).

    from dac_tf import benchmark
    config = benchmark.BenchConfig(arch=("small_cnn",), method=("at",), batch_size=(32,),
                                   modes=("fp32",), steps=3, runs=5, include_kernels=True)
    rows = benchmark.run_benchmark(config)     # logs the tables, returns the rows

`python -m dac_tf.bench` is the same call with the flags of `BenchConfig`. The modules:

- `config`: `BenchConfig` (the flags, their defaults and validation), `BenchError`;
- `flops`: the arithmetic of a model and of a step (`forward_flops`, `step_flops`);
- `kernels`: the step's own convolutions timed alone (the measured ceiling);
- `timing`: the one timing rule (`time_runs`), the device and its memory;
- `runners`: what a row runs (a training step, the evaluation's PGD, the input pipeline);
- `rows`: which rows, and what is derived from them (ratios, achieved/measured rates);
- `table`: the markdown tables and the JSON; `suite`: `run_benchmark`.
"""

from dac_tf.benchmark.config import BenchConfig
from dac_tf.benchmark.config import BenchError
from dac_tf.benchmark.flops import forward_flops
from dac_tf.benchmark.flops import input_layer_flops
from dac_tf.benchmark.flops import layer_shapes
from dac_tf.benchmark.flops import step_flops
from dac_tf.benchmark.flops import step_passes
from dac_tf.benchmark.kernels import measure_model_kernels
from dac_tf.benchmark.suite import run_benchmark

__all__ = ["BenchConfig", "BenchError", "forward_flops", "input_layer_flops",
           "layer_shapes", "measure_model_kernels", "run_benchmark", "step_flops",
           "step_passes"]
