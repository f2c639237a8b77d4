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

from dac_tf import errors

# The task types a synchronous data-parallel job has (no parameter servers, evaluator
# tasks are not used by dac_tf).
TASK_TYPES = ("chief", "worker")


class ClusterError(errors.UserError):
    """A TF_CONFIG that cannot describe this task (the message says what is wrong)."""


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
