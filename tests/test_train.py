"""The training CLI: flag errors, an end-to-end run, resume (the config: tests/test_config.py)."""

import csv
import json
import math
import os
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
from dac_tf import rundir
from dac_tf import train

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


# -------------------------------------------------------------- end to end
def weights(model_dir, which="last"):
    model, _ = checkpoints.load_model(str(model_dir), which)
    return model.get_weights()


@pytest.mark.slow
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


@pytest.mark.slow
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
