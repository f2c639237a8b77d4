"""The multi-worker cluster a process belongs to, read from `TF_CONFIG`.

`MultiWorkerMirroredStrategy` is configured by the `TF_CONFIG` environment variable, the
same on every launcher (Kubeflow's TFJob, Vertex AI custom jobs, a shell loop over SSH
hosts):

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]},
     "task": {"type": "worker", "index": 0}}

TensorFlow reads it lazily and fails deep inside the strategy with a traceback; this
module checks it first and says in one line what is wrong.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np

from dac_tf import errors

# The task types a synchronous data-parallel job has (no parameter servers, evaluator
# tasks are not used by dac_tf).
TASK_TYPES = ("chief", "worker")
# The exit status for "the cluster lost a task; restart every task": Kubeflow's training
# operator (restartPolicy: ExitCode) restarts a pod that exits with 138 (128 + SIGUSR1,
# its "user-defined retryable" code) and treats 1-127 as permanent failures.
RETRY_EXIT_CODE = 138


class ClusterError(errors.UserError):
    """A TF_CONFIG that cannot describe this task (the message says what is wrong)."""


class PeerLostError(ClusterError):
    """Another task of the cluster died, hung or never started: restart every task."""

    exit_code = RETRY_EXIT_CODE


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster.

    Attributes:
      type: "chief" or "worker".
      index: the task's index among the tasks of its type.
      cluster: job name -> list of "host:port" addresses.
    """

    type: str
    index: int
    cluster: dict

    @property
    def is_chief(self):
        """The task that writes the run directory: `chief`, else `worker` 0 (TF's rule)."""
        if self.type == "chief":
            return True
        return self.type == "worker" and self.index == 0 and "chief" not in self.cluster

    @property
    def num_workers(self):
        """Tasks that train (chief and workers): each holds replicas of the model."""
        return sum(len(self.cluster.get(t, ())) for t in TASK_TYPES)

    @property
    def address(self):
        return self.cluster[self.type][self.index]

    @property
    def name(self):
        return f"{self.type} {self.index}"

    def tasks(self):
        """(type, index, address) of every training task, chief first (TF's order)."""
        return [(t, i, a) for t in TASK_TYPES for i, a in enumerate(self.cluster.get(t, ()))]

    @property
    def global_index(self):
        """This task's position in `tasks()`."""
        return [(t, i) for t, i, _ in self.tasks()].index((self.type, self.index))

    def peers(self):
        return [(t, i, a) for t, i, a in self.tasks() if (t, i) != (self.type, self.index)]


def parse_tf_config(text):
    """Parses and checks a TF_CONFIG value.

    Args:
      text: the JSON string.

    Returns:
      Task.

    Raises:
      ClusterError: not JSON, no cluster or task, an unknown task type, an address that is
        not host:port, or a task index outside its job.
    """
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({e}); expected "
                           '{"cluster": {"worker": ["host:port", ...]}, "task": '
                           '{"type": "worker", "index": 0}}.') from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) or not \
            isinstance(spec.get("task"), dict):
        raise ClusterError('TF_CONFIG needs a "cluster" object (job name -> list of '
                           'host:port) and a "task" object (type, index).')
    cluster = spec["cluster"]
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise ClusterError(f"TF_CONFIG cluster has job(s) {', '.join(unknown)}; dac_tf runs "
                           f"synchronous training with {' and '.join(TASK_TYPES)} jobs only.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise ClusterError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of "
                               f'"host:port" strings, got {addresses!r}.')
    if len(cluster.get("chief", ())) > 1:
        raise ClusterError("TF_CONFIG has more than one chief; a cluster has at most one.")
    task = spec["task"]
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise ClusterError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                           f"({', '.join(cluster) or 'none'}).")
    if isinstance(index, bool) or not isinstance(index, int) or not \
            0 <= index < len(cluster[task_type]):
        raise ClusterError(f"TF_CONFIG task index {index!r} is out of range: job "
                           f"{task_type!r} has {len(cluster[task_type])} task(s), indices "
                           f"0 to {len(cluster[task_type]) - 1}.")
    return Task(type=task_type, index=index, cluster=cluster)


def current_task(environ=None):
    """The Task of this process from the TF_CONFIG environment variable.

    Raises:
      ClusterError: TF_CONFIG is unset or invalid.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        raise ClusterError("--strategy=multi_worker needs the TF_CONFIG environment "
                           "variable (the cluster and this task's type and index); see "
                           "docs/CLUSTER.md.")
    return parse_tf_config(text)


def lost_peer(task, message):
    """The peer a TensorFlow error message is about ("worker 1 (host:port)"), or None."""
    for task_type, index, address in task.peers():
        if address in message or re.search(
                rf"/job:{task_type}/replica:\d+/task:{index}\b", message):
            return f"{task_type} {index} ({address})"
    return None


def peer_lost_error(task, error, where):
    """A PeerLostError for a collective that failed because another task is gone.

    Args:
      task: this Task.
      error: the TensorFlow error (UnavailableError, DeadlineExceededError, ...).
      where: what was running ("epoch 3, batch 17").
    """
    text = " ".join(str(error).split())
    who = lost_peer(task, text) or "another task of the cluster"
    return PeerLostError(
        f"{task.name} lost contact with {who} during {where} "
        f"({type(error).__name__}); restart every task with the same command: they "
        f"resume from the last checkpoint (exit code {RETRY_EXIT_CODE} asks the cluster "
        "manager to retry).")


# The watchdog of `watch_join`, a separate process: the strategy's constructor blocks in
# C++ holding Python's GIL, so no thread or signal handler of the waiting process runs.
_WATCHDOG = r"""
import os, select, signal, sys, time
parent, timeout, name, peers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
start = time.monotonic()
warned = False
while True:
    left = timeout - (time.monotonic() - start)
    if left <= 0:
        break
    wait = min(left, max(10 - (time.monotonic() - start), 0)) if not warned else left
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    if ready:
        sys.exit(0)   # the parent joined (wrote a byte) or died (end of file)
    if not warned and time.monotonic() - start >= 10:
        warned = True
        print(f"{name}: waiting for the other tasks to start ({peers}); giving up after "
              f"--cluster_timeout={timeout:g} s.", file=sys.stderr, flush=True)
print(f"error: {name} waited {timeout:g} s for {peers} to join the cluster and gave up; "
      "start every task of TF_CONFIG (the same command, each with its own task index), "
      "or raise --cluster_timeout.", file=sys.stderr, flush=True)
os.kill(parent, signal.SIGUSR1)
"""


def watch_join(task, timeout_s):
    """Watches this task wait for its peers to join the cluster.

    Creating a MultiWorkerMirroredStrategy blocks until every task of TF_CONFIG has
    connected, silently and for ever, and the blocked call holds Python's GIL. A small
    watchdog process prints one line after 10 s saying which tasks are awaited, and
    after `timeout_s` prints one `error:` line and ends this process with SIGUSR1, whose
    exit status 128 + 10 = RETRY_EXIT_CODE cluster managers read as "retry". Nothing has
    been written by then (the strategy is created before the run directory).

    Args:
      task: this Task.
      timeout_s: seconds to wait for the peers.

    Returns:
      A function to call once the strategy exists (the peers joined).
    """
    peers = ", ".join(f"{t} {i} at {a}" for t, i, a in task.peers())
    watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(float(timeout_s)),
         task.name, peers], stdin=subprocess.PIPE)

    def joined():
        try:
            watchdog.stdin.write(b"\n")
            watchdog.stdin.close()
        except OSError:
            pass
        watchdog.wait()

    return joined


def _hash(value):
    # 24 bits: exact in float32, which the cross-worker sum below is computed in.
    return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()) & 0xFFFFFF


def check_same_flags(strategy, task, values):
    """Refuses to train when the tasks were started with different flags.

    Every task contributes the hashes of its resolved `values` to one all-reduce; any
    difference is found by every task, so all of them stop with the same message.

    Args:
      strategy: the MultiWorkerMirroredStrategy (every task calls this).
      task: this Task.
      values: flag name -> resolved value, the same keys on every task.

    Raises:
      ClusterError: naming the first flag that differs and the tasks it differs on.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    names = sorted(values)
    hashes = np.array([_hash(values[n]) for n in names], np.float32)
    workers = task.num_workers
    local = max(strategy.num_replicas_in_sync // workers, 1)

    def contribute():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        row = tf.one_hot(replica // local, workers)[:, None] * tf.constant(hashes)[None, :]
        return tf.where(tf.equal(replica % local, 0), row, tf.zeros_like(row))

    table = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute),
                            axis=None).numpy()
    tasks = task.tasks()
    for column, name in enumerate(names):
        distinct = set(table[:, column].tolist())
        if len(distinct) > 1:
            mine = table[task.global_index, column]
            others = [f"{t} {i}" for row, (t, i, _) in enumerate(tasks)
                      if table[row, column] != mine]
            raise ClusterError(
                f"--{name} differs between the tasks ({task.name} has "
                f"{values[name]!r}; {', '.join(others)} another value): every task must "
                "run the same command, only TF_CONFIG's task index differs.")
