"""Which epoch to keep: model selection on 320 validation tasks against more, measured.

    python experiments/model_selection.py [--out DIR] [fit's options, e.g. --seed 2]

Trains one network as ``python -m keras_siamese.fit`` with the same options would (the same
configuration, bfloat16 where fit picks it, the same pairs and weights for a seed), keeping every
epoch's weights, then scores every epoch on:

- the first 320 (the paper's number), 960 and 3,200 of 3,200 within-alphabet validation tasks
  drawn with the run's seed + 2: the column of the preset's own number (3,200 for ``cpu``) holds
  the tasks that training selected on, so it repeats the run's own ``val_one_shot_accuracy``;
- 3,200 other validation tasks (seed + 1002), the judge of the selection rules: validation
  alphabets only, so a rule is chosen without looking at the test alphabets;
- Lake's 20 runs, plain and with test-time augmentation, reported, not used to choose.

Prints a row per epoch and the epoch each rule keeps (the best on 320, 960 or 3,200 tasks, or
the last) with its scores, and draws the curves into ``DIR/model_selection_seedS.png``. With
``--keep-weights`` it also saves each rule's kept epoch as ``DIR/seedS-epochE.keras``, whose full
report ``python -m keras_siamese.ensemble DIR/seedS-epochE.keras --seed S`` prints. Training takes
as long as the preset's (about 20 minutes for ``cpu``); scoring adds about 2 s per epoch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_siamese import evaluation, fit, reporting, training  # noqa: E402
from keras_siamese.config import TTA_VIEWS  # noqa: E402

SELECTION_TASKS = (320, 960, 3200)  # besides the preset's own number (20 for smoke)
JUDGE_SEED_OFFSET = 1002  # far from the seeds training uses (seed, seed + 1, seed + 2)


def prefix_accuracies(scores: np.ndarray, tasks: evaluation.OneShotTasks, sizes) -> list[float]:
    """Accuracy on the first ``n`` tasks for each ``n`` in ``sizes``.

    ``within_alphabet_tasks`` draws task after task from one generator, so its first
    ``n`` of 3,200 tasks are the ``n`` tasks it draws when asked for ``n``.
    """
    correct = scores.argmax(axis=1) == tasks.answers
    return [float(correct[:n].mean()) for n in sizes]


def _best_of(n: int) -> str:
    """The name of the rule that keeps the best epoch on the first ``n`` tasks."""
    return f"best of {n:,} tasks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/model_selection"),
                        help="folder for the chart and kept weights (default: %(default)s)")
    parser.add_argument("--keep-weights", action="store_true",
                        help="keep every epoch's weights in OUT/weights-seedS (about 15 MB an "
                        "epoch for cpu) and each rule's kept epoch as OUT/seedS-epochE.keras")
    args, fit_args = parser.parse_known_args()
    fit_options = fit.build_parser().parse_args(fit_args)
    config, _ = fit.resolve_config(fit_options)
    precision = "mixed bfloat16" if config.model.mixed_precision else "float32"
    print(f"preset {config.preset!r}, seed {config.seed}, {precision}")
    splits, runs = reporting.load_data(fit_options.data_dir, fit_options.tfds_dir, config.train_drawers)
    validation = splits["validation"]
    sizes = sorted({config.val_tasks, *SELECTION_TASKS})
    selection = evaluation.within_alphabet_tasks(
        validation, max(sizes), way=config.way, seed=config.seed + 2
    )
    judge = evaluation.within_alphabet_tasks(
        validation, 3200, way=config.way, seed=config.seed + JUDGE_SEED_OFFSET
    )
    lake = evaluation.lake_tasks(runs)

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        if args.keep_weights:
            weights = args.out / f"weights-seed{config.seed}"
        weights.mkdir(parents=True)
        every_epoch = keras.callbacks.ModelCheckpoint(
            str(weights / "epoch{epoch:03d}.weights.h5"), save_weights_only=True
        )
        training.train(config, splits, Path(tmp) / "run", extra_callbacks=[every_epoch])
        logged = training.read_history(Path(tmp) / "run" / "log.csv")[training.VAL_METRIC]
        model, fitted = training.compiled_models(config)
        fitted.optimizer.build(fitted.trainable_variables)  # the files hold its state too
        header = " ".join(f"{f'val {n}':>9}" for n in sizes)
        print(f"{'epoch':>5} {header} {'judge':>7} {'Lake':>6} {'Lake TTA':>9}")
        rows = []
        # The scorers use the model's layers, so each epoch's loaded weights score.
        scorer = evaluation.SiameseScorer(model)
        tta_scorer = evaluation.SiameseScorer(model, views=TTA_VIEWS)
        epoch_files = sorted(weights.iterdir())
        for epoch, path in enumerate(epoch_files, start=1):
            fitted.load_weights(path)
            row = prefix_accuracies(scorer(selection), selection, sizes) + [
                evaluation.accuracy(scorer(judge), judge),
                evaluation.accuracy(scorer(lake), lake),
                evaluation.accuracy(tta_scorer(lake), lake),
            ]
            rows.append(row)
            print(f"{epoch:>5} " + " ".join(f"{v:>9.1%}" for v in row[: len(sizes)])
                  + f" {row[-3]:>7.1%} {row[-2]:>6.1%} {row[-1]:>9.1%}", flush=True)
    table = np.array(rows)
    judge_column = len(sizes)
    # The preset's column must repeat what training logged: the same tasks, the same weights.
    own = table[:, sizes.index(config.val_tasks)]
    mismatch = np.abs(own - np.array(logged[: len(table)])).max()
    print(f"largest difference from the run's own val_one_shot_accuracy: {mismatch:.4f}")

    print(f"\n{'rule':<22} {'epoch':>5} {'judge':>7} {'Lake':>6} {'Lake TTA':>9}")
    kept = {_best_of(n): int(table[:, i].argmax()) for i, n in enumerate(sizes)}
    kept["last epoch"] = len(table) - 1
    kept["best on the judge"] = int(table[:, judge_column].argmax())
    for rule, index in kept.items():
        judge_acc, lake_acc, tta = table[index, judge_column:]
        print(f"{rule:<22} {index + 1:>5} {judge_acc:>7.1%} {lake_acc:>6.1%} {tta:>9.1%}")
    if args.keep_weights:
        for index in sorted(set(kept.values())):
            fitted.load_weights(epoch_files[index])
            model.save(args.out / f"seed{config.seed}-epoch{index + 1}.keras")
        print(f"Kept epochs' models: {args.out}/seed{config.seed}-epoch*.keras")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"model_selection_seed{config.seed}.png"
    title = f"Model selection, preset {config.preset}, seed {config.seed}, {precision}"
    plot(table, sizes, kept, title, path)
    print(f"\nChart: {path}")


def plot(table: np.ndarray, sizes: list[int], kept: dict[str, int], title: str, path: Path) -> None:
    """Per-epoch curves (validation columns solid, Lake's runs dashed), the kept epochs marked."""
    epochs = np.arange(1, len(table) + 1)
    fig, ax = plt.subplots(figsize=(9, 5))
    names = [f"validation, {n:,} tasks" for n in sizes] + [
        "validation, 3,200 other tasks (judge)", "Lake's runs (test)", "Lake's runs with TTA (test)"
    ]
    for column, name in enumerate(names):
        ax.plot(epochs, 100 * table[:, column], label=name,
                linestyle="--" if column > len(sizes) else "-", linewidth=1.2)
    by_epoch: dict[int, list[str]] = {}
    for n in sizes:
        by_epoch.setdefault(kept[_best_of(n)] + 1, []).append(f"{n:,}")
    for epoch, counts in by_epoch.items():
        ax.axvline(epoch, color="grey", linewidth=0.6)
        # y in axes fraction, so the label stays inside whatever range the curves span.
        ax.annotate(f"kept on {' and '.join(counts)} tasks", (epoch, 0.3), rotation=90,
                    xycoords=ax.get_xaxis_transform(), fontsize=8, va="bottom", ha="right")
    ax.set(xlabel="epoch", ylabel="20-way one-shot accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.62, 0.02))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
