"""The paper's path on the real file formats: train -> evaluate -> export -> serve.

Each command reads what the previous one wrote, so renaming a key in one of them breaks
this test. The paper flagfiles run as written, shrunk only by flags (a small CNN, two
batches per epoch, two attack steps) on `tfds.testing.mock_data` CIFAR-10; the export
is then served by a process that never imports dac_tf.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import clitools
from dac_tf import checkpoints
from dac_tf import config as config_lib
from dac_tf import data
from dac_tf import evaluate
from dac_tf import export
from dac_tf import serving
from dac_tf import models
from dac_tf import rundir
from dac_tf import train
from dac_tf.model import DACModel

tfds = pytest.importorskip("tensorflow_datasets")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
PAPER_CONFIGS = sorted(f for f in os.listdir(CONFIGS)
                       if f.endswith(".cfg") and f != "quickstart.cfg")
MOCK_EXAMPLES = 48
# Shrinks a paper run without changing what it is: the method, its attack radius, the
# schedule, the selection protocol and the file formats stay the flagfile's.
SHRINK = ["--arch=small_cnn", "--batch_size=16", "--max_steps_per_epoch=2",
          "--num_steps=2", "--select_steps=2", "--eval_examples=16",
          "--eval_batch_size=16", "--noreport", "--verbose=0"]


def train_args(name, model_dir, *extra):
    return [f"--flagfile={os.path.join(CONFIGS, name)}", f"--model_dir={model_dir}",
            *SHRINK, *extra]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_at_prn18_flagfile_trains_resumes_evaluates_exports_and_serves(tmp_path,
                                                                       monkeypatch):
    run = tmp_path / "at_prn18"
    # 1. Train, stopped (Ctrl-C) right after epoch 1 is saved, then resumed by rerunning
    #    the same command.
    save = tf.train.CheckpointManager.save

    def stop_after_first_epoch(manager, checkpoint_number=None, **kwargs):
        path = save(manager, checkpoint_number=checkpoint_number, **kwargs)
        if checkpoint_number == 1 and manager.directory.endswith(checkpoints.BEST_DIR):
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", stop_after_first_epoch)
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        stopped = clitools.run_main(train, train_args("at_prn18.cfg", run, "--epochs=2"))
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    assert stopped.code == 130 and "run the same command again" in stopped.stderr
    assert checkpoints.load_run_config(str(run))["epochs"] == 2
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        resumed = clitools.run_main(train, train_args("at_prn18.cfg", run, "--epochs=2"))
    assert resumed.code == 0, resumed.stderr
    assert "from epoch 1" in resumed.stdout

    saved = checkpoints.load_run_config(str(run))
    assert saved["dataset"] == "cifar10" and saved["method"] == "at"
    assert saved["reference_bn_updates"] is True
    assert saved["normalization"] == "cifar10"        # AT's reference normalises inputs
    assert saved["select_epsilon"] == pytest.approx(8 / 255)
    assert saved["select_step_size"] == pytest.approx(2 / 255)
    rows = rundir.read_metrics(str(run))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # AT's reference logs the training accuracy of its clean train-mode forward.
    assert all(0 <= r["train_clean_accuracy"] <= 1 for r in rows)

    # 2. Evaluate: the dataset comes from the run's config.json, the radius from the
    #    paper's protocol.
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        result = clitools.run_main(evaluate, [
            f"--model={run}", "--checkpoint=last", "--attacks=clean,pgd2",
            "--num_examples=16", "--batch_size=8", "--noprogress"])
        splits = data.load("cifar10")
    assert result.code == 0, result.stderr
    record = read_json(run / "eval_last.json")
    assert record["dataset"] == "cifar10"
    assert record["epsilon"] == 8 / 255 and record["epsilon_source"] == "benchmark"
    assert "8/255" in (run / "eval_last.md").read_text()
    model, _ = checkpoints.load_model(str(run), "last")
    x, y = data.to_float32(splits.x_test[:16]), splits.y_test[:16]
    logits = model(x, training=False).numpy()
    assert record["clean_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))

    # 3. Export: reads the run and its evaluation.
    result = clitools.run_main(export, [f"--model_dir={run}", "--checkpoint=last",
                                        f"--export_dir={tmp_path / 'export'}"])
    assert result.code == 0, result.stderr
    version_dir = result.stdout.strip().splitlines()[-1]
    metadata = serving.read_metadata(version_dir)
    assert metadata["dataset"] == "cifar10" and metadata["evaluation"]["epsilon"] == 8 / 255

    # 4. Serve from a process that never imports dac_tf; call every signature.
    np.savez(tmp_path / "inputs.npz", x=x)
    script = f"""
import sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load({version_dir!r})
x = np.load({str(tmp_path / 'inputs.npz')!r})["x"]
u8 = np.round(x * 255).astype(np.uint8)
png = tf.stack([tf.io.encode_png(img) for img in u8])
outs = {{
    "default": loaded.signatures["serving_default"](images=tf.constant(x)),
    "uint8": loaded.signatures["serving_uint8"](images=tf.constant(u8)),
    "bytes": loaded.signatures["serving_bytes"](images=png),
}}
assert not [m for m in sys.modules if m.split(".")[0] == "dac_tf"], "dac_tf was imported"
np.savez({str(tmp_path / 'outputs.npz')!r},
         **{{f"{{k}}_{{o}}": v[o].numpy() for k, v in outs.items() for o in v}})
"""
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    quantised = model(np.round(x * 255) / 255, training=False).numpy()
    for kind, expected in (("default", logits), ("uint8", quantised), ("bytes", quantised)):
        np.testing.assert_allclose(outputs[f"{kind}_logits"], expected, atol=1e-4)
        np.testing.assert_array_equal(outputs[f"{kind}_classes"], expected.argmax(1))
        np.testing.assert_allclose(outputs[f"{kind}_probabilities"],
                                   tf.nn.softmax(expected).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trades_prn18.cfg", "mart_prn18.cfg"])
def test_trades_and_mart_flagfiles_train_and_are_evaluated_at_8_255(name, tmp_path):
    run = tmp_path / name[:-4]
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        result = clitools.run_main(train, train_args(name, run, "--epochs=1"))
        assert result.code == 0, result.stderr
        evaluated = clitools.run_main(evaluate, [
            f"--model={run}", "--checkpoint=last", "--attacks=clean,pgd1",
            "--num_examples=8", "--batch_size=8", "--noprogress"])
    assert evaluated.code == 0, evaluated.stderr
    saved = checkpoints.load_run_config(str(run))
    assert saved["epsilon"] == pytest.approx(0.031)          # trains at 0.031 ...
    record = read_json(run / "eval_last.json")
    assert record["epsilon"] == 8 / 255                     # ... is evaluated at 8/255
    assert record["training_epsilon"] == pytest.approx(0.031)
    assert saved["select_epsilon"] == pytest.approx(8 / 255)
    rows = rundir.read_metrics(str(run))
    assert len(rows) == 1 and 0 <= rows[0]["test_robust_accuracy"] <= 1
    assert rows[0]["train_clean_accuracy"] is None           # no clean pass for these


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_paper_flagfile_parses_and_builds(name):
    from absl import flags
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train", f"--flagfile={os.path.join(CONFIGS, name)}"])
    config = config_lib.from_flags(flag_values)
    assert config.reference_bn_updates and config.select_protocol == "at"
    assert config.select_epsilon == pytest.approx(8 / 255)
    base = models.build(config.arch, num_classes=10, input_shape=(32, 32, 3),
                        normalization=None if config.normalization == "none"
                        else config.normalization, **config.arch_kwargs)
    expected_params = {"preact_resnet18": 11_172_170, "wide_resnet34_10": 46_160_474}
    assert base.count_params() - sum(
        int(np.prod(v.shape)) for v in base.non_trainable_weights) == expected_params[
            config.arch]
    model = DACModel(base, method=config.method, use_dac=config.use_dac,
                     ac_step=config.ac_step, epsilon=config.epsilon,
                     step_size=config.step_size, num_steps=config.num_steps,
                     beta=config.beta, weight_decay=config.weight_decay,
                     reference_bn_updates=config.reference_bn_updates)
    assert model.use_dac == (not name.endswith("_baseline.cfg"))
    header = open(os.path.join(CONFIGS, name), encoding="utf-8").read()
    # The evaluate command in the header is the paper's protocol: last and best, every
    # column, 8/255.
    assert "--checkpoint=last,best" in header and "--epsilon=8" in header
    assert "--attacks=clean,pgd20,pgd100,cw,autoattack" in header
