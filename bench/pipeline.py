"""Input pipeline versus training throughput, in pairs per second.

    python bench/pipeline.py [--preset cpu] [--steps 30]

Prints the median pairs/s of the tf.data pair pipeline alone (with the paper's
distortions) and of ``model.fit`` steps fed by it, and their ratio: the pipeline
must outpace training by a wide margin so it is never the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras

from keras_siamese import data
from keras_siamese.augmentation import Distortion
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import build_siamese
from keras_siamese.pairs import pair_dataset
from keras_siamese.training import make_optimizer


def _median_rate(iterable, batch_size: int, steps: int, warmup: int = 3) -> float:
    times = []
    it = iter(iterable)
    for i in range(warmup + steps):
        start = time.perf_counter()
        next(it)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    train = data.paper_split(data.load_omniglot(args.data_dir))["train"]
    total = args.steps + 3
    ds = pair_dataset(
        train,
        image_size=config.model.image_size,
        batch_size=config.batch_size,
        steps=total,
        seed=0,
        distortion=Distortion(),
        within_alphabet=config.within_alphabet,
    )
    pipeline = _median_rate(ds, config.batch_size, args.steps)

    model = build_siamese(config.model)
    model.compile(optimizer=make_optimizer(config), loss="binary_crossentropy")
    batches = list(ds.take(total))  # materialised, so training alone is timed
    steps = (model.train_on_batch(*batch) for batch in batches)
    training = _median_rate(steps, config.batch_size, args.steps)
    print(f"preset {args.preset}: batch {config.batch_size}, image {config.model.image_size}px")
    print(f"pipeline  {pipeline:10.0f} pairs/s")
    print(f"training  {training:10.0f} pairs/s")
    print(f"ratio     {pipeline / training:10.1f}x (pipeline / training)")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
