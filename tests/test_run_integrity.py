"""Nothing lost, nothing silently wrong: the run directory under hostile conditions.

A second process on a live run, a stale lock, a damaged run directory, a failed first
epoch, a resume that asks for fewer epochs, leftovers of killed writers. Each case checks
what a user would look at: the exit code, the one-line message, and that the files of a
real run are untouched (hashes before and after).
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import clitools
from dac_tf import callbacks
from dac_tf import checkpoints
from dac_tf import rundir
from dac_tf import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=digits", "--arch=small_cnn", "--epochs=2", "--batch_size=128",
        "--lr=0.05", "--lr_schedule=constant", "--epsilon=32", "--step_size=8",
        "--num_steps=2", "--select_steps=2", "--val_size=100", "--eval_examples=64",
        "--max_steps_per_epoch=3", "--noreport", "--verbose=0"]


def run_train(model_dir, *extra):
    return clitools.run_main(train, TINY + [f"--model_dir={model_dir}", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("integrity") / "run"
    result = run_train(model_dir)
    assert result.code == 0, result.stderr
    return model_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def assert_one_line_error(result, *needles):
    assert result.code == 2, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------- damaged runs
def _delete(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


@pytest.mark.parametrize("damage, needle", [
    (lambda d: _delete(d / "metrics.csv"), "metrics.csv is missing"),
    (lambda d: _delete(d / "config.json"), "config.json is missing"),
    (lambda d: _delete(d / "checkpoints" / "checkpoint"), "checkpoints/checkpoint"),
    (lambda d: (d / "metrics.csv").write_text(
        (d / "metrics.csv").read_text().splitlines()[0] + "\n"
        + (d / "metrics.csv").read_text().splitlines()[1] + "\n"), "rows of epoch(s) 2"),
    (lambda d: (d / "metrics.csv").write_bytes(os.urandom(512) + b"\x00"), "metrics.csv"),
])
def test_a_damaged_run_directory_is_refused_and_left_untouched(run_copy, damage, needle):
    damage(run_copy)
    before = clitools.tree_hashes(run_copy)
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert_one_line_error(result, needle, str(run_copy))
    assert "Traceback" not in result.stderr
    assert clitools.tree_hashes(run_copy) == before


def test_a_lost_best_checkpoint_is_refused(run_copy):
    rows = rundir.read_metrics(str(run_copy))
    rows[0]["val_robust_accuracy"] = 1.0      # epoch 1 is the best, before the last one
    rundir.write_metrics(str(run_copy), rows)
    for name in os.listdir(run_copy / "best"):
        os.remove(run_copy / "best" / name)
    before = clitools.tree_hashes(run_copy)
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert_one_line_error(result, "best/ lacks the checkpoint of epoch 1")
    assert clitools.tree_hashes(run_copy) == before


@pytest.mark.slow
def test_killed_between_last_and_best_saves_recovers_best_from_last(run_copy):
    """The loop saves `last` before `best`: a kill in between leaves best/ one epoch
    behind, and the restored `last` holds exactly the weights best/ must hold."""
    rows = rundir.read_metrics(str(run_copy))
    # Make epoch 2 the best by the selection column, as if best/ had not been saved yet.
    rows[-1]["val_robust_accuracy"] = 1.0
    rundir.write_metrics(str(run_copy), rows)
    for name in os.listdir(run_copy / "best"):
        if name.startswith("ckpt-2"):
            os.remove(run_copy / "best" / name)
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert result.code == 0, result.stderr
    best_epochs = rundir.inspect(str(run_copy)).best_epochs
    assert 2 in best_epochs or 3 in best_epochs


# ----------------------------------------------------------------- resumes
def test_rerunning_a_finished_run_says_complete_and_writes_nothing(run_copy):
    before = clitools.tree_hashes(run_copy)
    for extra in ([], ["--resume", "--epochs=1"]):
        result = run_train(run_copy, *extra)
        assert result.code == 0, result.stderr
        assert "is complete: 2 of 2 epochs" in result.stdout
        assert clitools.tree_hashes(run_copy) == before   # the recorded epochs stay 2
    assert json.loads((run_copy / "config.json").read_text())["epochs"] == 2


@pytest.mark.slow   # two trainings; the rule itself: tests/test_training_resume.py
def test_a_resume_keeps_every_batch_at_its_planned_rate(tmp_path):
    """piecewise_trades drops at fixed epochs: more epochs continue the same formula
    and are allowed; other batches per epoch would move every batch to another rate
    and are refused."""
    model_dir = tmp_path / "trades"
    flags = ("--lr_schedule=piecewise_trades", "--num_steps=1", "--select_steps=1",
             "--eval_examples=16", "--val_size=0")
    assert run_train(model_dir, "--epochs=1", *flags).code == 0
    before = clitools.tree_hashes(model_dir)
    result = run_train(model_dir, "--epochs=2", "--max_steps_per_epoch=2", "--resume",
                       *flags)
    assert_one_line_error(result, "--max_steps_per_epoch=2", "2 batches per epoch where "
                          "the run has 3", "--max_steps_per_epoch=3")
    assert clitools.tree_hashes(model_dir) == before
    result = run_train(model_dir, "--epochs=2", "--resume", *flags)
    assert result.code == 0, result.stderr
    rows = rundir.read_metrics(str(model_dir))
    assert [r["epoch"] for r in rows] == [1, 2]
    # The rate of epoch 2 (batches 3..5) is the formula's: lr before epoch 75.
    assert rows[1]["lr"] == pytest.approx(0.05)


@pytest.mark.slow
def test_columns_a_user_added_to_metrics_csv_survive_a_resume(run_copy):
    path = run_copy / "metrics.csv"
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    notes = ['looks fine', 'spike, "check" lr']         # a comma and quotes: CSV-quoted
    for record, note, score in zip(records, notes, ("0.5", "7e-3")):
        record.update(note=note, my_score=score)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert result.code == 0, result.stderr
    with open(path, newline="") as f:
        after = list(csv.DictReader(f))
    assert [r["epoch"] for r in after] == ["1", "2", "3"]
    assert [r["note"] for r in after] == notes + [""]
    assert [r["my_score"] for r in after] == ["0.5", "7e-3", ""]
    for old, new in zip(records, after):            # the known columns are unchanged
        assert all(new[k] == old[k] for k in rundir.METRIC_COLUMNS)


@pytest.mark.slow
def test_a_resume_removes_what_killed_writers_left(run_copy):
    (run_copy / "metrics.csv.tmp-123-abcd").write_text("half")
    (run_copy / "checkpoints" / "ckpt-3_temp").mkdir()
    (run_copy / "checkpoints" / "ckpt-3_temp" / "part-00000").write_bytes(b"x")
    (run_copy / ".worker_1").mkdir()
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert result.code == 0, result.stderr
    left = {p.name for p in run_copy.rglob("*")}
    assert not {"metrics.csv.tmp-123-abcd", "ckpt-3_temp", ".worker_1"} & left
    assert [r["epoch"] for r in rundir.read_metrics(str(run_copy))] == [1, 2, 3]
    assert not (run_copy / rundir.LOCK_FILE).exists()


# ------------------------------------------------------------- failed starts
def test_a_failed_start_leaves_no_run_directory(tmp_path):
    model_dir = tmp_path / "new"
    result = clitools.run_main(train, TINY + [f"--model_dir={model_dir}",
                                              f"--dataset=npz:{tmp_path / 'missing.npz'}"])
    assert_one_line_error(result, "missing.npz")
    assert not model_dir.exists()


@pytest.mark.parametrize("case", ["longer_than_path_max", "name_longer_than_name_max",
                                  "parent_is_a_file"])
def test_a_model_dir_that_cannot_be_created_leaves_no_folder(tmp_path, case):
    """makedirs creates the folders it can before the one that fails: a path longer
    than PATH_MAX used to leave ~20 empty nested folders behind its one-line error."""
    (tmp_path / "file").write_text("x")
    model_dir = {
        "longer_than_path_max": tmp_path / "a" / "/".join(["d" * 200] * 25),
        "name_longer_than_name_max": tmp_path / "a" / "b" / ("c" * 300),
        "parent_is_a_file": tmp_path / "file" / "run",
    }[case]
    result = run_train(model_dir)
    assert_one_line_error(result, "cannot be created")
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.slow
def test_a_failed_first_epoch_leaves_nothing_and_does_not_block_its_fix(tmp_path):
    model_dir = tmp_path / "runs" / "nan"
    failed = run_train(model_dir, "--lr=1e30")
    assert_one_line_error(failed, "non-finite loss", "epoch 1")
    assert not (tmp_path / "runs").exists()   # nor the parent it created
    # A directory the user made beforehand is kept, but a run that finished no epoch
    # may be restarted with other flags.
    model_dir.mkdir(parents=True)
    assert run_train(model_dir, "--lr=1e30").code == 2
    assert (model_dir / "config.json").exists()
    fixed = run_train(model_dir, "--lr=0.05")
    assert fixed.code == 0, fixed.stderr
    assert json.loads((model_dir / "config.json").read_text())["lr"] == 0.05


@pytest.mark.slow
def test_an_epoch_that_overflows_the_weights_is_a_failed_epoch(tmp_path):
    """The reported case: the one update of epoch 1 sends the weights to ~1e36 after
    that batch's finite loss was logged; validation then scores NaN logits. The epoch
    must fail (one line naming it, exit 2) and nothing of it may be saved."""
    model_dir = tmp_path / "runs" / "overflow"
    result = run_train(model_dir, "--lr=1e38", "--max_steps_per_epoch=1", "--nouse_dac")
    assert_one_line_error(result, "epoch 1 ended with non-finite", "no checkpoint")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_failed_later_epoch_keeps_the_previous_checkpoints_newest(tmp_path, monkeypatch):
    """Epoch 2 ends with NaN weights (injected after its validation, so every logged
    value is finite): it is not saved; epoch 1's checkpoints and row stay the newest (a
    run directory any resume continues from, tested above)."""
    model_dir = tmp_path / "run"
    original = callbacks.EpochInfo.on_epoch_end

    def poison_epoch_2(self, epoch, logs=None):
        if epoch == 1:
            weight = self.model.base_model.trainable_variables[0]
            weight.assign(np.full(weight.shape, np.nan, np.float32))
        return original(self, epoch, logs)

    monkeypatch.setattr(callbacks.EpochInfo, "on_epoch_end", poison_epoch_2)
    cheap = ("--num_steps=1", "--select_steps=1", "--eval_examples=16", "--val_size=0")
    failed = run_train(model_dir, *cheap)
    assert_one_line_error(failed, "epoch 2 ended with non-finite weights",
                          "the checkpoints of epoch 1 stay the newest")
    state = rundir.inspect(str(model_dir))
    assert state.last_epochs == (1,) and state.best_epochs == (1,)
    assert [r["epoch"] for r in state.rows] == [1]
    model, _ = checkpoints.load_model(str(model_dir), "last")
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert not (model_dir / rundir.LOCK_FILE).exists()



@pytest.mark.parametrize("flag", ["--lr=inf", "--lr=nan", "--epsilon=nan",
                                  "--weight_decay=-inf", "--ac_step=inf", "--beta=nan",
                                  "--momentum=nan", "--select_step_size=inf"])
def test_non_finite_float_flags_are_refused(tmp_path, flag):
    extra = ["--method=trades"] if flag.startswith("--beta") else []
    result = run_train(tmp_path / "run", flag, *extra)
    assert_one_line_error(result, flag.split("=")[0])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- lock
# The lock itself (records, take-over, races): tests/test_rundir.py.
def test_a_lock_file_with_garbage_refuses_the_run_and_changes_nothing(run_copy):
    (run_copy / rundir.LOCK_FILE).write_text("[1, 2]")
    before = clitools.tree_hashes(run_copy)
    result = run_train(run_copy, "--epochs=3", "--resume")
    assert_one_line_error(result, str(run_copy / rundir.LOCK_FILE), "not a lock record")
    assert clitools.tree_hashes(run_copy) == before


@pytest.mark.slow   # a second TensorFlow process holds the lock for real
def test_a_second_training_on_a_live_run_is_refused_and_a_killed_one_restarts(tmp_path):
    model_dir = tmp_path / "live"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    first = subprocess.Popen(
        [sys.executable, "-m", "dac_tf.train", *TINY, "--epochs=50",
         "--max_steps_per_epoch=0", f"--model_dir={model_dir}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (model_dir / rundir.LOCK_FILE).exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        before = json.loads((model_dir / rundir.LOCK_FILE).read_text())
        second = run_train(model_dir, "--lr=0.01")
        assert_one_line_error(second, f"pid {first.pid}", "in use by another training")
        assert json.loads((model_dir / rundir.LOCK_FILE).read_text())["pid"] == before["pid"]
    finally:
        first.kill()
        first.wait()
    # The killed process's lock is stale: the same command (its flags) continues.
    restarted = clitools.run_main(train, TINY + ["--epochs=50", "--max_steps_per_epoch=0",
                                                 f"--model_dir={model_dir}", "--resume",
                                                 "--epochs=1"])
    assert restarted.code == 0, restarted.stderr
    assert not (model_dir / rundir.LOCK_FILE).exists()


@pytest.mark.slow   # ~15 s of MirroredStrategy tracing; the step: tests/test_distribute.py
def test_a_batch_that_does_not_split_over_the_replicas_trains(tmp_path):
    """`--cpu_replicas=2 --batch_size=63` (32 + 31 per batch) used to stop at the first
    batch with an AddN traceback from Keras' build; the step is exact for any split
    (tests/test_distribute.py compares it with one device)."""
    result = run_train(tmp_path / "run", "--cpu_replicas=2", "--batch_size=63",
                       "--max_steps_per_epoch=2", "--epochs=1", "--num_steps=1",
                       "--select_steps=1", "--eval_examples=16")
    assert result.code == 0, result.stderr
    (row,) = rundir.read_metrics(str(tmp_path / "run"))
    assert np.isfinite(row["train_loss"]) and 0 <= row["val_robust_accuracy"] <= 1


@pytest.mark.slow   # a full epoch on 2 replicas; tests/test_distribute.py covers the step
def test_two_replicas_with_a_last_batch_of_one_example_train_to_the_end(tmp_path):
    """The reported case: quickstart's digits with --val_size=221 leave 1217 training
    examples, so the last batch of 64 holds one example and replica 1 gets none. It used
    to stop with a non-finite loss in every epoch."""
    result = run_train(tmp_path / "run", "--cpu_replicas=2", "--val_size=221",
                       "--batch_size=64", "--max_steps_per_epoch=0", "--epochs=1",
                       "--eval_examples=64")
    assert result.code == 0, result.stderr
    (row,) = rundir.read_metrics(str(tmp_path / "run"))
    assert all(v is None or v == v for v in row.values())      # no NaN anywhere
    assert 0 < row["train_loss"] < 10 and 0 <= row["val_robust_accuracy"] <= 1


@pytest.mark.slow
def test_a_kill_between_the_first_checkpoint_and_its_index_resumes(tmp_path):
    """TensorFlow writes ckpt-1's files before the index that lists them: a kill in
    between leaves epoch 1 saved but unlisted. That is resumed (the index is rebuilt),
    not refused as damage (which a lost index of several checkpoints is)."""
    model_dir = tmp_path / "run"
    assert run_train(model_dir, "--epochs=1").code == 0
    os.remove(model_dir / "checkpoints" / "checkpoint")
    for name in os.listdir(model_dir / "best"):     # best/ is saved after last/
        os.remove(model_dir / "best" / name)
    result = run_train(model_dir, "--epochs=2", "--resume")
    assert result.code == 0, result.stderr
    assert "listed it again" in result.stdout and "Resuming" in result.stdout
    assert [r["epoch"] for r in rundir.read_metrics(str(model_dir))] == [1, 2]
