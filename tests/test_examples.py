"""examples/: the complete user scripts run, and what they leave behind is right.

`examples/digits_keras.py` trains with DACModel + RobustValidation in a user's own `fit`,
keeps the best epoch with `ModelCheckpoint` and exports it. Checked independently: the
weights file, loaded into a fresh copy of the user's model, reproduces the robust and
clean validation accuracy that `fit` logged for the best epoch (the validation attack's
random start depends on the epoch, so the same epoch's attack is replayed), and the
`.keras` file and the SavedModel give that model's logits.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import dac_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "digits_keras.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("digits_keras", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_outputs(script, summary):
    _, (x_val, y_val) = script.load_data()
    best = script.my_model()
    best.load_weights(summary["best_weights"])
    replay = dac_tf.callbacks.RobustValidation(x_val, y_val, epsilon=script.EPSILON,
                                               num_steps=10)
    replay.set_model(best)
    values = replay.evaluate(epoch=summary["best_epoch"] - 1)
    assert values["robust_accuracy"] == pytest.approx(summary["best_val_robust_accuracy"])
    assert values["clean_accuracy"] == pytest.approx(summary["best_val_clean_accuracy"])
    logits = best.predict(x_val, verbose=0)
    reloaded = keras.saving.load_model(summary["keras"])
    np.testing.assert_allclose(reloaded.predict(x_val, verbose=0), logits, rtol=1e-5,
                               atol=1e-5)
    served = tf.saved_model.load(summary["export"]).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(x_val))["logits"].numpy(), logits,
                               rtol=1e-4, atol=1e-4)
    meta = dac_tf.serving.read_metadata(summary["export"])
    assert meta["epsilon_255"] == pytest.approx(32.0) and meta["dataset"] == "digits"


@pytest.mark.slow
def test_the_digits_script_keeps_and_exports_the_best_epoch(tmp_path):
    script = _load_script()
    summary = script.main(str(tmp_path), epochs=1, verbose=0)   # the slow test runs all 8
    assert summary["epochs"] == 1
    _check_outputs(script, summary)


@pytest.mark.slow   # the whole script in its own process: ~30 s on 2 CPU cores
def test_the_digits_script_runs_as_a_program_in_under_a_minute(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    began = time.perf_counter()
    run = subprocess.run([sys.executable, SCRIPT, f"--output_dir={tmp_path}"], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    seconds = time.perf_counter() - began
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["epochs"] == 8
    # Learns: the best epoch is well above chance (10%) under the attack.
    assert summary["best_val_robust_accuracy"] > 0.3, summary
    _check_outputs(_load_script(), summary)
    assert seconds < 60, f"{seconds:.0f} s"
