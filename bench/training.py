"""Training throughput at the paper's size, float32 against mixed bfloat16, and FLOP utilisation.

    python bench/training.py [--preset koch2015] [--steps 5] [--precision auto|both|float32]

Both precisions train the preset's network with ``model.fit``'s train step on batches from the
real pair pipeline (Omniglot, distortions on), in the same process. Prints median pairs/s, the
bfloat16 / float32 ratio, the model FLOPs per training pair (counted from the layer shapes:
forward and backward, both images), and the model FLOP utilisation against large-matmul
throughput measured in the same run.

bfloat16 is only fast on CPUs with AMX or AVX-512 BF16 (and on recent GPUs); on others TensorFlow
emulates it at a small fraction of float32 speed, so ``--precision auto`` (the default) runs it
only where the CPU reports one of those features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import tensorflow as tf

from keras_siamese import data
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import build_siamese, fast_bfloat16_hardware, twin_of
from keras_siamese.pairs import pair_dataset
from keras_siamese.training import make_optimizer


def flops_per_image(twin: keras.Model) -> float:
    """Forward multiply-adds x 2 of the twin's convolutions and dense layer, for one image."""
    total = 0.0
    for layer in twin.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2.0 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def matmul_flops_per_second(dtype: tf.DType, n: int = 2048, repeats: int = 5) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    matmul(a).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def train_pairs_per_second(config, batches, steps: int) -> float:
    model = build_siamese(config.model)
    model.compile(optimizer=make_optimizer(config), loss="binary_crossentropy")
    times = []
    for i, (x, y) in enumerate(batches[: steps + 1]):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        if i:  # the first step traces and compiles
            times.append(time.perf_counter() - start)
    return config.batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="koch2015")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=("auto", "both", "float32"), default="auto")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    train = data.paper_split(data.load_omniglot(args.data_dir))["train"]
    batches = list(pair_dataset(
        train, image_size=config.model.image_size, batch_size=config.batch_size,
        steps=args.steps + 1, seed=0, within_alphabet=config.within_alphabet,
    ))
    fast_bf16 = fast_bfloat16_hardware() is not None
    run_bf16 = args.precision == "both" or (args.precision == "auto" and fast_bf16)

    flops_pair = 3 * 2 * flops_per_image(twin_of(build_siamese(config.model)))  # fwd+bwd, 2 images
    fp32 = train_pairs_per_second(config.replace(mixed_precision=False), batches, args.steps)
    matmul32 = matmul_flops_per_second(tf.float32)
    size = config.model.image_size
    print(f"preset {args.preset}: {size}x{size}, batch {config.batch_size}, {args.steps} steps")
    print(f"model FLOPs per training pair       {flops_pair / 1e9:8.2f} GFLOP")
    print(f"float32 training                    {fp32:8.1f} pairs/s  "
          f"MFU {fp32 * flops_pair / matmul32:6.1%} of {matmul32 / 1e9:.0f} GFLOP/s float32 matmul")
    if run_bf16:
        bf16 = train_pairs_per_second(config.replace(mixed_precision=True), batches, args.steps)
        matmul16 = matmul_flops_per_second(tf.bfloat16)
        print(f"mixed bfloat16 training             {bf16:8.1f} pairs/s  "
              f"MFU {bf16 * flops_pair / matmul16:6.1%} of {matmul16 / 1e9:.0f} GFLOP/s bfloat16 matmul")
        print(f"ratio bfloat16 / float32           {bf16 / fp32:8.2f}x")
    else:
        print("mixed bfloat16: skipped, this CPU has neither AMX nor AVX-512 BF16 "
              "(--precision both runs it anyway, at emulated speed)")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
