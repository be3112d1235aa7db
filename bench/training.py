"""Training throughput at the paper's size, float32 against mixed bfloat16, and FLOP utilisation.

    python bench/training.py [--preset koch2015] [--steps 10] [--precision auto|both|float32]

Both precisions train the preset's network with ``model.fit``'s train step, in the same process,
taking turns step by step with a large matmul of each precision, each step's batch drawn inside
its timing from the live pair pipeline (Omniglot, distortions on). Prints median pairs/s, the
median of the per-round bfloat16 / float32 ratios, the model FLOPs per training pair (counted
from the layer shapes: forward and backward, both images), and the model FLOP utilisation
against the best matmul throughput of the same rounds.

bfloat16 is only fast on CPUs with AMX or AVX-512 BF16 (and on recent GPUs); on others TensorFlow
emulates it at a small fraction of float32 speed, so ``--precision auto`` (the default) runs it
only where the CPU reports one of those features.
"""

from __future__ import annotations

import argparse
import statistics

import keras
import tensorflow as tf

from common import (
    add_precision_argument, flops_per_image, interleaved_seconds, print_machine, square_matmul,
    with_bfloat16,
)
from keras_siamese import data
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import build_siamese, twin_of
from keras_siamese.pairs import pair_dataset
from keras_siamese.training import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="koch2015")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each precision")
    add_precision_argument(parser)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    train = data.paper_split(data.load_omniglot(args.data_dir))["train"]
    batches = iter(pair_dataset(
        train, image_size=config.model.image_size, batch_size=config.batch_size,
        steps=None, seed=0, within_alphabet=config.within_alphabet,
    ))
    # Each precision, and the dtype of its compute: the matmul of that dtype is its ceiling.
    precisions = {"float32": tf.float32}
    if with_bfloat16(args.precision):
        precisions["mixed bfloat16"] = tf.bfloat16
    tasks, matmul_flops = {}, {}
    for name, dtype in precisions.items():
        model_config = config.replace(mixed_precision=dtype == tf.bfloat16)
        model = build_siamese(model_config.model)
        model.compile(optimizer=make_optimizer(model_config), loss="binary_crossentropy")
        # The batch is drawn inside the timing: a pipeline that fell behind would show.
        tasks[name] = lambda model=model: model.train_on_batch(*next(batches))
        tasks[f"{dtype.name} matmul"], matmul_flops[name] = square_matmul(dtype)
    seconds = interleaved_seconds(tasks, args.steps)
    peaks = {
        name: flops / min(seconds[f"{precisions[name].name} matmul"])
        for name, flops in matmul_flops.items()
    }
    # Forward and backward (2x forward), both images; the layer shapes are the same in
    # either precision, so the last model built serves.
    flops_pair = 3 * 2 * flops_per_image(twin_of(model))
    size = config.model.image_size
    print_machine()
    print(f"preset {args.preset}: {size}x{size}, batch {config.batch_size}, median of "
          f"{args.steps} steps per precision, taking turns, fed by the live pair pipeline")
    print(f"model FLOPs per training pair          {flops_pair / 1e9:8.2f} GFLOP")
    for name, dtype in precisions.items():
        pairs = config.batch_size / statistics.median(seconds[name])
        peak = peaks[name]
        print(f"{name + ' training':38s} {pairs:8.1f} pairs/s  MFU {pairs * flops_pair / peak:6.1%} "
              f"of {peak / 1e9:.0f} GFLOP/s, the best {dtype.name} matmul")
    if "mixed bfloat16" in precisions:
        rounds = [f / b for f, b in zip(seconds["float32"], seconds["mixed bfloat16"])]
        print(f"ratio bfloat16 / float32               {statistics.median(rounds):8.2f}x  "
              f"(median of the {len(rounds)} rounds; lowest {min(rounds):.2f}x, "
              f"highest {max(rounds):.2f}x)")
        matmuls = [f / b for f, b in zip(seconds["float32 matmul"], seconds["bfloat16 matmul"])]
        print(f"ratio of the matmuls                   {statistics.median(matmuls):8.2f}x  "
              f"(median of the rounds; of the best: {peaks['mixed bfloat16'] / peaks['float32']:.2f}x)")
    else:
        print("mixed bfloat16: skipped, this CPU has neither AMX nor AVX-512 BF16 "
              "(--precision both runs it anyway, at emulated speed)")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
