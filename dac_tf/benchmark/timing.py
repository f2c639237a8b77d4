"""How the benchmark times work and reports the device: one timing rule for every row.

`time_runs` calls `run(warmup)` once untimed (tracing, XLA compilation, cuDNN
autotuning), then `run(steps)` `runs` times. `run` dispatches its work without waiting
for the device and returns a tensor that depends on all of it; fetching that tensor to
the host (`sync`) ends a run, so a run's time covers all its device work, and inside a
run the benchmark never waits for the device. The median run is reported.
"""

import dataclasses
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Timing:
    """The times of `time_runs`.

    Attributes:
      step_s: the median run's seconds per step.
      run_step_s: every run's seconds per step, in order.
      warmup_s: seconds of the untimed warm-up call.
    """

    step_s: float
    run_step_s: tuple
    warmup_s: float


def sync(value):
    """Fetches `value` to the host, which waits for every op it depends on."""
    np.asarray(value)


def time_runs(run, *, warmup, runs, steps):
    """Times `run(steps)` `runs` times after one untimed `run(warmup)` (module doc).

    Args:
      run: callable(n) doing n steps and returning a tensor that depends on them.
      warmup: steps of the untimed call.
      runs: timed calls.
      steps: steps per timed call.

    Returns:
      `Timing`.
    """
    t0 = time.perf_counter()
    sync(run(warmup))
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sync(run(steps))
        times.append((time.perf_counter() - t0) / steps)
    return Timing(step_s=statistics.median(times), run_step_s=tuple(times),
                  warmup_s=warmup_s)


def device_info():
    """(kind, description) of the device the benchmark runs on: "GPU" or "CPU"."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
        return "GPU", f"GPU:0 {name} (of {len(gpus)})"
    return "CPU", f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def reset_peak_memory(device_kind):
    if device_kind == "GPU":
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_mb(device_kind):
    """GPU: the allocator's peak since the last reset. CPU: the process's maximum
    resident set size so far (no per-row counter exists; it only grows)."""
    if device_kind == "GPU":
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    # ru_maxrss is in KiB on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def one_line(err):
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
