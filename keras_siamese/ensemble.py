"""``python -m keras_siamese.ensemble RUN_DIR...``: evaluate and export an ensemble of trained runs.

An ensemble averages the scores of networks trained independently, typically one
preset trained with different ``--seed``s::

    for seed in 0 1 2; do python -m keras_siamese.fit --seed $seed; done
    python -m keras_siamese.ensemble runs/*-cpu-seed0 runs/*-cpu-seed1 runs/*-cpu-seed2

(``python -m keras_siamese.fit --members 3`` trains those runs and combines them in
one command; ``--preset cpu-long`` is three ``cpu`` networks.) This command
trains nothing. It writes a folder like a run folder of ``fit``: ``best.keras``
(the ensemble, ``model.build_ensemble``), ``members.json``, ``metrics.json`` with
``fit``'s report, and ``one_shot_tasks.png``; and it exports the ensemble as one
SavedModel with the usual signatures. ``metrics.json`` also holds the one-shot
accuracy of the ensemble and of each member on the same validation tasks, the
figure on which to choose an ensemble (the test alphabets stay unseen).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from keras_siamese.config import PRESETS, add_tta_arguments


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m keras_siamese.ensemble``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.ensemble",
        description="Evaluate and export an ensemble of runs trained by keras_siamese.fit: "
        "the mean of their scores.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "members", nargs="+", metavar="RUN_DIR", help="run folders (or .keras files) to combine"
    )
    parser.add_argument("--data-dir", default=None, help="folder holding the Omniglot zips")
    parser.add_argument("--tfds-dir", default=None, help="where TFDS keeps the prepared dataset")
    parser.add_argument(
        "--output", default=None,
        help="folder for the ensemble's files (if unset: RUNS_DIR/<time>-ensemble-of-N)",
    )  # fmt: skip
    parser.add_argument("--runs-dir", default="runs", help="parent folder of the default --output")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="task sampling: Koch's test tasks and MNIST as `fit --seed`, validation tasks as "
        "its training (seed + 2)",
    )  # fmt: skip
    parser.add_argument(
        "--val-tasks", type=int, default=PRESETS["cpu"].val_tasks,
        help="validation one-shot tasks, as many as the cpu presets select on",
    )  # fmt: skip
    parser.add_argument("--export-dir", default="saved_models", help="TF Serving base folder")
    parser.add_argument("--model-name", default="siamese", help="model name under --export-dir")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    add_tta_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Builds, evaluates and exports the ensemble; returns the metrics written to ``metrics.json``."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()

    from keras_siamese.reporting import (
        RefusedModelError, check_trained, ensemble_report, evaluate_and_export, load_data,
        summary, write_metrics,
    )
    from keras_siamese.model import build_ensemble, load_trained

    try:
        members = [load_trained(path) for path in args.members]
        ensemble = build_ensemble(members)
    except (FileNotFoundError, ValueError) as error:  # files.UnreadableFileError is a ValueError
        raise SystemExit(f"error: {error}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.output or Path(args.runs_dir) / f"{stamp}-ensemble-of-{len(members)}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"keras-siamese: ensemble of {len(members)} in {out}")
    splits, runs = load_data(args.data_dir, args.tfds_dir)

    metrics = ensemble_report(
        ensemble, args.members, splits["validation"], out, val_tasks=args.val_tasks, seed=args.seed
    )
    try:
        check_trained(ensemble, metrics["val_one_shot_accuracy"], way=20, tasks=args.val_tasks)
    except RefusedModelError as error:
        raise SystemExit(f"error: {error}") from None
    metrics.update(
        evaluate_and_export(
            ensemble, splits, runs, out, way=20, seed=args.seed,
            export_dir=None if args.no_export else args.export_dir, model_name=args.model_name,
            tta_views=args.tta_views, tta_symmetries=args.tta_symmetries,
        )  # fmt: skip
    )
    write_metrics(metrics, out, started)
    print(summary(metrics) + f"\nFolder: {out}")
    return metrics


if __name__ == "__main__":
    main()
