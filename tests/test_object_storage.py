"""A run on object storage: train, resume, evaluate, export with every path on `ram://`.

TensorFlow's in-memory filesystem stands in for `gs://`/`s3://`: it is reached only
through `tf.io.gfile`, so any `open`, `os.rename` or `os.path` call on a run path fails
or writes elsewhere. The programs run from an empty working directory, which must stay
empty: nothing is written to the local disk.
"""

import json
import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

import clitools
from dac_tf import checkpoints
from dac_tf import evaluate
from dac_tf import export
from dac_tf import serving
from dac_tf import rundir
from dac_tf import train

TINY = ["--dataset=digits", "--arch=small_cnn", "--batch_size=128", "--lr=0.05",
        "--lr_schedule=constant", "--epsilon=32", "--step_size=8", "--num_steps=2",
        "--select_steps=2", "--val_size=100", "--eval_examples=64",
        "--max_steps_per_epoch=3", "--verbose=0"]


@pytest.mark.slow
def test_train_resume_evaluate_export_on_an_object_store(tmp_path, monkeypatch):
    root = f"ram://dac_tf_test_{uuid.uuid4().hex[:8]}"
    run, exports = f"{root}/runs/digits", f"{root}/export/digits"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    first = clitools.run_main(train, TINY + [f"--model_dir={run}", "--epochs=1",
                                             "--noreport"])
    assert first.code == 0, first.stderr
    resumed = clitools.run_main(train, TINY + [f"--model_dir={run}", "--epochs=2",
                                               "--resume", "--noreport"])
    assert resumed.code == 0, resumed.stderr
    assert "Resuming" in resumed.stdout
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
    state = rundir.inspect(run)
    assert state.finished_epoch == 2 and state.best_epochs
    assert not tf.io.gfile.exists(f"{run}/{rundir.LOCK_FILE}")
    for name in ("flags.cfg", "summary.json", "tensorboard"):
        assert tf.io.gfile.exists(f"{run}/{name}"), name

    result = clitools.run_main(evaluate, [f"--model={run}", "--checkpoint=last",
                                          "--attacks=clean,pgd2", "--num_examples=32",
                                          "--noprogress"])
    assert result.code == 0, result.stderr
    record = json.loads(tf.io.gfile.GFile(f"{run}/eval_last.json").read())
    assert record["dataset"] == "digits" and record["num_examples"] == 32

    result = clitools.run_main(export, [f"--model_dir={run}", "--checkpoint=last",
                                        f"--export_dir={exports}"])
    assert result.code == 0, result.stderr
    version = result.stdout.strip().splitlines()[-1]
    assert version == f"{exports}/1"
    assert serving.read_metadata(exports)["evaluation"]["num_examples"] == 32
    loaded = tf.saved_model.load(version)
    model, _ = checkpoints.load_model(run, "last")
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    np.testing.assert_allclose(loaded.signatures["serving_default"](
        images=tf.constant(x))["logits"].numpy(), model(x).numpy(), atol=1e-5)
    assert not [n for n in tf.io.gfile.listdir(exports) if n.startswith(".")]

    assert os.listdir(workdir) == []          # nothing landed on the local disk
