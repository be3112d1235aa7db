"""One-shot scoring speed through the exported SavedModel.

    python bench/one_shot.py [--preset cpu|koch2015] [--repeats 15] [--[no-]mixed-precision]

Times, in one process, on one SavedModel:

- a 20-way task as Lake lays out a run (20 queries against 20 candidates, 400 comparisons)
  through the ``one_shot`` signature (40 twin passes, 400 head evaluations), against the same
  400 pairs through ``serving_default`` (800 twin passes): the ratio is the point of the
  separable head;
- a single-query 20-way task through ``one_shot`` (21 twin passes, 20 head evaluations);
- all of Lake's 20 runs (400 trials) through ``one_shot``, and through the offline evaluator;
- the floor under a single-query task: its 21 twin passes' FLOPs at the best large-matmul
  throughput of the same precision, measured in the same run;
- in mixed bfloat16, the 40 twin passes of a run as the trained network computes them (casting
  its float32 weights to bfloat16 on every call) against the export's ``serving_copy`` (the
  weights held in bfloat16).

Medians of ``--repeats`` rounds in which the timings take turns (the machine is shared and noisy).
The network is the preset's, untrained: speed does not depend on the weights. It computes in the
precision ``fit`` would train the preset in on this machine (mixed bfloat16 for the ``cpu`` presets
where bfloat16 is fast), unless ``--mixed-precision`` or ``--no-mixed-precision`` says otherwise;
the SavedModel of a network trained in mixed bfloat16 computes in bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import tensorflow as tf

from common import flops_per_image, interleaved_seconds, print_machine, square_matmul
from keras_siamese import data, evaluation, export
from keras_siamese.config import PRESETS, preset
from keras_siamese.hardware import mixed_precision_by_default
from keras_siamese.model import build_siamese, twin_of
from keras_siamese.preprocessing import to_model_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                        help="compute in mixed bfloat16 (default: as fit trains the preset here)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    mixed = args.mixed_precision
    if mixed is None:
        mixed = mixed_precision_by_default(args.preset)
    config = preset(args.preset, mixed)
    runs = data.load_lake_runs(args.data_dir)
    model = build_siamese(config.model)
    with tempfile.TemporaryDirectory() as tmp:
        # The 400 pairs go through serving_default in one request, over the default limit.
        limits = export.ExportLimits(max_images=400)
        signatures = tf.saved_model.load(
            str(export.export_saved_model(model, tmp, limits=limits))
        ).signatures
        one_shot, pairs = signatures["one_shot"], signatures["serving_default"]
        queries = tf.constant(runs.test[0], tf.float32)
        support = tf.constant(runs.training[0], tf.float32)
        left = tf.repeat(queries, 20, axis=0)
        right = tf.tile(support, (20, 1, 1, 1))
        matmul_dtype = tf.bfloat16 if mixed else tf.float32
        matmul, matmul_flops = square_matmul(matmul_dtype)
        tasks = {
            "run": lambda: one_shot(queries=queries, support=support),
            "pairs": lambda: pairs(left=left, right=right),
            "single": lambda: one_shot(queries=queries[:1], support=support),
            "matmul": matmul,
        }
        if mixed:
            images = to_model_input(tf.concat([queries, support], axis=0), config.model.image_size)
            for name, twin in (("cast", twin_of(model)), ("held", twin_of(export.serving_copy(model)))):
                embed = tf.function(lambda twin=twin: twin(images, training=False))
                tasks[f"twin {name}"] = lambda embed=embed: embed().numpy()
        # Each comparison takes turns round by round, so the shared machine's drift hits both.
        seconds = interleaved_seconds(tasks, args.repeats)
        all_queries = tf.constant(runs.test, tf.float32)
        all_support = tf.constant(runs.training, tf.float32)

        def lake_saved_model():
            for r in range(len(runs.answers)):
                one_shot(queries=all_queries[r], support=all_support[r])

        scorer = evaluation.SiameseScorer(model)
        tasks = evaluation.lake_tasks(runs)
        seconds |= interleaved_seconds(
            {"lake": lake_saved_model, "offline": lambda: scorer(tasks)}, max(3, args.repeats // 3)
        )
    ms = {name: 1000 * statistics.median(times) for name, times in seconds.items()}
    run_ms, pairs_ms, single_ms, lake_ms, offline_ms = (
        ms[name] for name in ("run", "pairs", "single", "lake", "offline")
    )
    ratio = statistics.median(p / r for p, r in zip(seconds["pairs"], seconds["run"]))
    task_flops = 21 * flops_per_image(twin_of(model))  # the head's 20 evaluations are negligible
    peak = matmul_flops / min(seconds["matmul"])

    size = config.model.image_size
    precision = "mixed bfloat16" if mixed else "float32"
    print_machine()
    print(f"preset {args.preset} ({size}x{size}, {precision}), median of {args.repeats} rounds "
          f"({max(3, args.repeats // 3)} for Lake's runs)")
    rows = [
        ("20 queries x 20 candidates, one_shot", f"{run_ms:9.1f} ms  (40 twin passes)"),
        ("  per task (20 sharing their candidates)", f"{run_ms / 20:9.1f} ms"),
        ("the same 400 pairs, serving_default", f"{pairs_ms:9.1f} ms  (800 twin passes)"),
        ("ratio (median of the rounds)", f"{ratio:9.1f}x"),
        ("1 query x 20 candidates, one_shot", f"{single_ms:9.1f} ms per task  (21 twin passes)"),
        (f"  floor at the best {matmul_dtype.name} matmul here", f"{1000 * task_flops / peak:9.1f} ms  "
         f"({task_flops / 1e9:.1f} GFLOP at {peak / 1e9:.0f} GFLOP/s)"),
        ("Lake's 20 runs (400 trials), SavedModel", f"{lake_ms:9.1f} ms"),
        ("Lake's 20 runs (400 trials), offline", f"{offline_ms:9.1f} ms"),
    ]
    if mixed:
        cast_ms, held_ms = ms["twin cast"], ms["twin held"]
        held = statistics.median(c / h for c, h in zip(seconds["twin cast"], seconds["twin held"]))
        rows += [
            ("40 twin passes, weights cast each call", f"{cast_ms:9.1f} ms  (the trained network)"),
            ("  weights held in bfloat16", f"{held_ms:9.1f} ms  (export.serving_copy): {held:.2f}x"),
        ]
    for label, value in rows:
        print(f"{label:42s} {value}")


if __name__ == "__main__":
    main()
