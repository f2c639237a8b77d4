"""The launch examples of docs/CLUSTER.md resolve to the intended tasks.

Each example is read from the document itself (so an edited example is what is tested).
Its TF_CONFIG is built for every task the way its launcher builds it (Kubeflow's
training operator, the SSH loop run by bash with a stand-in `ssh`, Vertex AI), and
`dac_tf.cluster` must resolve each to the task written out by hand below (type, index,
address: what the document describes, not derived from the example), with exactly one
chief; every task's command must parse to the same valid multi-worker configuration.
"""

import json
import os
import re
import shlex
import subprocess

import pytest
from absl import flags

from dac_tf import cluster
from dac_tf import config as config_lib

yaml = pytest.importorskip("yaml")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = open(os.path.join(REPO, "docs", "CLUSTER.md"), encoding="utf-8").read()


# What each documented example describes, written out from the text of docs/CLUSTER.md
# ("one chief and three workers", "here 4 workers, worker 0 is the chief", ...).
TFJOB_TASKS = [("chief", 0, "dac-at-prn18-chief-0.default.svc:2222"),
               ("worker", 0, "dac-at-prn18-worker-0.default.svc:2222"),
               ("worker", 1, "dac-at-prn18-worker-1.default.svc:2222"),
               ("worker", 2, "dac-at-prn18-worker-2.default.svc:2222")]
SSH_TASKS = [("worker", 0, "node0:2222"), ("worker", 1, "node1:2222"),
             ("worker", 2, "node2:2222"), ("worker", 3, "node3:2222")]
# Vertex AI names its hosts itself; the test stands in "cmle-training-<role>-1234-<i>".
VERTEX_TASKS = [("chief", 0, "cmle-training-chief-1234-0:2222"),
                ("worker", 0, "cmle-training-worker-1234-0:2222"),
                ("worker", 1, "cmle-training-worker-1234-1:2222"),
                ("worker", 2, "cmle-training-worker-1234-2:2222")]
TWO_WORKERS_TASK = ("worker", 0, "host0:12345")


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


def resolved_flags(args):
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    cwd = os.getcwd()
    os.chdir(REPO)   # the examples' flagfile paths are relative to the repository
    try:
        flag_values(["train", *args])
    finally:
        os.chdir(cwd)
    return config_lib.from_flags(flag_values)


def check_cluster(tf_configs, expected_tasks):
    """Every task resolves to its own (type, index, address); exactly one chief, the
    chief task if there is one, else worker 0; all count the same workers."""
    tasks = [cluster.parse_tf_config(json.dumps(c)) for c in tf_configs]
    assert [(t.type, t.index, t.address) for t in tasks] == expected_tasks
    chiefs = [(t.type, t.index) for t in tasks if t.is_chief]
    assert chiefs == [("chief", 0) if ("chief", 0) in [e[:2] for e in expected_tasks]
                      else ("worker", 0)]
    assert {t.num_workers for t in tasks} == {len(expected_tasks)}
    return tasks


def test_kubeflow_tfjob():
    (manifest,) = [yaml.safe_load(b) for b in code_blocks("yaml") if "TFJob" in b]
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    specs = manifest["spec"]["tfReplicaSpecs"]
    commands, addresses = [], {}
    for role, spec in specs.items():
        (container,) = spec["template"]["spec"]["containers"]
        port = container["ports"][0]["containerPort"]
        assert spec["restartPolicy"] == "ExitCode"   # 138 (a lost peer) is retried
        addresses[role.lower()] = [f"{name}-{role.lower()}-{i}.{namespace}.svc:{port}"
                                   for i in range(spec["replicas"])]
        commands += [container["command"]] * spec["replicas"]
    # The operator gives every replica of every role its own TF_CONFIG.
    roles = [(role, i) for role in addresses for i in range(len(addresses[role]))]
    check_cluster([{"cluster": addresses, "task": {"type": t, "index": i},
                    "environment": "cloud"} for t, i in roles], TFJOB_TASKS)
    assert all(c == commands[0] for c in commands)
    assert commands[0][:3] == ["python", "-m", "dac_tf.train"]
    config = resolved_flags(commands[0][3:])
    assert config.strategy == "multi_worker" and config.model_dir.startswith("gs://")


def test_plain_ssh_hosts(tmp_path):
    (script,) = [b for b in code_blocks("bash") if "ssh " in b]
    # A stand-in ssh prints the host and the remote command instead of connecting.
    stub = 'ssh() { printf "%s\\t%s\\n" "$1" "$2"; }\n'
    out = subprocess.run(["bash", "-c", stub + script], capture_output=True, text=True,
                         check=True).stdout
    lines = [line.split("\t", 1) for line in out.strip().splitlines()]
    tf_configs, commands = [], []
    for host, remote in lines:
        words = shlex.split(remote)
        tf_config = next(w for w in words if w.startswith("TF_CONFIG="))
        tf_configs.append(json.loads(tf_config[len("TF_CONFIG="):]))
        start = words.index("dac_tf.train") + 1
        commands.append([w for w in words[start:] if w not in (">", "2>&1", "&")
                         and not w.startswith("train_")])
    tasks = check_cluster(tf_configs, SSH_TASKS)
    # each command goes to the host its own TF_CONFIG names as this task's address
    assert [host for host, _ in lines] == [t.address.split(":")[0] for t in tasks]
    assert all(c == commands[0] for c in commands)
    assert resolved_flags(commands[0]).strategy == "multi_worker"


def test_vertex_ai_custom_job():
    (spec,) = [yaml.safe_load(b) for b in code_blocks("yaml") if "workerPoolSpecs" in b]
    pools = spec["workerPoolSpecs"]
    # Vertex AI: pool 0 is the chief, pool 1 the workers.
    roles = ("chief", "worker")
    addresses = {role: [f"cmle-training-{role}-1234-{i}:2222"
                        for i in range(pool["replicaCount"])]
                 for role, pool in zip(roles, pools)}
    tasks = [(role, i) for role in roles for i in range(len(addresses[role]))]
    check_cluster([{"cluster": addresses, "task": {"type": t, "index": i, "trial": ""},
                    "environment": "cloud", "job": {"workerPoolSpecs": pools}}
                   for t, i in tasks], VERTEX_TASKS)
    args = [pool["containerSpec"]["args"] for pool in pools]
    assert all(a == args[0] for a in args)
    assert pools[0]["containerSpec"]["command"] == ["python", "-m", "dac_tf.train"]
    assert resolved_flags(args[0]).strategy == "multi_worker"


def test_two_workers_example(tmp_path):
    (script,) = [b for b in code_blocks("bash") if "export TF_CONFIG=" in b]
    # bash itself reads the export (quotes and line breaks as a user's shell would).
    out = subprocess.run(["bash", "-c", script.split("python -m")[0] + 'printf %s "$TF_CONFIG"'],
                         capture_output=True, text=True, check=True).stdout
    task = cluster.parse_tf_config(out)
    assert (task.type, task.index, task.address) == TWO_WORKERS_TASK
    assert task.is_chief and task.num_workers == 2
    command = shlex.split(script.split("python -m dac_tf.train", 1)[1].replace("\\\n", " "))
    config = resolved_flags(command)
    assert config.strategy == "multi_worker" and config.model_dir.startswith("gs://")
