"""`python -m dac_tf.report`: flags from `ReportConfig` (each default once), the CLI's
output and its one-line errors. The figures are tested in tests/test_plots.py."""

import os
import subprocess
import sys

import pytest

from absl import flags

import clitools
from dac_tf import flagdefs
from dac_tf import plots
from dac_tf import report
from test_plots import assert_png
from test_plots import write_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_report_defines_no_flags():
    # The training CLI imports this module after defining its own --model_dir.
    assert "heatmap_examples" not in flags.FLAGS


def test_every_flag_default_is_its_fields():
    flag_values = flags.FlagValues()
    report.define_flags(flag_values)
    assert flagdefs.check_defaults(report.ReportConfig, flag_values) == []
    flag_values(["report"])
    assert report.ReportConfig(**flagdefs.read_flags(report.ReportConfig, flag_values)) == (
        report.ReportConfig())


def test_the_programs_library_call_is_the_plots_one():
    # The training program calls `dac_tf.report.make_report`.
    assert report.make_report is plots.make_report


def run_cli(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "dac_tf.report"] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_writes_figures_and_fails_cleanly_on_a_bad_dir(tmp_path):
    good, bad = str(tmp_path / "good"), str(tmp_path / "bad")
    write_metrics(good, num_epochs=4)
    os.makedirs(bad)
    result = clitools.run_main(report, [f"--model_dir={bad}", "--noheatmaps"])
    assert result.code == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "metrics.csv" in errors[0], result.stderr

    # The entry point itself, once.

    out = str(tmp_path / "out")
    result = run_cli([f"--model_dir={good}", f"--output_dir={out}", "--noheatmaps",
                      "--label=baseline"])
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert printed == [os.path.join(out, plots.ROBUST_OVERFITTING_FILE),
                       os.path.join(out, plots.ADVERSARIAL_CERTAINTY_FILE)]
    for path in printed:
        assert_png(path)
