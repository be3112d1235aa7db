"""Keras's BatchNormalization against TensorFlow's fused kernel (model.FusedBatchNormalization).

    python bench/batch_norm.py [--preset cpu] [--steps 30] [--precision auto|both|float32]

Builds the preset's network twice, once as the project builds it and once with
``keras.layers.BatchNormalization`` in place of ``FusedBatchNormalization``, and times both
taking turns round by round in one process: a ``model.fit`` training step on the preset's
batches (drawn inside the timing from the live pipeline) and, in inference, embedding one
batch of images (``predict_on_batch``), as one-shot scoring does. Prints the median times and
the median of the per-round ratios, for float32 and, where the CPU has fast bfloat16, mixed
bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
from unittest import mock

import keras

from common import add_precision_argument, interleaved_seconds, print_machine, with_bfloat16
from keras_siamese import data, training
from keras_siamese import model as siamese_model
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import twin_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed rounds")
    add_precision_argument(parser)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    base = preset(args.preset)
    if not base.model.batch_norm:
        parser.error(f"preset {args.preset} has no batch normalisation")
    splits = data.paper_split(data.load_omniglot(args.data_dir))
    precisions = [False, True] if with_bfloat16(args.precision) else [False]

    tasks = {}
    for mixed in precisions:
        config = preset(args.preset, mixed)
        batches = iter(training.datasets(config, splits)[0])
        images = next(batches)[0]
        images = images["left"] if isinstance(images, dict) else images
        precision = "mixed bfloat16" if mixed else "float32"
        for layer in ("Keras", "fused"):
            if layer == "Keras":  # the same network with Keras's own layer
                with mock.patch.object(
                    siamese_model, "FusedBatchNormalization", keras.layers.BatchNormalization
                ):
                    model, fitted = training.compiled_models(config)
            else:
                model, fitted = training.compiled_models(config)
            twin = twin_of(model)
            tasks[precision, layer, "train"] = (
                lambda fitted=fitted: fitted.train_on_batch(*next(batches))
            )
            tasks[precision, layer, "embed"] = lambda twin=twin: twin.predict_on_batch(images)
    seconds = interleaved_seconds(tasks, args.steps)

    print_machine()
    print(f"preset {args.preset}: {base.model.image_size}px, {len(images)} images per batch, "
          f"median of {args.steps} rounds, taking turns")
    for precision in dict.fromkeys(key[0] for key in tasks):
        for task, what in (("train", "training step"), ("embed", "embedding a batch")):
            keras_s = seconds[precision, "Keras", task]
            fused_s = seconds[precision, "fused", task]
            ratios = [k / f for k, f in zip(keras_s, fused_s)]
            print(f"{precision:14s} {what:18s} Keras {statistics.median(keras_s) * 1e3:7.1f} ms"
                  f"  fused {statistics.median(fused_s) * 1e3:7.1f} ms  ratio "
                  f"{statistics.median(ratios):5.2f}x (lowest {min(ratios):.2f}x, "
                  f"highest {max(ratios):.2f}x)")


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
