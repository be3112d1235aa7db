"""One-shot scoring speed through the exported SavedModel.

    python bench/one_shot.py [--preset cpu|koch2015] [--repeats 15]

Times, in one process, on one SavedModel:

- a 20-way task as Lake lays out a run (20 queries against 20 candidates, 400 comparisons)
  through the ``one_shot`` signature (40 twin passes, 400 head evaluations), against the same
  400 pairs through ``serving_default`` (800 twin passes): the ratio is the point of the
  separable head;
- a single-query 20-way task through ``one_shot`` (21 twin passes, 20 head evaluations);
- all of Lake's 20 runs (400 trials) through ``one_shot``, and through the offline evaluator.

Medians of ``--repeats`` timings (the machine is shared and noisy). The network is the preset's,
untrained: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from keras_siamese import data, evaluation, export
from keras_siamese.config import PRESETS, preset
from keras_siamese.model import build_siamese


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    runs = data.load_lake_runs(args.data_dir)
    model = build_siamese(config.model)
    with tempfile.TemporaryDirectory() as tmp:
        signatures = tf.saved_model.load(str(export.export_saved_model(model, tmp))).signatures
        one_shot, pairs = signatures["one_shot"], signatures["serving_default"]
        queries = tf.constant(runs.test[0], tf.float32)
        support = tf.constant(runs.training[0], tf.float32)
        left = tf.repeat(queries, 20, axis=0)
        right = tf.tile(support, (20, 1, 1, 1))
        run_ms = median_ms(lambda: one_shot(queries=queries, support=support), args.repeats)
        pairs_ms = median_ms(lambda: pairs(left=left, right=right), max(3, args.repeats // 3))
        single_ms = median_ms(lambda: one_shot(queries=queries[:1], support=support), args.repeats)
        all_queries = tf.constant(runs.test, tf.float32)
        all_support = tf.constant(runs.training, tf.float32)

        def lake_saved_model():
            for r in range(len(runs.answers)):
                one_shot(queries=all_queries[r], support=all_support[r])

        lake_ms = median_ms(lake_saved_model, max(3, args.repeats // 3))
    tasks = evaluation.lake_tasks(runs)
    scorer = evaluation.SiameseScorer(model)
    offline_ms = median_ms(lambda: scorer(tasks), max(3, args.repeats // 3))

    size = config.model.image_size
    print(f"preset {args.preset} ({size}x{size}), median of {args.repeats} (fewer for the slow ones)")
    print(f"20 queries x 20 candidates, one_shot        {run_ms:9.1f} ms  (40 twin passes)")
    print(f"the same 400 pairs, serving_default        {pairs_ms:9.1f} ms  (800 twin passes)")
    print(f"ratio                                      {pairs_ms / run_ms:9.1f}x")
    print(f"1 query x 20 candidates, one_shot          {single_ms:9.1f} ms per task")
    print(f"Lake's 20 runs (400 trials), SavedModel    {lake_ms:9.1f} ms")
    print(f"Lake's 20 runs (400 trials), offline       {offline_ms:9.1f} ms")


if __name__ == "__main__":
    main()
