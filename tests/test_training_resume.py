"""dac_tf.training.resume: which runs may be continued, and restoring one.

The rules are checked on run states and configs built here (no training): what
`--resume` may change, that no planned batch changes its learning rate, and that a
first checkpoint a kill left unlisted is restored and listed again through the TF2
checkpoint API. The scenarios (a real run killed, damaged, resumed) are in
tests/test_run_integrity.py and tests/test_train.py.
"""

import os
import types

import pytest
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import rundir
from dac_tf.training import resume


def _state(**recorded):
    return rundir.RunState(exists=True, config=recorded, last_epochs=(1,),
                           checkpoint_files=(1,), best_epochs=(1,), rows=())


@pytest.mark.parametrize("schedule, flags, refused", [
    ("cosine", dict(epochs=3), "--epochs=3"),
    ("piecewise_at", dict(epochs=1), "--epochs=1"),
    ("piecewise_trades", dict(epochs=120), None),
    ("constant", dict(epochs=3, max_steps_per_epoch=2), None),
    ("piecewise_trades", dict(max_steps_per_epoch=2), "--max_steps_per_epoch=2"),
    ("cosine", dict(max_steps_per_epoch=50), None),      # >= the 10 batches: no change
    ("piecewise_at", dict(max_steps_per_epoch=0), None),
])
def test_the_resume_rule_keeps_every_planned_batch_rate(schedule, flags, refused):
    """A run planned as 2 epochs of 10 batches (1280 examples in batches of 128)."""
    values = dict(method="at", lr_schedule=schedule, epochs=2, batch_size=128,
                  max_steps_per_epoch=0, model_dir="run")
    values.update(flags)
    config = config_lib.resolve(values)
    state = _state(epochs=2, max_steps_per_epoch=0, lr_schedule=schedule)
    if refused is None:
        resume.check_schedule_kept(config, state, train_size=1280)
    else:
        with pytest.raises(config_lib.ConfigError, match=refused):
            resume.check_schedule_kept(config, state, train_size=1280)


def test_resume_may_change_exactly_the_resumable_flags():
    recorded = config_lib.resolve(dict(method="at", epochs=2, model_dir="run"))
    state = rundir.RunState(exists=True, config=recorded.to_json_dict(), last_epochs=(1,),
                            checkpoint_files=(1,), best_epochs=(1,),
                            rows=({"epoch": 1},))
    same = config_lib.resolve(dict(method="at", epochs=2, model_dir="elsewhere"))
    assert resume.check_resumable(same, state)          # model_dir is not the run's identity
    longer = dict(method="at", epochs=3, model_dir="run")
    with pytest.raises(config_lib.ConfigError, match="pass --resume"):
        resume.check_resumable(config_lib.resolve(longer), state)
    assert resume.check_resumable(config_lib.resolve(dict(longer, resume=True)), state)
    with pytest.raises(config_lib.ConfigError, match="--lr: 0.1 -> 0.05"):
        resume.check_resumable(config_lib.resolve(dict(longer, resume=True, lr=0.05)),
                               state)


def test_an_unlisted_first_checkpoint_is_restored_and_listed_again(tmp_path):
    """A kill between ckpt-1's files and the index that lists them: the weights come
    back from ckpt-1 and the index lists it again, so later saves keep it."""
    model_dir = str(tmp_path / "run")
    last_dir = os.path.join(model_dir, checkpoints.LAST_DIR)
    weights = tf.Variable([1.0, 2.0])
    epoch = tf.Variable(1, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(w=weights, epoch=epoch), last_dir,
                               max_to_keep=2).save(checkpoint_number=1)
    tf.train.CheckpointManager(tf.train.Checkpoint(w=weights, epoch=epoch),
                               os.path.join(model_dir, checkpoints.BEST_DIR),
                               max_to_keep=1).save(checkpoint_number=1)
    rundir.write_metrics(model_dir, [rundir.row_from_logs(1, {"val_robust_accuracy": 0.5})])
    os.remove(os.path.join(last_dir, "checkpoint"))
    state = rundir.inspect(model_dir)
    assert state.killed_in_first_save

    restored_w, restored_epoch = tf.Variable([0.0, 0.0]), tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(w=restored_w, epoch=restored_epoch)
    manager = tf.train.CheckpointManager(checkpoint, last_dir, max_to_keep=2)
    best = tf.train.CheckpointManager(tf.train.Checkpoint(w=restored_w, epoch=restored_epoch),
                                      os.path.join(model_dir, checkpoints.BEST_DIR), 1)
    rows = resume.restore_run(
        types.SimpleNamespace(model_dir=model_dir), state, checkpoint=checkpoint,
        last_manager=manager, save_manager=manager, best_manager=best,
        epoch_var=restored_epoch, select_key="val_robust_accuracy")
    assert restored_w.numpy().tolist() == [1.0, 2.0] and int(restored_epoch) == 1
    assert [r["epoch"] for r in rows] == [1]
    assert rundir.inspect(model_dir).last_epochs == (1,)
    listed = tf.train.get_checkpoint_state(last_dir).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in listed] == ["ckpt-1"]
    manager.save(checkpoint_number=2)                     # the next epoch keeps it
    assert rundir.inspect(model_dir).last_epochs == (1, 2)
