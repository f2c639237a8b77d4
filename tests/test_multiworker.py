"""Multi-worker training for real: two worker processes on localhost (CPU).

The reference is one process with MirroredStrategy over two logical CPUs on the same
global batch: both have two replicas with per-replica BatchNorm statistics, so they
compute the same function and must end with the same weights.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

from dac_tf import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--dataset=digits", "--arch=small_cnn", "--method=at", "--norandom_start",
        "--epochs=2", "--batch_size=32", "--max_steps_per_epoch=3", "--eval_examples=64",
        "--noreport", "--verbose=0", "--epsilon=32", "--step_size=8", "--num_steps=2",
        "--lr_schedule=constant", "--lr=0.05"]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def env(**extra):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def test_two_workers_equal_one_process_with_two_replicas(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "dac_tf.train", *ARGS, "--strategy=multi_worker",
             f"--model_dir={tmp_path / 'multi'}"], cwd=REPO, env=env(TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    single = subprocess.run(
        [sys.executable, "-m", "dac_tf.train", *ARGS, "--strategy=mirrored", "--cpu_replicas=2",
         f"--model_dir={tmp_path / 'single'}"], cwd=REPO, env=env(), capture_output=True,
        text=True, timeout=300)
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]

    multi_model, _ = checkpoints.load_model(str(tmp_path / "multi"), "last")
    single_model, _ = checkpoints.load_model(str(tmp_path / "single"), "last")
    initial = checkpoints.build_model(checkpoints.load_run_config(str(tmp_path / "single")))
    moved = max(np.abs(a - b).max() for a, b in zip(
        single_model.get_weights(), initial.get_weights()))
    assert moved > 1e-3
    for a, b in zip(multi_model.trainable_weights, single_model.trainable_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # Only the chief wrote: one metrics file, no scratch directory left behind, and the
    # metrics equal the single process's.
    assert not [p for p in os.listdir(tmp_path / "multi") if p.startswith(".worker")]
    with open(tmp_path / "multi" / "metrics.csv") as f, \
            open(tmp_path / "single" / "metrics.csv") as g:
        multi_rows, single_rows = list(csv.DictReader(f)), list(csv.DictReader(g))
    for key in ("train_loss", "train_adv_accuracy", "test_robust_accuracy"):
        np.testing.assert_allclose([float(r[key]) for r in multi_rows],
                                   [float(r[key]) for r in single_rows], rtol=1e-4)


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dac_tf.train", *ARGS,
                             "--strategy=multi_worker", f"--model_dir={tmp_path}/run"],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TF_CONFIG" in result.stderr and "Traceback" not in result.stderr
