"""The steps the commands share: load the data, train, score, export and report.

``python -m keras_siamese.fit`` runs them all; ``python -m keras_siamese.ensemble`` scores and
exports networks already trained; the scripts in ``experiments/`` and ``bench/`` reuse them.
Each step prints what it did and returns the figures that go into ``metrics.json``.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keras_siamese import files
from keras_siamese.config import TTA_SYMMETRIES, TTA_VIEWS, TrainConfig

if TYPE_CHECKING:  # annotations only
    import keras

    from keras_siamese.data import OmniglotImages


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

    files.save_model_atomically(ensemble, Path(folder) / "best.keras")
    files.write_text_atomically(
        Path(folder) / "members.json",
        json.dumps([str(Path(source).resolve()) for source in sources], indent=2),
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
    from keras_siamese import data, evaluation, plots

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
        target = export_once(
            model, Path(run_dir), export_dir, model_name, views=tta_views, symmetries=tta_symmetries
        )
        metrics["saved_model"] = str(target)
        # The headline figures, as a TF Serving client gets them: the exported model,
        # sent each run's PNG files.
        for key, augmented in (("", False), ("_tta", True)):
            scores = evaluation.saved_model_lake_scores(target, runs, augmented=augmented)
            metrics[f"lake_runs_accuracy{key}_saved_model"] = evaluation.accuracy(scores, lake)
    return metrics


class RefusedModelError(ValueError):
    """A trained network that cannot be right, which is therefore neither reported nor exported."""


# Fewer validation tasks than this cannot tell a weak network from one at chance.
MIN_TASKS_TO_JUDGE = 100


def check_trained(model: keras.Model, best_val: float | None, way: int, tasks: int) -> None:
    """Refuses a network that cannot be right before anything is scored or exported.

    A network is at chance when its best one-shot validation accuracy on ``tasks`` tasks is
    within three standard errors of 1/way, where a network that tells nothing apart scores
    (on the ``cpu`` presets' 3,200 tasks, under 6.2% for 20-way; the paper's 320, under
    8.7%). With fewer than ``MIN_TASKS_TO_JUDGE`` tasks only NaN is refused.

    Raises:
        RefusedModelError: a weight is NaN or infinite (training diverged), the validation
            accuracy is missing or NaN, or the network is at chance.
    """
    import numpy as np

    from keras_siamese.model import non_finite_weights

    bad = sum(count for _, count, _ in non_finite_weights(model))
    if bad:
        raise RefusedModelError(
            f"the trained network has {bad:,} NaN or infinite weights (training diverged); it is "
            "not evaluated or exported. Lower --learning-rate, or check the data."
        )
    if best_val is None or not np.isfinite(best_val):
        raise RefusedModelError(
            f"the one-shot validation accuracy is {best_val}; the network is not evaluated or "
            "exported."
        )
    chance = 1.0 / way
    at_chance = chance + 3.0 * float(np.sqrt(chance * (1.0 - chance) / tasks))
    if tasks >= MIN_TASKS_TO_JUDGE and best_val <= at_chance:
        raise RefusedModelError(
            f"the best one-shot validation accuracy, {best_val:.1%} on {tasks:,} tasks, is "
            f"within chance (1/{way}; {at_chance:.1%} at three standard errors); the network is "
            "not evaluated or exported. Train it longer (--epochs, --steps-per-epoch), or check "
            "the data."
        )


def export_once(
    model: keras.Model, run_dir: Path, export_dir: str | Path, model_name: str, **options
) -> Path:
    """Exports a run's model as one SavedModel version, however often the run is resumed.

    The version is chosen and recorded in ``run_dir/export.json`` before it is written: a run
    resumed after its export reuses that version, and one killed mid-export writes the same
    version again (``export.export_saved_model`` never shows a half-written one).
    """
    from keras_siamese import export

    record = run_dir / "export.json"
    base = Path(export_dir) / model_name
    planned = None
    if record.is_file():
        try:
            planned = Path(json.loads(record.read_text())["saved_model"])
        except (ValueError, KeyError, TypeError) as error:
            raise files.UnreadableFileError(
                f"{record} is not readable ({error}); delete it to export a new version."
            ) from None
        if planned.parent.resolve() == base.resolve() and (planned / "saved_model.pb").is_file():
            print(f"Already exported as {planned}: no new version.")
            return planned
    if planned is None or planned.parent.resolve() != base.resolve() or planned.exists():
        planned = base / str(export.next_version(base))
    files.write_text_atomically(record, json.dumps({"saved_model": str(planned)}, indent=2))
    return export.export_saved_model(
        model, export_dir, model_name, version=int(planned.name), **options
    )


def write_metrics(metrics: dict, run_dir: Path, started: float) -> None:
    """Adds the total time and peak memory since ``started``, and the machine, and writes
    ``run_dir/metrics.json``."""
    from keras_siamese.hardware import describe_machine

    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    # ru_maxrss is in KiB on Linux: the peak resident memory of the whole process.
    metrics["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    metrics["machine"] = describe_machine()
    files.write_text_atomically(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2))


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
