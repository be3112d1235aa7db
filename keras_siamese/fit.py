"""``python -m keras_siamese.fit``: train, evaluate and export in one command.

Loads Omniglot, trains a Siamese network with ``model.fit`` on the paper's
split, scores it on Lake et al.'s 20 one-shot runs, and exports a SavedModel
for TensorFlow Serving. Everything lands in a run folder (see
``keras_siamese.training``) plus ``metrics.json``, the learning curves and a
sheet of Lake's trials as the model scored them (``one_shot_tasks.png``).
With ``--members N`` (``--preset cpu-long``: three ``cpu`` networks) it
trains N networks, each in a run folder of its own, and reports and exports
their ensemble, the mean of their scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keras_siamese.config import (
    DEFAULT_PRESET, PAIR_SAMPLING, PRESETS, TTA_SYMMETRIES, TTA_VIEWS, TrainConfig,
    add_tta_arguments, preset,
)

if TYPE_CHECKING:  # annotations only
    import keras

    from keras_siamese.data import OmniglotImages


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.fit",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help="starting configuration: 'cpu' trains in under 20 minutes on 2 CPU cores, "
        "'cpu-long' three cpu networks (an ensemble) in under an hour; "
        "'koch2015' is the paper's protocol at 105x105 "
        "(meant for a GPU); "
        "'smoke' is a tiny network for trying the pipeline",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the Omniglot zips (default: $KERAS_SIAMESE_DATA_DIR, "
        "else ../shared/data/omniglot beside the checkout, else download)",
    )
    data.add_argument(
        "--tfds-dir", default=None, help="where TFDS keeps the prepared dataset (default: TFDS's)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--runs-dir", default="runs", help="parent folder of new run folders")
    out.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a killed run from its last finished epoch, with its config.json "
        "(a run killed after training goes straight to evaluation and export)",
    )
    out.add_argument("--export-dir", default="saved_models", help="TF Serving base folder")
    out.add_argument("--model-name", default="siamese", help="model name under --export-dir")
    out.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    over = parser.add_argument_group("overrides (default: the preset's value)")
    for field in (
        "seed", "epochs", "steps_per_epoch", "batch_size", "patience", "image_size", "train_drawers",
        "dense_units",
    ):
        over.add_argument(f"--{field.replace('_', '-')}", type=int, default=None)
    over.add_argument("--val-tasks", type=int, default=None,
                      help="one-shot validation tasks each epoch, on which the best epoch is kept "
                      "(the paper: 320)")
    over.add_argument("--filters", type=int, nargs="+", default=None, metavar="N",
                      help="output channels of each convolution (as many as the preset has)")
    for field in ("learning_rate", "lr_decay", "within_alphabet", "ema_momentum"):
        over.add_argument(f"--{field.replace('_', '-')}", type=float, default=None)
    over.add_argument("--max-minutes", type=float, default=None,
                      help="end training within this many minutes: no epoch starts that "
                      "might end past it (0: no limit)")
    over.add_argument("--members", type=int, default=None,
                      help="train this many networks (seeds --seed, --seed + 1, ...) one after "
                      "another and score with their mean: an ensemble")
    over.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
    over.add_argument(
        "--pair-sampling",
        choices=PAIR_SAMPLING,
        default=None,
        help="'random': the paper's batches of independent pairs; 'all': every pair of "
        "batches of characters; 'alphabet': every pair within each alphabet of those batches",
    )
    over.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed bfloat16 compute, with the cpu presets' bfloat16 recipe (75 epochs, "
        "x0.97 per epoch); faster only on GPUs from Ampere on and on CPUs with AMX or "
        "AVX-512 BF16 (2x at paper size, 1.15x for the cpu presets), many times slower "
        "elsewhere (default: on for the cpu presets where bfloat16 is fast, else off)",
    )
    over.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                      help="batch normalisation after each convolution")
    over.add_argument("--distort", action=argparse.BooleanOptionalAction, default=None,
                      help="the paper's affine distortions of training pairs")
    over.add_argument("--distortion-strength", type=float, default=None,
                      help="multiplies the distortions' ranges (rotation, shear, scale's distance "
                      "from 1, translation; 1: the paper's)")
    over.add_argument("--quarter-turns", action=argparse.BooleanOptionalAction, default=None,
                      help="turn each training character by a random number of quarter turns "
                      "(four times the characters to tell apart)")
    over.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                      help="mirror each training character with probability 0.5 (twice the "
                      "characters to tell apart)")
    add_tta_arguments(over, overrides=True)
    return parser


# The ModelConfig fields that have a command-line override.
_MODEL_OVERRIDES = {"image_size", "filters", "dense_units", "mixed_precision", "batch_norm"}


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The run's configuration and folder from the command-line arguments."""
    overrides = {
        name: value
        for name, value in vars(args).items()
        if value is not None
        and name in {f.name for f in dataclasses.fields(TrainConfig)} | _MODEL_OVERRIDES
        and name != "preset"
    }
    if "filters" in overrides:
        overrides["filters"] = tuple(overrides["filters"])
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise SystemExit(f"--resume: no config.json in {run_dir}")
        if overrides:
            raise SystemExit("--resume takes the run's own config.json; drop the overrides")
        return TrainConfig.load(config_path), run_dir
    mixed_precision = overrides.pop("mixed_precision", None)
    if mixed_precision is None:  # the cpu presets compute in bfloat16 where it is fast
        from keras_siamese.model import mixed_precision_by_default

        mixed_precision = mixed_precision_by_default(args.preset)
    try:
        config = preset(args.preset, mixed_precision).replace(**overrides)
    except ValueError as error:  # an override out of range
        raise SystemExit(f"error: {error}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config, Path(args.runs_dir) / f"{stamp}-{config.preset}-seed{config.seed}"


def main(argv: list[str] | None = None) -> dict:
    """Runs the whole pipeline; returns the metrics written to ``metrics.json``."""
    args = _parser().parse_args(argv)
    config, run_dir = resolve_config(args)

    started = time.monotonic()
    precision = "mixed bfloat16" if config.model.mixed_precision else "float32"
    if config.model.mixed_precision and args.mixed_precision is None and not args.resume:
        from keras_siamese.model import fast_bfloat16_hardware

        precision += f" (fast with {fast_bfloat16_hardware()}; --no-mixed-precision for float32)"
    print(f"keras-siamese: preset {config.preset!r} in {precision}, run folder {run_dir}")
    splits, runs = load_data(args.data_dir, args.tfds_dir, config.train_drawers)

    model, trained = train_and_report(config, splits, run_dir)

    metrics = evaluate_and_export(
        model, splits, runs, run_dir, way=config.way, seed=config.seed,
        export_dir=None if args.no_export else args.export_dir, model_name=args.model_name,
        tta_views=config.tta_views, tta_symmetries=config.tta_symmetries,
    )  # fmt: skip
    metrics.update(trained)
    write_metrics(metrics, run_dir, started)
    epochs = " + ".join(str(n) for n in metrics.get("member_epochs", [metrics.get("epochs")]))
    print(summary(metrics) + f"\nTrained {epochs} epochs in {trained['train_seconds'] / 60:.1f} min; "
          f"total {metrics['total_seconds'] / 60:.1f} min\nRun folder: {run_dir}")
    return metrics


def train_and_report(config: TrainConfig, splits, run_dir: Path) -> tuple[keras.Model, dict]:
    """Trains one network (``training.train``) or ``config.members`` (``training.train_members``).

    Draws the learning curves into each run folder. Returns the model (the
    ensemble of the members for ``members > 1``, see ``ensemble_report``) and
    the training figures for ``metrics.json``: the best validation one-shot
    accuracy, the epochs trained (per member for an ensemble) and
    ``train_seconds``, the time spent training (for an ensemble, its members'
    training, not its validation scoring).
    """
    from keras_siamese import plots, training
    from keras_siamese.model import build_ensemble

    started = time.monotonic()
    if config.members == 1:
        model, history = training.train(config, splits, run_dir)
        train_seconds = time.monotonic() - started
        plots.plot_learning_curves(history, run_dir / "learning_curves.png")
        return model, dict(
            best_val_one_shot_accuracy=max(history.get(training.VAL_METRIC, [float("nan")])),
            epochs=len(history.get("loss", [])),
            train_seconds=round(train_seconds, 1),
        )
    members = training.train_members(config, splits, run_dir)
    train_seconds = time.monotonic() - started
    model = build_ensemble([member for _, member, _ in members])
    trained = ensemble_report(
        model, [member_dir for member_dir, _, _ in members], splits["validation"], run_dir,
        val_tasks=config.val_tasks, seed=config.seed,
    )  # fmt: skip
    for member_dir, _, history in members:
        plots.plot_learning_curves(history, member_dir / "learning_curves.png")
    trained["member_epochs"] = [len(history.get("loss", [])) for _, _, history in members]
    trained["train_seconds"] = round(train_seconds, 1)
    return model, trained


def load_data(data_dir: str | None, tfds_dir: str | None, train_drawers: int | None = None):
    """The paper's split of Omniglot and Lake's runs; a data problem ends the command with its message."""
    from keras_siamese import data

    try:
        omniglot = data.load_omniglot(data_dir, tfds_dir)
        runs = data.load_lake_runs(data_dir)
    except data.OmniglotDataError as error:
        raise SystemExit(f"error: {error}") from None
    splits = (
        data.paper_split(omniglot) if train_drawers is None
        else data.paper_split(omniglot, train_drawers)
    )  # fmt: skip
    print(", ".join(f"{name}: {len(split):,} images" for name, split in splits.items()))
    return splits, runs


def ensemble_report(
    ensemble: keras.Model, sources: list[str | Path], validation: OmniglotImages, folder: Path,
    *, val_tasks: int, seed: int,
) -> dict:  # fmt: skip
    """Saves an ensemble (``model.build_ensemble``) in ``folder`` and scores it on validation.

    Writes ``folder/best.keras`` and ``folder/members.json`` (``sources``: the
    members' run folders or ``.keras`` files), and scores the ensemble and each
    member on the same ``val_tasks`` validation tasks, drawn with ``seed + 2`` as
    training draws them: the figure to choose an ensemble by, the test alphabets
    unseen. Returns ``val_one_shot_accuracy`` and ``member_val_one_shot_accuracy``.
    """
    from keras_siamese import evaluation

    ensemble.save(Path(folder) / "best.keras")
    (Path(folder) / "members.json").write_text(
        json.dumps([str(Path(source).resolve()) for source in sources], indent=2)
    )
    tasks = evaluation.within_alphabet_tasks(validation, val_tasks, seed=seed + 2)
    val, members_val = evaluation.ensemble_accuracy(ensemble, tasks)
    print(f"Validation one-shot ({len(tasks)} tasks): ensemble {val:.1%}; members "
          + ", ".join(f"{accuracy:.1%}" for accuracy in members_val))
    return {"val_one_shot_accuracy": val, "member_val_one_shot_accuracy": members_val}


def evaluate_and_export(
    model, splits, runs, run_dir: Path, *, way: int, seed: int,
    export_dir: str | Path | None, model_name: str = "siamese",
    tta_views: int = TTA_VIEWS, tta_symmetries: int = TTA_SYMMETRIES,
) -> dict:  # fmt: skip
    """The standard report of a trained model (a Siamese model or an ensemble).

    ``evaluation.evaluate`` on the test split and Lake's runs (with the MNIST
    transfer where MNIST is available), a sheet of scored trials in
    ``run_dir/one_shot_tasks.png``, and, unless ``export_dir`` is None, a new
    SavedModel version scored on Lake's runs as a TF Serving client would
    (``lake_runs_accuracy[_tta]_saved_model``). Test-time augmentation, in the
    report and in the export's ``one_shot_tta`` signatures, averages
    ``tta_views`` views cycling through ``tta_symmetries`` symmetries.
    """
    from keras_siamese import data, evaluation, export, plots

    try:
        mnist = data.load_mnist_test()
    except (data.MnistDataError, OSError) as error:  # offline without a local copy: skip it
        print(f"MNIST transfer skipped: {error}")
        mnist = None
    metrics = evaluation.evaluate(
        model, splits["test"], runs, way=way, seed=seed, mnist=mnist,
        views=tta_views, symmetries=tta_symmetries,
    )  # fmt: skip
    lake = evaluation.lake_tasks(runs)
    plots.plot_task_sheet(
        lake, evaluation.SiameseScorer(model)(lake), path=Path(run_dir) / "one_shot_tasks.png"
    )
    if export_dir is not None:
        target = export.export_saved_model(
            model, export_dir, model_name, views=tta_views, symmetries=tta_symmetries
        )
        metrics["saved_model"] = str(target)
        # The headline figures, as a TF Serving client gets them: the exported model,
        # sent each run's PNG files.
        for key, augmented in (("", False), ("_tta", True)):
            scores = evaluation.saved_model_lake_scores(target, runs, augmented=augmented)
            metrics[f"lake_runs_accuracy{key}_saved_model"] = evaluation.accuracy(scores, lake)
    return metrics


def write_metrics(metrics: dict, run_dir: Path, started: float) -> None:
    """Adds the total time and peak memory since ``started``, and the machine, and writes
    ``run_dir/metrics.json``."""
    from keras_siamese.model import describe_machine

    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    # ru_maxrss is in KiB on Linux: the peak resident memory of the whole process.
    metrics["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    metrics["machine"] = describe_machine()
    (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))


def summary(metrics: dict) -> str:
    """The report of ``evaluate_and_export`` (and ``write_metrics``) as lines of text."""
    return (
        f"\nLake's 20 runs, 20-way one-shot: {metrics['lake_runs_accuracy']:.1%}; "
        f"with test-time augmentation: {metrics['lake_runs_accuracy_tta']:.1%} "
        f"(pixel 1-NN baseline: {metrics['lake_runs_1nn']:.1%})\n"
        f"Koch within-alphabet 20-way, test alphabets: {metrics['koch_test_accuracy']:.1%} "
        f"({metrics['koch_test_accuracy_tta']:.1%} with test-time augmentation); "
        f"verification: {metrics['verification_accuracy']:.1%}\n"
        + (f"MNIST 10-way one-shot, no retraining: {metrics['mnist_10way_accuracy']:.1%} "
           f"({metrics['mnist_10way_accuracy_tta']:.1%} with test-time augmentation; "
           f"pixel 1-NN: {metrics['mnist_10way_1nn']:.1%})\n" if "mnist_10way_accuracy" in metrics else "")
        + (f"Through the SavedModel: {metrics['lake_runs_accuracy_saved_model']:.1%}, "
           f"{metrics['lake_runs_accuracy_tta_saved_model']:.1%} with test-time augmentation "
           "(one_shot_tta)\n" if "saved_model" in metrics else "")
        + f"Peak memory: {metrics['peak_memory_mib']} MiB"
        + (f"\nSavedModel: {metrics['saved_model']}" if "saved_model" in metrics else "")
    )


if __name__ == "__main__":
    main()
