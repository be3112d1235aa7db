"""The steps the commands share: load the data, train, score, export and report.

Omniglot runs are reported on Koch et al.'s test alphabets and Lake's runs
(``evaluate_and_export``); a run on a folder of the user's own classes on its test classes
(``load_folder``, ``fit_to_folder``, ``folder_report``).

``python -m keras_siamese.fit`` runs them all; ``python -m keras_siamese.ensemble`` scores and
exports networks already trained; the scripts in ``experiments/`` and ``bench/`` reuse them.
Each step prints what it did and returns the figures that go into ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from keras_siamese import files
from keras_siamese.config import TTA_SYMMETRIES, TTA_VIEWS, TrainConfig

if TYPE_CHECKING:  # annotations only
    import keras
    import numpy as np

    from keras_siamese.data import OmniglotImages
    from keras_siamese.distribute import Distribution
    from keras_siamese.evaluation import OneShotTasks


def train_and_report(
    config: TrainConfig, splits, run_dir: Path, distribution: Distribution | None = None
) -> tuple[keras.Model, dict]:
    """Trains one network (``training.train``) or ``config.members`` (``training.train_members``).

    ``distribution``: the ``tf.distribute`` strategy to train under; a worker that is not the
    chief returns its model as trained and no figures, and writes nothing.

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
    chief = distribution is None or distribution.chief
    if config.members == 1:
        model, history = training.train(config, splits, run_dir, distribution=distribution)
        if not chief:
            return model, {}
        train_seconds = time.monotonic() - started
        plots.plot_learning_curves(history, run_dir / "learning_curves.png")
        return model, dict(
            best_val_one_shot_accuracy=max(history.get(training.VAL_METRIC, [float("nan")])),
            epochs=len(history.get("loss", [])),
            train_seconds=round(train_seconds, 1),
        )
    members = training.train_members(config, splits, run_dir, distribution=distribution)
    if not chief:
        return members[-1][1], {}
    train_seconds = time.monotonic() - started
    model = build_ensemble([member for _, member, _ in members])
    trained = ensemble_report(
        model, [member_dir for member_dir, _, _ in members], splits["validation"], run_dir,
        val_tasks=config.val_tasks, seed=config.seed, way=config.way,
        folder_of_images=config.images is not None,
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
    *, val_tasks: int, seed: int, way: int = 20, folder_of_images: bool = False,
) -> dict:  # fmt: skip
    """Saves an ensemble (``model.build_ensemble``) in ``folder`` and scores it on validation.

    Writes ``folder/best.keras`` and ``folder/members.json`` (``sources``: the
    members' run folders or ``.keras`` files), and scores the ensemble and each
    member on the same ``val_tasks`` ``way``-way validation tasks, drawn with ``seed + 2`` as
    training draws them (``training.validation_tasks``; ``folder_of_images``: a folder's): the figure to choose an ensemble by, the test alphabets
    unseen. Returns ``val_one_shot_accuracy`` and ``member_val_one_shot_accuracy``.
    """
    from keras_siamese import evaluation, training

    files.save_model_atomically(ensemble, Path(folder) / "best.keras")
    files.write_text_atomically(
        Path(folder) / "members.json",
        json.dumps([str(Path(source).resolve()) for source in sources], indent=2),
    )
    tasks = training.validation_tasks(
        validation, tasks=val_tasks, way=way, seed=seed, folder=folder_of_images
    )
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
    import tensorflow as tf

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
        served = tf.saved_model.load(str(target))
        for key, augmented in (("", False), ("_tta", True)):
            scores = evaluation.saved_model_lake_scores(served, runs, augmented=augmented)
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
    from keras_siamese.hardware import describe_machine, peak_memory_mib

    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    metrics["peak_memory_mib"] = round(peak_memory_mib())
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


# One-shot tasks and verification pairs drawn from a folder's test (and validation) classes.
FOLDER_TEST_TASKS = 1000
FOLDER_VERIFICATION_PAIRS = 2000


def load_folder(
    config: TrainConfig, run_dir: Path, split_file: str | Path | None = None,
    cache_dir: str | Path | None = None, write: bool = True,
) -> dict[str, OmniglotImages]:  # fmt: skip
    """A folder of the user's classes (``config.images``), split by class into train,
    validation and test.

    The split is the run folder's ``split.json`` when it has one (a resumed run), else
    ``split_file`` (``--split``), else a new one drawn with ``config.seed``
    (``data.split_classes``); it is written into the run folder, so a test class never
    reaches training or model selection, and the same split can be reused (``write=False``:
    a worker that is not the chief draws the same split and writes nothing). A data problem
    ends the command with its message.
    """
    from keras_siamese.data import folder as image_folder

    recorded = Path(run_dir) / "split.json"
    try:
        images = image_folder.read_image_folder(
            config.images, image_size=config.model.image_size, channels=config.model.channels,
            cache_dir=cache_dir,
        )  # fmt: skip
        if recorded.is_file():
            split = image_folder.read_split(recorded, images)
        elif split_file is not None:
            split = image_folder.read_split(split_file, images)
        else:
            split = image_folder.split_classes(images, seed=config.seed)
    except image_folder.ImageFolderError as error:
        raise SystemExit(f"error: {error}") from None
    if write and not recorded.is_file():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        image_folder.write_split(split, recorded)
    splits = image_folder.apply_split(images, split)
    print(", ".join(
        f"{name}: {len(split[name])} classes, {len(images_of):,} images"
        for name, images_of in splits.items()
    ) + f" (split by {split['by']}: {recorded})")  # fmt: skip
    return splits


def fit_to_folder(
    config: TrainConfig, splits: dict[str, OmniglotImages], told: frozenset[str] = frozenset()
) -> TrainConfig:
    """``config`` with the settings that a folder's size bounds fitted to it.

    N of the N-way tasks is at most the classes of the validation and of the test split; K of
    the K-shot tasks leaves a query in at least N test classes; an all-pairs batch takes at
    most the classes and images per class that training has. A setting given on the command
    line (named in ``told``) that the folder cannot meet ends the command instead.
    """
    import numpy as np

    def classes(split: OmniglotImages) -> np.ndarray:
        return np.unique(split.character)

    def class_sizes(split: OmniglotImages) -> np.ndarray:
        return np.unique(split.character, return_counts=True)[1]

    test_sizes = np.sort(class_sizes(splits["test"]))[::-1]
    most_way = min(len(classes(splits["validation"])), len(test_sizes))
    changes: dict[str, int] = {"way": min(config.way, most_way)}
    # The N-th largest test class must hold K shots and a query.
    changes["shots"] = max(1, min(config.shots, int(test_sizes[changes["way"] - 1]) - 1))
    if config.pair_sampling != "random":
        from keras_siamese.training import batch_shape_within

        shape = {"alphabets": config.batch_alphabets, "characters": config.batch_characters,
                 "drawers": config.batch_drawers}  # fmt: skip
        changes.update(
            {f"batch_{name}": value for name, value in batch_shape_within(splits["train"], shape).items()}
        )
    fitted = {name: value for name, value in changes.items() if getattr(config, name) != value}
    refused = sorted(set(fitted) & told)
    if refused:
        raise SystemExit(
            "error: the folder is too small for "
            + ", ".join(f"--{name.replace('_', '-')} {getattr(config, name)}" for name in refused)
            + " (it allows " + ", ".join(f"{name} {fitted[name]}" for name in refused) + ")"
        )
    if fitted:
        print("Fitted to the folder: " + ", ".join(
            f"{name} {getattr(config, name)} -> {value}" for name, value in fitted.items()
        ))  # fmt: skip
    return config.replace(**fitted)


def folder_report(
    model: keras.Model, splits: dict[str, OmniglotImages], run_dir: Path, config: TrainConfig, *,
    export_dir: str | Path | None, model_name: str = "siamese",
) -> dict:  # fmt: skip
    """The report of a network trained on a folder, on its test classes, never seen in training.

    * ``config.way``-way one-shot and ``config.shots``-shot accuracy on
      ``FOLDER_TEST_TASKS`` tasks, plain and with test-time augmentation, and the pixel 1-NN
      baseline on the same tasks through the same code;
    * verification on ``FOLDER_VERIFICATION_PAIRS`` balanced same/different pairs: ROC AUC
      and equal error rate, the network's and the pixel baseline's;
    * the decision threshold for "none of these", chosen on pairs of the validation classes
      (``config.target_far``, else the equal error rate), with its false-accept and
      false-reject rates on the test pairs;
    * ``run_dir/roc.png`` and ``run_dir/one_shot_tasks.png``;
    * unless ``export_dir`` is None, a new SavedModel version holding the threshold, scored
      on the one-shot tasks as a TF Serving client would (``test_1shot_accuracy_saved_model``).
    """
    import numpy as np

    from keras_siamese import evaluation, plots

    test, seed, way = splits["test"], config.seed, config.way
    scorer = evaluation.SiameseScorer(model)
    tta = evaluation.SiameseScorer(
        model, views=config.tta_views, seed=seed, symmetries=config.tta_symmetries
    )
    metrics: dict = {"test_way": way, "test_shots": config.shots, "test_tasks": FOLDER_TEST_TASKS}
    shots = sorted({1, config.shots})
    one_shot = None
    for k in shots:
        tasks = evaluation.class_tasks(test, FOLDER_TEST_TASKS, way=way, shots=k, seed=seed + 3)
        scores = scorer(tasks)
        if k == 1:
            one_shot, one_shot_scores = tasks, scores
        metrics[f"test_{k}shot_accuracy"] = evaluation.accuracy(scores, tasks)
        metrics[f"test_{k}shot_accuracy_tta"] = evaluation.accuracy(tta(tasks), tasks)
        metrics[f"test_{k}shot_1nn"] = evaluation.accuracy(evaluation.pixel_scorer(tasks), tasks)

    def pair_scores(split: OmniglotImages, pair_seed: int, *, pixel: bool = False):
        left, right, same = evaluation.verification_pairs(
            split, FOLDER_VERIFICATION_PAIRS, seed=pair_seed
        )
        network = evaluation.pair_scores(model, split.images, left, right)
        if not pixel:
            return network, same
        # A pair is a one-candidate task to the pixel baseline.
        pairs = evaluation.OneShotTasks(
            images=split.images, queries=left, candidates=right[:, None],
            answers=np.zeros(len(left), np.int64), groups=np.full(len(left), ""),
        )  # fmt: skip
        return network, same, evaluation.pixel_scorer(pairs)[:, 0]

    val_scores, val_same = pair_scores(splits["validation"], seed + 4)
    # A target that only rejecting everything meets gives an infinite threshold: 1 rejects
    # all but perfect matches.
    threshold = min(1.0, evaluation.choose_threshold(val_scores, val_same, config.target_far))
    network_scores, test_same, pixel_scores = pair_scores(test, seed + 5, pixel=True)
    network = evaluation.roc(network_scores, test_same)
    pixels = evaluation.roc(pixel_scores, test_same)
    far, frr = evaluation.error_rates(network_scores, test_same, threshold)
    metrics.update(
        verification_roc_auc=network["roc_auc"], verification_eer=network["eer"],
        verification_roc_auc_1nn=pixels["roc_auc"], verification_eer_1nn=pixels["eer"],
        threshold=threshold, test_false_accept_rate=far, test_false_reject_rate=frr,
    )  # fmt: skip
    plots.plot_roc(
        {"Siamese network": network, "pixel 1-NN": pixels}, Path(run_dir) / "roc.png",
        threshold=threshold,
    )  # fmt: skip
    plots.plot_task_sheet(one_shot, one_shot_scores, path=Path(run_dir) / "one_shot_tasks.png")
    if export_dir is not None:
        target = export_once(
            model, Path(run_dir), export_dir, model_name, views=config.tta_views,
            symmetries=config.tta_symmetries, threshold=threshold,
        )  # fmt: skip
        metrics["saved_model"] = str(target)
        metrics["test_1shot_accuracy_saved_model"] = evaluation.accuracy(
            saved_model_scores(target, one_shot), one_shot
        )
    return metrics


def saved_model_scores(saved_model: str | Path, tasks: OneShotTasks) -> np.ndarray:
    """Scores of one-shot tasks through a SavedModel's ``one_shot`` signature, one request a
    task with its images as pixel arrays, as a TF Serving client sends them."""
    import numpy as np
    import tensorflow as tf

    one_shot = tf.saved_model.load(str(saved_model)).signatures["one_shot"]
    images = tasks.images.astype(np.float32)
    return np.stack([
        one_shot(queries=images[[query]], support=images[candidates])["scores"].numpy()[0]
        for query, candidates in zip(tasks.queries, tasks.candidates)
    ])  # fmt: skip


def folder_summary(metrics: dict) -> str:
    """The report of ``folder_report`` (and ``write_metrics``) as lines of text."""
    way, lines = metrics["test_way"], ["", "Test classes, never seen in training or model selection:"]
    for k in sorted({1, metrics["test_shots"]}):
        lines.append(
            f"  {way}-way {k}-shot: {metrics[f'test_{k}shot_accuracy']:.1%}; with test-time "
            f"augmentation: {metrics[f'test_{k}shot_accuracy_tta']:.1%} (pixel 1-NN baseline: "
            f"{metrics[f'test_{k}shot_1nn']:.1%}; chance {1 / way:.1%})"
        )
    lines += [
        f"  Verification: ROC AUC {metrics['verification_roc_auc']:.3f}, equal error rate "
        f"{metrics['verification_eer']:.1%} (pixel 1-NN: {metrics['verification_roc_auc_1nn']:.3f}, "
        f"{metrics['verification_eer_1nn']:.1%})",
        f"  Threshold for \"none of these\": {metrics['threshold']:.3f} (chosen on validation "
        f"classes): false accepts {metrics['test_false_accept_rate']:.1%}, false rejects "
        f"{metrics['test_false_reject_rate']:.1%} of test pairs",
    ]
    if "saved_model" in metrics:
        lines.append(
            f"  Through the SavedModel: {way}-way 1-shot "
            f"{metrics['test_1shot_accuracy_saved_model']:.1%}"
        )
    lines.append(f"Peak memory: {metrics['peak_memory_mib']} MiB")
    if "saved_model" in metrics:
        lines.append(f"SavedModel: {metrics['saved_model']}")
    return "\n".join(lines)
