"""dac_tf.training.callback_chain: the run's callbacks and the order they run in.

The order is what makes a killed run resumable (`rundir.resume_problems`): validation
fills the logs, a non-finite epoch stops before anything is saved, then the metrics
row, `last`, and `best` are written in that order. The chain is built here on a tiny
split without training; the runs themselves: tests/test_train.py.
"""

import os
import types

import numpy as np
import pytest
import tensorflow as tf

from dac_tf import callbacks
from dac_tf import config as config_lib
from dac_tf import rundir
from dac_tf.training import callback_chain


def _chain(tmp_path, *, chief, val_size, verbose):
    config = config_lib.resolve(dict(dataset="digits", arch="small_cnn", epsilon=32,
                                     step_size=8, val_size=val_size, eval_examples=8,
                                     verbose=verbose, model_dir=str(tmp_path / "run")))
    rng = np.random.default_rng(0)
    images = rng.random((16, 8, 8, 1), np.float32)
    labels = np.arange(16) % 10
    splits = types.SimpleNamespace(x_val=images[:val_size], y_val=labels[:val_size],
                                   x_test=images, y_test=labels)
    epoch = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(epoch=epoch),
                                         str(tmp_path / "ckpt"), max_to_keep=1)
    rows = []
    chain = callback_chain.training_callbacks(
        config, splits, chief=chief, save_manager=manager, best_manager=manager,
        epoch_var=epoch, rows=rows, select_key=rundir.selection_key(val_size > 0), steps=3,
        log_names=["loss"])
    return config, chain, rows


def _kinds(chain):
    return [type(c).__name__ if type(c) is not callbacks.RobustValidation
            else f"RobustValidation:{c.prefix}" for c in chain]


def test_the_chief_validates_checks_then_writes_row_last_best_tensorboard(tmp_path):
    config, chain, rows = _chain(tmp_path, chief=True, val_size=8, verbose=1)
    assert _kinds(chain) == [
        "StopOnNonFiniteLoss", "TrainingProgress", "RobustValidation:val",
        "RobustValidation:test", "EpochInfo", "StopOnNonFiniteEpoch", "LambdaCallback",
        "EpochCheckpoint", "BestCheckpoint", "SplitTensorBoard", "LambdaCallback"]
    validation = chain[2]
    assert (validation.epsilon, validation.step_size, validation.num_steps,
            validation.start, len(validation.x)) == pytest.approx(
        (config.select_epsilon, config.select_step_size, config.select_steps,
         config.select_start, config.eval_examples))
    # The LambdaCallback before the checkpoints writes the metrics row.
    os.makedirs(config.model_dir)
    logs = {"loss": 1.0, "val_robust_accuracy": 0.5, "lr": 0.1}
    chain[6].on_epoch_end(0, logs)
    assert [r["epoch"] for r in rows] == [1]
    assert rundir.read_metrics(config.model_dir)[0]["val_robust_accuracy"] == 0.5


def test_other_tasks_write_no_row_and_no_tensorboard(tmp_path):
    _, chain, _ = _chain(tmp_path, chief=False, val_size=0, verbose=0)
    assert _kinds(chain) == [
        "StopOnNonFiniteLoss", "RobustValidation:test", "EpochInfo", "StopOnNonFiniteEpoch",
        "EpochCheckpoint", "BestCheckpoint", "LambdaCallback"]
    assert not os.path.exists(tmp_path / "run")


def test_the_summary_line_names_the_selection_split_and_the_best_epoch():
    logs = dict(lr=0.1, loss=1.5, adv_accuracy=0.25, adv_certainty=0.125, ac_loss=0.0375,
                test_clean_accuracy=0.75, test_robust_accuracy=0.5, epoch_seconds=2.0)
    line = callback_chain.summary_line(3, logs, "test_robust_accuracy", best_epoch=2)
    assert line.split() == ["epoch", "3", "lr", "0.1", "loss", "1.5000", "train", "adv",
                            "0.2500", "AC", "0.1250", "ac_loss", "0.0375", "test", "clean",
                            "0.7500", "robust", "0.5000", "best", "epoch", "2", "2.0s"]
    del logs["ac_loss"]
    assert "ac_loss" not in callback_chain.summary_line(3, logs, "test_robust_accuracy", 2)
