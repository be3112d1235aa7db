"""Keras 3's ``model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``.

With the TensorFlow backend, ``fit`` fails under a multi-worker strategy (keras-team/keras#20585,
open; Keras 3.5 to 3.15 at least, TensorFlow 2.16 to 2.21), in two places of
``keras.src.backend.tensorflow.trainer``:

1. ``TensorFlowTrainer._maybe_symbolic_build`` builds the model from the first distributed batch,
   which it first reduces across all replicas with ``strategy.reduce(..., axis=None)``. Under a
   multi-worker strategy that is a collective over a nest of ``PerReplica`` values, which fails
   ("Attempt to convert a value (PerReplica...) to a Tensor"). Building needs only the batch's
   shapes and dtypes, so this module builds from the batch of the worker's first local replica.
2. ``reduce_per_replica`` reduces each of a step's logs with ``strategy.reduce("MEAN", value,
   axis=0)`` under a multi-worker strategy; a scalar log (the loss, a metric) has no axis 0. This
   module reduces scalars without an axis, which averages them over the replicas as intended.
3. ``reduce_per_replica`` gathers ``predict``'s outputs from all workers with a collective
   gather, which takes no ``bfloat16`` (the outputs of a network in mixed bfloat16). This module
   gathers them as ``float32``, which holds every ``bfloat16`` value, and casts them back.

:func:`patch_keras` applies all three and changes nothing for other strategies. The test
``test_keras_still_needs_the_compat_patch`` (tests/end_to_end/test_multi_worker.py) runs two
workers without it and fails once a Keras release no longer needs it: then this module can go.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_PATCHED = "_keras_siamese_multi_worker_patch"


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether ``strategy`` spans more than one worker (a multi-worker collective strategy)."""
    return bool(
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _maybe_symbolic_build(original):
    def build(self, iterator=None, data_batch=None):
        if iterator is None or not is_multi_worker(self._distribute_strategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            batch = next(batches)
            break
        local = tree.map_structure(
            lambda value: self._distribute_strategy.experimental_local_results(value)[0]
            if isinstance(value, tf.distribute.DistributedValues) else value,
            batch,
        )  # fmt: skip
        return original(self, data_batch=local)

    return build


def _reduce_per_replica(original):
    def reduce(values, strategy, reduction):
        if not is_multi_worker(strategy):
            return original(values, strategy, reduction)

        def one(value):
            local = strategy.experimental_local_results(value)[0]
            if reduction in ("auto", "mean") and local.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            if reduction == "concat" and local.dtype == tf.bfloat16:
                promoted = strategy.run(lambda v: tf.cast(v, tf.float32), args=(value,))
                return tf.cast(original(promoted, strategy, reduction), tf.bfloat16)
            return original(value, strategy, reduction)

        return tree.map_structure(one, values)

    return reduce


def patch_keras() -> None:
    """Makes ``model.fit`` work under ``MultiWorkerMirroredStrategy`` (see the module's doc).

    Idempotent; other strategies run Keras's own code unchanged.
    """
    if getattr(tf_trainer, _PATCHED, False):
        return
    trainer = tf_trainer.TensorFlowTrainer
    trainer._maybe_symbolic_build = _maybe_symbolic_build(trainer._maybe_symbolic_build)
    tf_trainer.reduce_per_replica = _reduce_per_replica(tf_trainer.reduce_per_replica)
    setattr(tf_trainer, _PATCHED, True)
