"""Multi-worker training for real: two worker processes on localhost (CPU).

The reference is one process with MirroredStrategy over two logical CPUs on the same
global batch: both have two replicas with per-replica BatchNorm statistics, so they
compute the same function and must end with the same weights.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dac_tf import checkpoints

# Every test here starts two or three TensorFlow processes.
pytestmark = pytest.mark.slow

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
    # Training really moved the weights: epoch 2's checkpoint differs from epoch 1's.
    config = checkpoints.load_run_config(str(tmp_path / "single"))
    after_epoch_1 = checkpoints.restore_weights(
        checkpoints.build_model(config),
        str(tmp_path / "single" / checkpoints.LAST_DIR / "ckpt-1"))
    moved = max(np.abs(a - b).max() for a, b in zip(
        single_model.get_weights(), after_epoch_1.get_weights()))
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


def _start_workers(tmp_path, ports, extra_by_index=None, args=ARGS, indices=(0, 1)):
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = {}
    for index in indices:
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                              "index": index}})
        extra = (extra_by_index or {}).get(index, [])
        workers[index] = subprocess.Popen(
            [sys.executable, "-m", "dac_tf.train", *args, "--strategy=multi_worker",
             f"--model_dir={tmp_path / 'multi'}", *extra], cwd=REPO,
            env=env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    return workers


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_peer_that_never_starts_is_waited_for_then_refused(tmp_path):
    port, missing = free_ports(2)
    began = time.time()
    worker = _start_workers(tmp_path, [port, missing], indices=(0,),
                            extra_by_index={0: ["--cluster_timeout=12"]})[0]
    out, err = worker.communicate(timeout=120)
    # Ended by SIGUSR1 from the watchdog: exit status 128 + 10 = 138 in a shell or pod.
    assert worker.returncode == -signal.SIGUSR1, err[-2000:]
    assert time.time() - began < 90
    assert f"waiting for the other tasks to start (worker 1 at localhost:{missing})" in err
    (line,) = _error_lines(err)
    assert f"worker 0 waited 12 s for worker 1 at localhost:{missing}" in line
    assert "Traceback" not in err
    assert not (tmp_path / "multi").exists() or not [
        p for p in os.listdir(tmp_path / "multi") if p.startswith(".worker")]


def test_a_flag_that_differs_between_workers_is_refused_by_both(tmp_path):
    workers = _start_workers(tmp_path, free_ports(2), {1: ["--lr=0.01"]})
    for index, worker in workers.items():
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 2, err[-2000:]
        (line,) = _error_lines(err)
        assert "--lr differs between the tasks" in line, line
    assert not os.path.exists(tmp_path / "multi" / checkpoints.LAST_DIR / "checkpoint")


def test_a_killed_worker_stops_the_other_with_a_retry_code_and_both_resume(tmp_path):
    ports = free_ports(2)
    long_run = [a for a in ARGS if not a.startswith("--epochs")] + [
        "--epochs=50", "--cluster_timeout=60"]
    workers = _start_workers(tmp_path, ports, args=long_run)
    first = tmp_path / "multi" / checkpoints.LAST_DIR / "ckpt-1.index"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline:
        assert all(w.poll() is None for w in workers.values()), workers[0].stderr.read()
        time.sleep(0.1)
    workers[1].send_signal(signal.SIGKILL)
    out, err = workers[0].communicate(timeout=180)
    workers[1].wait()
    assert workers[0].returncode == 138, err[-3000:]
    (line,) = _error_lines(err)
    assert f"lost contact with worker 1 (localhost:{ports[1]})" in line, line
    assert "restart every task with the same command" in line
    # Restarting every task continues the run (here for one more epoch).
    again = _start_workers(tmp_path, free_ports(2), args=long_run,
                           extra_by_index={0: ["--resume", "--epochs=2"],
                                           1: ["--resume", "--epochs=2"]})
    for worker in again.values():
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    assert "Resuming" in out
    rows = list(csv.DictReader(open(tmp_path / "multi" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert not [p for p in os.listdir(tmp_path / "multi") if p.startswith(".worker")]
