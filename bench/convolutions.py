"""Each convolution of the twin alone: forward pass, weight gradient and input gradient.

    python bench/convolutions.py [--preset koch2015] [--batch 128] [--rounds 8]
                                 [--precision auto|both|float32]

A training step's convolutions are three oneDNN primitives per layer: the forward pass, the
gradient with respect to the weights (``Conv2DBackpropFilter``) and, for every layer but the
first, the gradient with respect to its input (``Conv2DBackpropInput``). This times each of them
at the shapes of the preset's twin, for one side of a batch of pairs, in float32 and, where the
CPU has fast bfloat16, in bfloat16, all taking turns round by round in one process, and prints
median milliseconds, GFLOP/s, and how much faster bfloat16 is than float32 for each. It shows
where a mixed bfloat16 training step falls short of the matmul speed-up (``bench/training.py``);
``ONEDNN_VERBOSE=1`` names the kernels oneDNN chose.
"""

from __future__ import annotations

import argparse
import statistics

import keras
import tensorflow as tf

from common import (
    add_precision_argument, interleaved_seconds, layer_flops, print_machine, with_bfloat16,
)
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import build_twin

PASSES = ("forward", "weight gradient", "input gradient")


def convolution_passes(layer: keras.layers.Conv2D, batch: int, dtype: tf.DType) -> dict:
    """The layer's three passes on random tensors of its shapes, as callables."""
    _, height, width, channels = layer.input.shape
    _, out_height, out_width, filters = layer.output.shape
    kernel_shape = (*layer.kernel_size, channels, filters)
    padding = layer.padding.upper()
    x = tf.cast(tf.random.uniform((batch, height, width, channels)), dtype)
    w = tf.cast(tf.random.normal(kernel_shape, stddev=0.01), dtype)
    dy = tf.cast(tf.random.normal((batch, out_height, out_width, filters)), dtype)
    strides = [1, 1, 1, 1]

    def timed(fn):
        # A scalar out of the result: each call runs the whole primitive, nothing is copied back.
        function = tf.function(lambda: tf.reduce_sum(tf.cast(fn()[0, 0, 0], tf.float32)))
        return lambda: function().numpy()

    return {
        "forward": timed(lambda: tf.nn.conv2d(x, w, strides, padding)),
        "weight gradient": timed(lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=strides, padding=padding,
        )),
        "input gradient": timed(lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=x.shape, filter=w, out_backprop=dy, strides=strides, padding=padding,
        )),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="koch2015")
    parser.add_argument("--batch", type=int, default=128, help="images per pass (one side)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds")
    add_precision_argument(parser)
    args = parser.parse_args()
    twin = build_twin(preset(args.preset).model)
    convolutions = [layer for layer in twin.layers if isinstance(layer, keras.layers.Conv2D)]
    dtypes = [tf.float32] + ([tf.bfloat16] if with_bfloat16(args.precision) else [])
    tasks = {}
    for i, layer in enumerate(convolutions):
        for dtype in dtypes:
            for name, task in convolution_passes(layer, args.batch, dtype).items():
                if i or name != "input gradient":  # training needs no gradient of the images
                    tasks[layer.name, name, dtype.name] = task
    seconds = interleaved_seconds(tasks, args.rounds)

    print_machine()
    print(f"preset {args.preset}: {args.batch} images per pass, median of {args.rounds} rounds, "
          f"taking turns")
    total = {dtype.name: 0.0 for dtype in dtypes}
    for layer in convolutions:
        # The three passes do the same arithmetic as the forward pass.
        pass_flops = args.batch * layer_flops(layer)
        _, height, _, channels = layer.input.shape
        _, out_height, _, filters = layer.output.shape
        kernel = "x".join(map(str, layer.kernel_size))
        print(f"{layer.name}: {channels} -> {filters} channels, {kernel}, {height} -> {out_height} px, "
              f"{pass_flops / 1e9:.1f} GFLOP per pass")
        for name in PASSES:
            if (layer.name, name, "float32") not in tasks:
                continue
            line = f"  {name:16s}"
            for dtype in dtypes:
                median = statistics.median(seconds[layer.name, name, dtype.name])
                total[dtype.name] += median
                line += (f"  {dtype.name} {median * 1e3:7.1f} ms "
                         f"({pass_flops / median / 1e9:5.0f} GFLOP/s)")
            if len(dtypes) == 2:
                ratios = [f / b for f, b in zip(seconds[layer.name, name, "float32"],
                                                seconds[layer.name, name, "bfloat16"])]
                line += f"  bfloat16 {statistics.median(ratios):4.2f}x float32's speed"
            print(line)
    print("all passes: " + ", ".join(f"{dtype} {t * 1e3:.0f} ms" for dtype, t in total.items())
          + (f"; bfloat16 {total['float32'] / total['bfloat16']:.2f}x" if len(dtypes) == 2 else ""))


if __name__ == "__main__":
    main()
