"""`python -m dac_tf.bench`: flags from `BenchConfig` (each default once), the CLI's
output and its one-line errors. The library is tested in tests/test_benchmark_*.py."""

import json
import os
import subprocess
import sys

from absl import flags
import pytest

import clitools
from dac_tf import bench
from dac_tf import flagdefs
from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark.config import REQUIRED_KEYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_flag_default_is_its_fields():
    flag_values = flags.FlagValues()
    bench.define_flags(flag_values)
    assert flagdefs.check_defaults(BenchConfig, flag_values) == []
    flag_values(["bench"])
    # Read back unchanged: the config of no flags is the default config.
    assert bench.config_from_flags(flag_values) == BenchConfig()
    flag_values(["bench", "--arch=small_cnn", "--batch_size=8,16", "--include_kernels",
                 "--pipeline=synthetic,tfds_like"])
    config = bench.config_from_flags(flag_values)
    assert (config.arch, config.batch_size, config.include_kernels, config.pipeline) == (
        ("small_cnn",), (8, 16), True, ("synthetic", "tfds_like"))


@pytest.mark.parametrize("args, message", [
    (["--modes=fp16"], "--modes: fp16 not valid"),
    (["--batch_size=8,big"], "--batch_size=8,big is not valid"),
    (["--warmup=0"], "--warmup must be >= 1"),
    (["stray"], "unexpected arguments: stray"),
])
def test_bad_flags_are_one_line_errors_before_anything_runs(args, message):
    result = clitools.run_main(bench, args)
    assert result.code == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow   # the real entry point, a TensorFlow process
def test_cli_writes_json_and_prints_the_table_last(tmp_path):
    output = tmp_path / "out" / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    args = ["--arch=small_cnn", "--method=at", "--use_dac=off", "--batch_size=8",
            "--steps=2", "--runs=2", "--warmup=1", "--modes=xla", "--include_eval",
            "--eval_pgd_steps=2", f"--output={output}"]
    result = subprocess.run([sys.executable, "-m", "dac_tf.bench"] + args, cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]

    rows = json.loads(output.read_text())
    assert [(r["kind"], r["mode"]) for r in rows] == [("train", "xla"), ("eval", "xla")]
    for row in rows:
        assert set(REQUIRED_KEYS) <= set(row)
        assert row["img_per_s"] > 0 and row["error"] is None
    assert rows[1]["num_steps"] == 2
    last = result.stdout.strip().splitlines()[-4:]
    assert last[0].startswith("| arch |")
    assert last[1].startswith("|---")
    assert last[2].startswith("| small_cnn | train | at | off | off | 8 | xla |")
    assert last[3].startswith("| small_cnn | eval | pgd2_eval |")

    bad = subprocess.run([sys.executable, "-m", "dac_tf.bench", "--modes=fp16"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--modes: fp16 not valid" in bad.stderr
