"""Input pipeline versus training throughput.

    python bench/pipeline.py [--preset cpu] [--pair-sampling random|all|alphabet] [--steps 30]

Prints the median rate of the preset's tf.data pipeline alone (with the paper's
distortions) and of training steps fed by it (in the precision ``fit`` trains the preset in
here), in batches, images and training pairs per second, and the ratio: the pipeline must
outpace training by a wide margin so it is never the bottleneck. With all-pairs batches a
batch of ``B`` images holds ``B (B - 1) / 2`` training pairs; with random pairs, ``B / 2``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras

from common import print_machine
from keras_siamese import data, training
from keras_siamese.config import PAIR_SAMPLING, PRESETS, preset
from keras_siamese.hardware import mixed_precision_by_default


def _median_seconds(iterable, steps: int, warmup: int = 3) -> float:
    times = []
    it = iter(iterable)
    for i in range(warmup + steps):
        start = time.perf_counter()
        next(it)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--pair-sampling", choices=PAIR_SAMPLING, default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    config = preset(args.preset, mixed_precision_by_default(args.preset))
    if args.pair_sampling:
        config = config.replace(pair_sampling=args.pair_sampling)
    total = args.steps + 3
    config = config.replace(steps_per_epoch=total)
    splits = data.paper_split(data.load_omniglot(args.data_dir))
    ds, _ = training.datasets(config, splits)
    pipeline = _median_seconds(ds, args.steps)

    _, fitted = training.compiled_models(config)
    batches = list(ds.take(total))  # materialised, so training alone is timed
    train = _median_seconds((fitted.train_on_batch(*batch) for batch in batches), args.steps)

    x = batches[0][0]
    images = sum(v.shape[0] for v in x.values()) if isinstance(x, dict) else x.shape[0]
    pairs = {
        "random": images // 2,
        "all": images * (images - 1) // 2,
        "alphabet": images * (images // config.batch_alphabets - 1) // 2,
    }[config.pair_sampling]
    print_machine()
    print(
        f"preset {args.preset}: {config.pair_sampling} pairs, {images} images "
        f"({pairs} pairs) per batch, {config.model.image_size}px"
    )
    for name, seconds in (("pipeline", pipeline), ("training", train)):
        print(
            f"{name:9s} {1 / seconds:8.1f} batches/s {images / seconds:10.0f} images/s "
            f"{pairs / seconds:12.0f} pairs/s"
        )
    print(f"ratio     {train / pipeline:8.1f}x (pipeline / training)")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
