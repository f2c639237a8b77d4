"""The distribution strategy a training run is built under (`--strategy`).

    strategy = dac_tf.training.strategies.make_checked_strategy(config)

`make_strategy` picks the strategy; `make_checked_strategy` adds the checks that need
one (every multi-worker task runs the same flags, the global batch covers every
replica). Both run before anything is written, so a task that gives up waiting for its
peers leaves nothing behind.
"""

import tensorflow as tf

from dac_tf import cluster
from dac_tf import config as config_lib


def split_cpu(count):
    """Splits the CPU into `count` logical devices (MirroredStrategy replicas without a
    GPU); must run before TensorFlow initialises its devices.

    Raises:
      ConfigError: TensorFlow was initialised with fewer CPU devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:   # devices already initialised: use what exists
        pass
    if len(tf.config.list_logical_devices("CPU")) < count:
        raise config_lib.ConfigError(
            f"--cpu_replicas={count}: TensorFlow was initialised before the CPU could be "
            "split; start a fresh process.")


def make_strategy(name, cpu_replicas=1, cluster_timeout=600.0):
    """The distribution strategy of `--strategy`.

    Args:
      name: "mirrored": `MirroredStrategy` over the visible GPUs, or over `cpu_replicas`
        logical CPUs when there is no GPU; one device when that leaves one.
        "one_device": the first GPU, else the CPU. "multi_worker":
        `MultiWorkerMirroredStrategy` configured by the TF_CONFIG variable.
      cpu_replicas: CPU replicas of "mirrored" without a GPU.
      cluster_timeout: "multi_worker": seconds to wait for the other tasks to start; a
        collective (a training step's all-reduce) that takes longer fails.

    Returns:
      A `tf.distribute.Strategy`.

    Raises:
      ClusterError: a missing or bad TF_CONFIG (one line).
    """
    if name == "multi_worker":
        task = cluster.current_task()   # one-line errors for a missing or bad TF_CONFIG
        joined = cluster.watch_join(task, cluster_timeout)
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=cluster_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        joined()
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" and not gpus and cpu_replicas > 1:
        split_cpu(cpu_replicas)
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus[:cpu_replicas]])
    if name == "mirrored" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def make_checked_strategy(config):
    """The strategy of `config` (a `TrainConfig`), with the checks that need it.

    Raises:
      ClusterError: the multi-worker tasks run different flags.
      ConfigError: a global batch smaller than the replicas.
    """
    strategy = make_strategy(config.strategy, config.cpu_replicas, config.cluster_timeout)
    if config.strategy == "multi_worker":
        identity = {k: v for k, v in config.to_json_dict().items()
                    if k in config_lib.FLAG_NAMES and k not in config_lib.RESUME_IGNORED}
        identity["model_dir"] = config.model_dir   # every task reads the chief's run
        cluster.check_same_flags(strategy, cluster.current_task(), identity)
    if config.batch_size < strategy.num_replicas_in_sync:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size} is smaller than the "
            f"{strategy.num_replicas_in_sync} replicas training it (GPUs, --cpu_replicas or "
            "workers): the global batch is split over them; use --batch_size >= "
            f"{strategy.num_replicas_in_sync}.")
    return strategy


def task_writes_files(config):
    """Whether this process owns the run directory (all but non-chief multi-worker tasks).

    Read from TF_CONFIG before any strategy exists, so the run's lock is taken first.
    """
    return config.strategy != "multi_worker" or cluster.current_task().is_chief
