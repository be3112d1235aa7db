"""Training on a ``tf.distribute`` strategy: one device, the local GPUs, or several workers.

``python -m keras_siamese.fit --strategy NAME`` (:data:`STRATEGIES`):

- ``one``: the default strategy, on one device (a GPU where there is one, else the CPU);
- ``mirrored``: ``tf.distribute.MirroredStrategy``, one replica per local GPU;
- ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the workers that
  ``TF_CONFIG`` names, as TensorFlow defines it (``{"cluster": {"worker": [...]}, "task":
  {"type": "worker", "index": i}}``);
- ``auto``: ``multi-worker`` where ``TF_CONFIG`` names more than one task, else ``mirrored``
  where there is more than one GPU, else ``one``.

The global batch stays the configuration's: each of ``R`` replicas computes ``1/R`` of it, and
the gradients are summed over all replicas, so a step is the step of one process on the whole
batch. Every worker builds the same seeded pair stream and keeps its own share of each batch
(``tf.data``'s ``DATA`` sharding). Batch normalisation computes its statistics over the whole
global batch (``synchronized``), as one process would.

Worker 0 (or the ``chief`` task, where ``TF_CONFIG`` has one) is the chief: it alone writes the
run folder, the checkpoints, the logs and the export. Every worker restores from the chief's
backup when it starts, so the run folder must be on storage that every worker sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from keras_siamese.config import STRATEGIES


class DistributionError(ValueError):
    """A strategy that this machine or ``TF_CONFIG`` cannot give."""


def tf_config() -> dict[str, Any] | None:
    """``TF_CONFIG`` read from the environment, or None where it is unset or empty.

    Raises:
        DistributionError: it is not JSON, or names no cluster or task.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        addresses = cluster[task_type]
        address = addresses[index]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise DistributionError(
            f"TF_CONFIG is not a cluster and task as TensorFlow defines them ({error!r}): "
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(address, str) or ":" not in address:
        raise DistributionError(f"TF_CONFIG: task {task_type} {index} has no host:port ({address!r})")
    return config


def cluster_size(config: dict[str, Any] | None) -> int:
    """The tasks of a ``TF_CONFIG`` cluster (:func:`tf_config`); 1 without one."""
    return sum(len(addresses) for addresses in config["cluster"].values()) if config else 1


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The strategy a run trains under, and this process's place among its workers.

    Attributes:
        strategy: the ``tf.distribute`` strategy; None for ``one`` (Keras's default).
        name: the strategy's name in :data:`STRATEGIES` (``auto`` resolved).
        worker: this worker's index among ``workers``, counted from 0.
        workers: the processes taking part in training.
        chief: whether this worker writes the run folder, checkpoints, logs and export.
    """

    strategy: tf.distribute.Strategy | None = None
    name: str = "one"
    worker: int = 0
    workers: int = 1
    chief: bool = True

    @property
    def replicas(self) -> int:
        """The replicas computing each global batch, over all workers."""
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    @property
    def multi_worker(self) -> bool:
        """Whether training spans more than one process."""
        return self.workers > 1

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The strategy's scope, in which the models and the optimiser are to be created."""
        if self.strategy is None:
            yield
            return
        with self.strategy.scope():
            yield

    def barrier(self) -> None:
        """Waits until every worker has called it; at once on one worker.

        The workers that are not the chief wait here for the chief's report and export, so
        that every worker of a run ends when the run does and the cluster sees no worker
        leave early.
        """
        if self.multi_worker:
            sum_over_replicas(self.strategy, 1.0)

    def describe(self) -> str:
        """One line for the run's log: the strategy, replicas and this worker's role."""
        text = f"strategy {self.name!r}, {self.replicas} replica{'s' * (self.replicas != 1)}"
        if self.multi_worker:
            role = "the chief" if self.chief else "not the chief: it writes no results"
            text += f"; worker {self.worker} of {self.workers} ({role})"
        return text


def make_strategy(name: str = "auto") -> Distribution:
    """The strategy called ``name`` (:data:`STRATEGIES`) on this machine and ``TF_CONFIG``.

    A multi-worker strategy must be created before any other TensorFlow operation of the
    process, and every worker of the cluster must create it.

    Raises:
        DistributionError: an unknown name, ``multi-worker`` without a ``TF_CONFIG`` cluster.
    """
    if name not in STRATEGIES:
        raise DistributionError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    config = tf_config()
    if name == "auto":
        if cluster_size(config) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return Distribution()
    if name == "mirrored":
        return Distribution(tf.distribute.MirroredStrategy(), name)
    if config is None:
        raise DistributionError(
            "--strategy multi-worker needs TF_CONFIG: the cluster's workers and this "
            "process's task (docs/deployment.md)"
        )
    from keras_siamese import keras_compat

    keras_compat.patch_keras()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    task_type, index = resolver.task_type, int(resolver.task_id)
    chief = task_type == "chief" or (
        task_type == "worker" and index == 0 and "chief" not in config["cluster"]
    )
    workers = cluster_size(config)
    # The chief task, where there is one, counts first.
    worker = index + (1 if task_type == "worker" and "chief" in config["cluster"] else 0)
    return Distribution(strategy, name, worker=worker, workers=workers, chief=chief)


def loopback_cluster(workers: int) -> list[dict[str, Any]]:
    """The ``TF_CONFIG`` of each of ``workers`` workers on this machine, on loopback ports that
    are free now: a cluster on one machine, for trying multi-worker training out."""
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        cluster = {"worker": [f"localhost:{s.getsockname()[1]}" for s in sockets]}
    finally:
        for s in sockets:
            s.close()
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(workers)]


@functools.cache
def _summing(strategy: tf.distribute.Strategy) -> tf.types.experimental.GenericFunction:
    # In a tf.function: a strategy's collectives run eagerly only slowly, with a warning.
    @tf.function
    def total(value):
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(value)), axis=None
        )

    return total


def sum_over_replicas(strategy: tf.distribute.Strategy, value: float) -> float:
    """The sum of ``value`` as each replica of ``strategy`` gives it: a collective that every
    worker must call."""
    return float(_summing(strategy)(tf.constant(value, tf.float32)))


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` sharded by element across workers: each keeps its share of every batch.

    Every worker computes the same seeded stream, so the replicas of a step see the parts of
    one global batch, the batch that one process would train on.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class StopTogether(keras.callbacks.Callback):
    """Ends training on every worker when any worker's callbacks end it.

    A worker that left ``fit`` alone would leave the others waiting in their next collective
    for ever; a time limit measured on each worker's own clock can end one worker's training
    an epoch before another's. It must come after the callbacks that stop training.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        vote = float(bool(self.model.stop_training))
        self.model.stop_training = sum_over_replicas(self.strategy, vote) > 0
