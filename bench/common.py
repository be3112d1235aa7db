"""Helpers shared by the benchmarks: turn-taking timings, model FLOPs, a matmul peak, the machine."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_siamese.hardware import describe_machine, fast_bfloat16_hardware


def layer_flops(layer: keras.layers.Layer) -> float:
    """Forward multiply-adds x 2 of a convolution or dense layer for one image (0 for others)."""
    if isinstance(layer, keras.layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        return 2.0 * h * w * c_out * kh * kw * layer.input.shape[-1]
    if isinstance(layer, keras.layers.Dense):
        return 2.0 * layer.input.shape[-1] * layer.units
    return 0.0


def flops_per_image(twin: keras.Model) -> float:
    """Forward multiply-adds x 2 of the twin's convolutions and dense layer, for one image."""
    return sum(layer_flops(layer) for layer in twin.layers)


def interleaved_seconds(tasks: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each task per round, the tasks taking turns within each round.

    Taking turns exposes every task to the same moments of a shared, noisy machine, so ratios
    taken round by round stay fair while the machine's speed drifts. A first round (tracing,
    compiling, warming oneDNN's kernel cache) runs before the ``rounds`` timed ones.
    """
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for round_ in range(rounds + 1):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def square_matmul(dtype: tf.DType, n: int = 4096) -> tuple[Callable[[], object], float]:
    """A large square matmul to time, and its FLOPs: the ceiling that model FLOP utilisation
    is measured against (its best round: a peak is what the hardware can do; on a shared
    machine the slower rounds measure the neighbours)."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    return (lambda: matmul(a).numpy()), 2.0 * n**3


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|both|float32``: the precisions a benchmark compares (``with_bfloat16``)."""
    parser.add_argument("--precision", choices=("auto", "both", "float32"), default="auto")


def with_bfloat16(precision: str) -> bool:
    """Whether ``--precision`` runs mixed bfloat16 beside float32: ``both`` always, ``auto``
    where bfloat16 is fast here (elsewhere TensorFlow emulates it, many times slower)."""
    return precision == "both" or (precision == "auto" and fast_bfloat16_hardware() is not None)


def print_machine() -> None:
    """One line naming what the figures below were measured on."""
    machine = describe_machine()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, fast bfloat16: "
          f"{machine['fast_bfloat16'] or 'none'}; TensorFlow {machine['tensorflow']}, "
          f"Keras {machine['keras']}")
