"""Every failure a user can cause is one line: `error: ...`, exit code 2, no traceback.

A table of bad inputs run through the command-line programs in this process
(`clitools.run_main`, the same `main` as `python -m dac_tf.X`), plus faults injected
where a real one cannot be made here (a full disk; tests run as root, so a read-only
folder is /proc). Each case also checks that nothing was created or left behind.
"""

import errno
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import clitools
from dac_tf import cluster
from dac_tf import evaluate
from dac_tf import export
from dac_tf import report
from dac_tf import rundir
from dac_tf import train

TINY = ["--dataset=digits", "--arch=small_cnn", "--epochs=1", "--batch_size=64",
        "--num_steps=1", "--select_steps=1", "--epsilon=32", "--step_size=8",
        "--eval_examples=32", "--max_steps_per_epoch=1", "--noreport", "--verbose=0"]


def assert_one_line(result, needle):
    assert result.code == 2, (result.code, result.stdout[-500:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def npz_2x2(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((20, 2, 2, 1), np.float32), y_train=np.arange(20) % 2,
             x_test=rng.random((10, 2, 2, 1), np.float32), y_test=np.arange(10) % 2)
    return path


TRAIN_CASES = {
    "model_dir is a file": (["--model_dir={tmp}/afile"], "is a file, not a directory"),
    "model_dir under /proc": (["--model_dir=/proc/dac_tf_run"], "--model_dir=/proc/dac_tf_run"),
    "2x2 npz images with small_cnn": (["--dataset=npz:{npz}", "--augment=none"],
                                      "small_cnn needs inputs"),
    "cifar10 normalisation on 1 channel": (["--normalization=cifar10"], "1 channels"),
    "negative seed": (["--seed=-1"], "--seed=-1"),
    "seed too large for an integer flag": (["--seed=1e20"], "--seed=1e20"),
    "WideResNet depth 7": (["--arch=wide_resnet", "--depth=7"], "--depth=7"),
    "reflect pad as large as the image": (["--augment=reflect", "--pad=8"], "--pad=8"),
    "missing flagfile": (["--flagfile={tmp}/nope.cfg"], "nope.cfg"),
    "unknown flag": (["--epsilonn=8"], "epsilonn"),
    "positional argument": (["stray"], "unexpected arguments: stray"),
    "non-finite lr": (["--lr=inf"], "--lr=inf"),
    "radius in [0, 1] units": (["--epsilon=0.031"], "--epsilon=7.905"),
    "batch smaller than the replicas": (["--cpu_replicas=2", "--batch_size=1"],
                                        "--batch_size=1 is smaller than the 2 replicas"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_training_inputs_are_one_line_errors(case, tmp_path, npz_2x2):
    args, needle = TRAIN_CASES[case]
    (tmp_path / "afile").write_text("x")
    args = [a.format(tmp=tmp_path, npz=npz_2x2) for a in args]
    model_dir = [] if any(a.startswith("--model_dir") for a in args) else [
        f"--model_dir={tmp_path / 'run'}"]
    result = clitools.run_main(train, TINY + model_dir + args)
    assert_one_line(result, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tf_config, needle", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is out of range"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task type 'chief' is not a job"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     '"host:port"'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker"}}',
     "job(s) ps"),
    ("", "needs the TF_CONFIG environment variable"),
])
def test_bad_tf_config_is_one_line(tmp_path, monkeypatch, tf_config, needle):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    result = clitools.run_main(train, TINY + ["--strategy=multi_worker",
                                              f"--model_dir={tmp_path / 'run'}"])
    assert_one_line(result, needle)
    assert not (tmp_path / "run").exists()


def test_tf_config_resolution():
    spec = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]},
            "task": {"type": "worker", "index": 1}}
    task = cluster.parse_tf_config(json.dumps(spec))
    assert (task.type, task.index, task.is_chief, task.num_workers) == ("worker", 1, False, 3)
    assert task.address == "w1:1"
    spec["task"] = {"type": "chief", "index": 0}
    assert cluster.parse_tf_config(json.dumps(spec)).is_chief
    spec = {"cluster": {"worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 0}}
    assert cluster.parse_tf_config(json.dumps(spec)).is_chief   # worker 0 without chief


@pytest.mark.slow
@pytest.mark.parametrize("where", ["metrics", "checkpoint"])
def test_a_full_disk_during_training_is_one_line_and_leaves_no_run(tmp_path, monkeypatch,
                                                                    where):
    if where == "metrics":
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device",
                          str(tmp_path / "run" / "metrics.csv"))
        monkeypatch.setattr(rundir, "write_metrics", full)
    else:
        def full(*args, **kwargs):
            raise tf.errors.ResourceExhaustedError(
                None, None, "ckpt-1_temp/part-00000: No space left on device")
        monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    result = clitools.run_main(train, TINY + [f"--model_dir={tmp_path / 'run'}"])
    assert_one_line(result, "No space left on device")
    assert not (tmp_path / "run").exists()


def test_report_output_dir_that_is_a_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,test_robust_accuracy\n1,0.5\n")
    (tmp_path / "afile").write_text("x")
    result = clitools.run_main(report, [f"--model_dir={run}", "--noheatmaps",
                                        f"--output_dir={tmp_path / 'afile'}"])
    assert_one_line(result, "is a file")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("cli") / "run"
    result = clitools.run_main(train, TINY + [f"--model_dir={model_dir}"])
    assert result.code == 0, result.stderr
    return model_dir


@pytest.mark.parametrize("case", ["export_dir under /proc", "export_dir is a file",
                                  "no model_dir", "model_dir missing"])
def test_bad_export_targets_are_one_line(case, tmp_path, finished_run):
    (tmp_path / "afile").write_text("x")
    target, model_dir, needle = {
        "export_dir under /proc": ("/proc/dac_tf_export", finished_run, "dac_tf_export"),
        "export_dir is a file": (tmp_path / "afile", finished_run, "is not a directory"),
        "no model_dir": (tmp_path / "export", None, "--model_dir is required"),
        "model_dir missing": (tmp_path / "export", tmp_path / "norun", "no such directory"),
    }[case]
    args = [f"--export_dir={target}"] + ([f"--model_dir={model_dir}"] if model_dir else [])
    assert_one_line(clitools.run_main(export, args), needle)
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_an_export_killed_mid_write_leaves_nothing_after_the_next_one(tmp_path,
                                                                      finished_run):
    """A kill leaves a hidden work folder (here: a dead pid's); the next export removes
    it, and an interrupted --overwrite gets its old version back."""
    base = tmp_path / "export"
    first = clitools.run_main(export, [f"--model_dir={finished_run}", f"--export_dir={base}"])
    assert first.code == 0, first.stderr
    dead = _dead_pid()
    (base / f".tmp-export-{dead}-abcd1234").mkdir()
    (base / f".tmp-export-{dead}-abcd1234" / "saved_model.pb").write_bytes(b"half")
    os.rename(base / "1", base / "keep")          # an --overwrite of 1 killed midway:
    (base / f".old-1-{dead}-abcd1234").mkdir()     # version 1 moved aside, no new 1 yet
    os.rename(base / "keep", base / f".old-1-{dead}-abcd1234" / "1")
    second = clitools.run_main(export, [f"--model_dir={finished_run}",
                                        f"--export_dir={base}"])
    assert second.code == 0, second.stderr
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert (base / "1" / "saved_model.pb").stat().st_size > 1000


def _dead_pid():
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_evaluate_of_a_missing_model_is_one_line(tmp_path):
    result = clitools.run_main(evaluate, [f"--model={tmp_path / 'nope'}"])
    assert_one_line(result, "no such directory")


@pytest.mark.slow
def test_the_entry_point_prints_the_error_line_and_no_tensorflow_chatter(tmp_path):
    """`python -m dac_tf.train` for real: TensorFlow's start-up log lines are filtered
    out of stderr, so the promised one line is all there is."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "dac_tf.train", "--epsilon=0.031",
                             f"--model_dir={tmp_path / 'run'}"], capture_output=True,
                            text=True, env=env, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --epsilon=0.031 is in pixel units /255 (8 means 8/255); for 0.031 in "
        "[0, 1] units pass --epsilon=7.905."], result.stderr


def test_the_log_filter_keeps_errors_and_drops_chatter():
    import subprocess
    import sys
    from dac_tf import _logfilter
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written "
        "to STDERR",
        "I0000 00:00:1795621857.771353   22407 port.cc:153] oneDNN custom operations",
        "I0000 00:00:1795621857.810378   22407 cpu_feature_guard.cc:227] This binary",
        "To enable the following instructions: AVX2 AVX512F, in other operations.",
        "W0000 00:00:1795621860.722585   22407 auto_shard.cc:559] assert_cardinality",
        "\t [[{{node MultiDeviceIteratorGetNextFromShard}}]]",
        "E0000 00:00:1795621860.281334   22407 cuda_platform.cc:52] failed call to cuInit",
        "E0000 00:00:1795621860.281334   22407 bfc_allocator.cc:1] Out of memory",
        "F0000 00:00:1795621860.281334   22407 check.cc:1] Check failed: x",
        "Traceback (most recent call last):",
        "  File \"x.py\", line 1, in <module>",
        "error: --lr=inf is not valid",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    kept = subprocess.run([sys.executable, "-S", "-c", _logfilter._FILTER],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          env=env, timeout=60).stdout.splitlines()
    expected = lines[7:]
    if os.path.exists("/proc/driver/nvidia"):   # a GPU machine keeps the cuInit error
        expected = lines[6:]
    assert kept == expected
