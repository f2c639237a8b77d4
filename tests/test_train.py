"""The training CLI: config resolution, flag errors, an end-to-end run, resume, tfds."""

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import clitools
from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import rundir
from dac_tf import train
from dac_tf import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dataset="digits", arch="small_cnn", epochs=2, batch_size=64, lr=0.05,
            lr_schedule="constant", epsilon=32, step_size=8, num_steps=3, val_size=100,
            eval_examples=96, max_steps_per_epoch=6, report=False, verbose=0)


def tiny_flags(model_dir, **overrides):
    values = dict(TINY, model_dir=str(model_dir))
    values.update(overrides)
    args = []
    for key, value in values.items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no{key}")
        else:
            args.append(f"--{key}={value}")
    return args


def run_cli(args, timeout=None):
    """`python -m dac_tf.train ARGS`, run in this process (`clitools.run_main`); the
    entry point itself is tested once, in tests/test_cli_errors.py."""
    del timeout   # in-process: nothing to wait for
    result = clitools.run_main(train, args)
    return types.SimpleNamespace(returncode=result.code, stdout=result.stdout,
                                 stderr=result.stderr)


# ------------------------------------------------------------------- config
def test_defaults_reproduce_the_reference_per_method():
    at = config_lib.resolve({"method": "at"})
    assert (at.epsilon, at.step_size, at.num_steps, at.epochs, at.batch_size, at.lr,
            at.lr_schedule, at.weight_decay, at.augment, at.normalization, at.ac_step,
            at.attack_start) == (8 / 255, 2 / 255, 10, 200, 128, 0.1, "piecewise_at", 5e-4,
                                 "reflect", "cifar10", 0.3, "uniform")
    trades = config_lib.resolve({"method": "trades"})
    assert (trades.epsilon, trades.step_size, trades.epochs, trades.lr_schedule,
            trades.weight_decay, trades.augment, trades.normalization, trades.beta,
            trades.ac_step, trades.attack_start) == (
        0.031, 0.0078, 76, "piecewise_trades", 2e-4, "zero", "none", 6.0, 0.1, "normal")
    mart = config_lib.resolve({"method": "mart"})
    assert (mart.batch_size, mart.lr, mart.weight_decay, mart.epochs, mart.beta) == (
        512, 0.01, 3.5e-3, 120, 5.0)


def test_epsilon_flags_are_in_pixel_units():
    config = config_lib.resolve({"method": "at", "epsilon": 16, "step_size": 4})
    assert config.epsilon == pytest.approx(16 / 255)
    assert config.step_size == pytest.approx(4 / 255)


@pytest.mark.parametrize("values, flag", [
    ({"method": "at", "beta": 6.0}, "--beta"),
    ({"method": "at", "epochs": 0}, "--epochs"),
    ({"method": "at", "batch_size": -4}, "--batch_size"),
    ({"method": "at", "norm": "l2"}, "--norm=l2"),
    ({"method": "at", "depth": 28}, "--depth"),
    ({"method": "at", "epsilon": 300}, "--epsilon"),
    ({"method": "at", "dataset": "imagenet"}, "--dataset"),
    ({"method": "at", "use_dac": False, "ac_step": 0.3}, "--ac_step"),
    ({"method": "at", "momentum": 1.5}, "--momentum"),
])
def test_bad_values_name_the_flag(values, flag):
    with pytest.raises(config_lib.ConfigError, match=flag):
        config_lib.resolve(values)


@pytest.mark.parametrize("args, expected", [
    (["--method=pgd"], "--method"),
    (["--method=at", "--beta=6"], "--beta"),
    (["--flagfile={tmp}/does_not_exist.cfg"], "does_not_exist.cfg"),
    (["--dataset=cifar10", "--data_dir={tmp}/empty"], "--data_dir"),
    (["--epochs=-1"], "--epochs"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, expected):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(args + [f"--model_dir={tmp_path}/run"], timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    error_lines = [l for l in result.stderr.splitlines() if "rror" in l]
    assert len(error_lines) >= 1 and len(error_lines[-1]) < 600


def test_help_marks_the_flags_resume_may_change():
    """`--resume`'s help refers to "the flags marked [resumable]": exactly the flags
    `--resume` accepts a change of carry that mark in `--help`."""
    result = clitools.run_main(train, ["--help"])
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert f"marked {config_lib.RESUMABLE_MARK} to change" in text
    marked = set()
    for block in re.split(r"\s(?=--(?:\[no\])?[a-z_]+: )", text):
        match = re.match(r"--(?:\[no\])?([a-z_]+): ", block)
        if match and block.rstrip().count(config_lib.RESUMABLE_MARK) and \
                match.group(1) != "resume":
            marked.add(match.group(1))
    assert marked == set(config_lib.RESUME_MAY_CHANGE) == {
        "epochs", "eval_examples", "max_steps_per_epoch", "jit_compile"}


# -------------------------------------------------------------- end to end
def weights(model_dir, which="last"):
    model, _ = checkpoints.load_model(str(model_dir), which)
    return model.get_weights()


def test_end_to_end_run_writes_everything(tmp_path):
    model_dir = tmp_path / "run"
    result = run_cli(tiny_flags(model_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("flags.cfg", "config.json", "metrics.csv", "summary.json"):
        assert (model_dir / name).stat().st_size > 0
    with open(model_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rundir.METRIC_COLUMNS) == set(rows[0])
    for r in rows:
        assert 0 <= float(r["val_robust_accuracy"]) <= float(r["val_clean_accuracy"]) <= 1
        assert float(r["train_ac"]) > 0 and float(r["train_ac_loss"]) > 0
    best = max(rows, key=lambda r: float(r["val_robust_accuracy"]))
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["best_epoch"] == int(best["epoch"])
    # Both checkpoints restore into the architecture config.json names.
    assert len(weights(model_dir, "best")) == len(weights(model_dir, "last"))
    assert "Metrics:" in result.stdout and "Plots:" in result.stdout

    # flags.cfg (which does not hard-code --model_dir) reruns the run where it now is:
    # accepted as identical, reported complete, and nothing is rewritten.
    moved = tmp_path / "moved"
    os.rename(model_dir, moved)
    before = {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    assert not [line for line in (moved / "flags.cfg").read_text().splitlines()
                if line.startswith("--model_dir")]
    rerun = run_cli([f"--flagfile={moved}/flags.cfg"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{moved} is complete: 2 of 2 epochs" in rerun.stdout
    assert "Epoch 1/" not in rerun.stdout
    assert {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()} == before
    os.rename(moved, model_dir)

    # Same model_dir, different flags: refused without --resume.
    again = run_cli(tiny_flags(model_dir, lr=0.01))
    assert again.returncode != 0 and "--lr" in again.stderr and "Traceback" not in again.stderr


def _tensorboard_scalars(log_dir):
    """{run: {tag: [(step, value)]}} of the event files under `log_dir`."""
    import tensorflow as tf
    scalars = {}
    for run in sorted(os.listdir(log_dir)):
        for name in sorted(os.listdir(os.path.join(log_dir, run))):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, run, name)):
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor)) if value.HasField(
                        "tensor") else value.simple_value
                    scalars.setdefault(run, {}).setdefault(value.tag, []).append(
                        (event.step, number))
    return scalars


COSINE = dict(epochs=3, max_steps_per_epoch=3, lr=0.05, lr_schedule="cosine",
              num_steps=1, select_steps=1, eval_examples=32)


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    """A finished 3-epoch run whose learning rate falls at every batch."""
    model_dir = tmp_path_factory.mktemp("cosine") / "run"
    result = run_cli(tiny_flags(model_dir, **COSINE))
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir


def test_logs_say_what_each_epoch_trained_with(cosine_run):
    """`lr` is the rate of the epoch's first batch (a cosine schedule lowers it at every
    batch; the rate after the epoch, which the logs used to show, is the next epoch's),
    TensorBoard has one learning-rate key, and the test metrics have their own run."""
    epochs, steps, lr = COSINE["epochs"], COSINE["max_steps_per_epoch"], COSINE["lr"]
    rows = rundir.read_metrics(str(cosine_run))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        first_batch = (row["epoch"] - 1) * steps
        expected = lr * 0.5 * (1 + math.cos(math.pi * first_batch / (epochs * steps)))
        assert row["lr"] == pytest.approx(expected, rel=1e-5), row
    assert rows[0]["lr"] == pytest.approx(lr)
    scalars = _tensorboard_scalars(cosine_run / "tensorboard")
    assert set(scalars) == {"train", "validation", "test"}
    rate_tags = [t for run in scalars.values() for t in run
                 if "lr" in t or "learning_rate" in t]
    assert rate_tags == ["epoch_lr"]
    assert [v for _, v in scalars["train"]["epoch_lr"]] == pytest.approx(
        [r["lr"] for r in rows])
    assert not [t for t in scalars["train"] if "test" in t or "robust" in t]
    for run, prefix in (("validation", "val"), ("test", "test")):
        steps_logged, values = zip(*scalars[run]["epoch_robust_accuracy"])
        assert list(steps_logged) == [r["epoch"] for r in rows]
        assert list(values) == pytest.approx(
            [r[f"{prefix}_robust_accuracy"] for r in rows], rel=1e-5)


def test_a_resume_never_replans_an_epoch_dependent_schedule(cosine_run, tmp_path):
    """The quickstart case: a finished cosine run resumed with more epochs used to
    restart from a rate near lr (0 -> 0.0073). Refused, with what to do; nothing
    changed; the 'complete' message no longer suggests it."""
    model_dir = tmp_path / "run"
    shutil.copytree(cosine_run, model_dir)
    before = clitools.tree_hashes(model_dir)
    complete = run_cli(tiny_flags(model_dir, **COSINE))
    assert complete.returncode == 0 and "is complete: 3 of 3" in complete.stdout
    assert "--resume --epochs" not in complete.stdout
    assert f"--flagfile={model_dir / 'flags.cfg'} --epochs=N" in complete.stdout
    for epochs in (4, 10):
        result = run_cli(tiny_flags(model_dir, **dict(COSINE, epochs=epochs), resume=True))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for needle in (f"--epochs={epochs}", "--lr_schedule=cosine", "start a new run",
                       "--flagfile="):
            assert needle in lines[0], lines[0]
        assert clitools.tree_hashes(model_dir) == before


@pytest.mark.slow   # a real process killed mid-run, then two trainings
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    flags3 = dict(epochs=3, val_size=0, eval_examples=64, num_steps=2)
    reference = tmp_path / "uninterrupted"
    assert run_cli(tiny_flags(reference, **flags3)).returncode == 0

    interrupted = tmp_path / "interrupted"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "-m", "dac_tf.train"]
                            + tiny_flags(interrupted, **flags3), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = interrupted / checkpoints.LAST_DIR / "ckpt-1.index"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / checkpoints.LAST_DIR / "ckpt-3.index").exists()

    resumed = run_cli(tiny_flags(interrupted, **flags3))   # the same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout
    for a, b in zip(weights(reference), weights(interrupted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with open(reference / "metrics.csv") as f, open(interrupted / "metrics.csv") as g:
        ref_rows, new_rows = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [r["test_robust_accuracy"] for r in ref_rows] == [
        r["test_robust_accuracy"] for r in new_rows]


def test_tfds_cifar10_path_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = config_lib.resolve(dict(
        dataset="cifar10", arch="small_cnn", method="trades", epochs=1, batch_size=16,
        max_steps_per_epoch=2, eval_examples=16, num_steps=1, report=False, verbose=0,
        model_dir=str(tmp_path / "cifar")))
    with tfds.testing.mock_data(num_examples=48):
        summary = training.train_and_evaluate(config)
    saved = json.loads((tmp_path / "cifar" / "config.json").read_text())
    assert saved["input_shape"] == [32, 32, 3] and saved["num_classes"] == 10
    assert summary["last"]["epoch"] == 1
    assert 0 <= summary["last"]["test_robust_accuracy"] <= 1


def parse_flagfile(path):
    values = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line[2:].partition("=")
        if not eq:
            values[key[2:] if key.startswith("no") else key] = not key.startswith("no")
            continue
        try:
            values[key] = int(value)
        except ValueError:
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value
    return values


@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".cfg")))
def test_config_files_resolve_and_paper_rows_equal_the_reference(name):
    path = os.path.join(REPO, "configs", name)
    header = open(path, encoding="utf-8").readline()
    assert header.startswith("#") and ("Paper row" in header or "Quickstart" in header)
    assert f"--flagfile=configs/{name}" in open(path, encoding="utf-8").read()
    values = parse_flagfile(path)
    config = config_lib.resolve(values)
    if name == "quickstart.cfg":
        assert config.dataset == "digits" and config.use_dac
        return
    # The reference's values, plus its BatchNorm-only passes (off in the library).
    reference = config_lib.resolve({"method": values["method"], "use_dac": values["use_dac"],
                                    "arch": values["arch"], "dataset": "cifar10",
                                    "reference_bn_updates": True})
    differing = config_lib.differing_keys(
        json.loads(json.dumps(reference.to_json_dict())), config)
    assert differing == []
    assert config.use_dac == (not name.endswith("_baseline.cfg"))


def test_non_finite_loss_stops_with_the_epoch_and_batch_and_writes_no_best(tmp_path):
    model_dir = tmp_path / "nan"
    result = run_cli(tiny_flags(model_dir, lr=1e30, lr_schedule="constant"))
    assert result.returncode != 0
    assert "non-finite loss at batch" in result.stderr and "epoch 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (model_dir / checkpoints.BEST_DIR).exists() or not os.listdir(
        model_dir / checkpoints.BEST_DIR)
    assert not (model_dir / checkpoints.LAST_DIR).exists() or not os.listdir(
        model_dir / checkpoints.LAST_DIR)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model_dir = tmp_path / "run"
    assert run_cli(tiny_flags(model_dir, val_size=0)).returncode == 0
    last = model_dir / checkpoints.LAST_DIR
    data_file = next(p for p in last.iterdir() if p.name.startswith("ckpt-2.data"))
    data_file.write_bytes(data_file.read_bytes()[:100])          # truncated write
    resumed = run_cli(tiny_flags(model_dir, val_size=0, epochs=3, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ckpt-2" in resumed.stderr and "unreadable" in resumed.stderr
    assert "Resuming" in resumed.stdout and "from epoch 1" in resumed.stdout
    with open(model_dir / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
