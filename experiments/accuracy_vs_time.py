"""One-shot accuracy against training time, from run folders.

    python experiments/accuracy_vs_time.py RUN_DIR [RUN_DIR ...] [--label TEXT ...] [--ylim LOW HIGH]
        [--out docs/figures/accuracy_vs_time.png]

For each run folder of ``python -m keras_siamese.fit``, plots the validation one-shot accuracy
(the model-selection metric) at the end of each epoch against the training minutes, marks the
final test figures from ``metrics.json`` (Lake's 20 runs, plain and with test-time augmentation;
none for the member folders of an ensemble run), and prints them as a table. A folder of
``python -m keras_siamese.ensemble`` is marked at the training minutes of all its members
together; one of a single member (``ensemble RUN_DIR``: a run scored again, e.g. by newer
evaluation code) is drawn as that run's curve with the ensemble folder's test figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keras_siamese import plots, training
from keras_siamese.config import TrainConfig

LAKE = "Lake's runs, test"
LAKE_TTA = "Lake's runs with TTA, test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/accuracy_vs_time.png"))
    parser.add_argument(
        "--label", action="append", default=[], metavar="TEXT",
        help="legend entry of the n-th run, for the first runs in order (default: preset, "
        "pair sampling and seeds; runs that differ otherwise, e.g. by overrides, need one)",
    )  # fmt: skip
    parser.add_argument("--ylim", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="the accuracy axis's range")
    args = parser.parse_args()
    if len(args.label) > len(args.runs):
        parser.error(f"{len(args.label)} labels for {len(args.runs)} runs")
    labels = args.label + [None] * (len(args.runs) - len(args.label))
    curves = {}
    print(f"{'run':<28} {'epochs':>6} {'minutes':>8} {'best val':>9} {'Lake':>7} {'Lake TTA':>9}")
    for run, label in zip(args.runs, labels):
        if (run / "members.json").is_file():
            _ensemble(run, curves, label)
        else:
            _run(run, run, curves, label)
    plots.plot_accuracy_versus_time(
        curves,
        targets={
            "people (Lake et al. 2015): 95.5%": 0.955,
            "Koch et al. 2015: 92.0%": 0.92,
            "goal in 20 CPU minutes: 88%": 0.88,
        },
        ylim=tuple(args.ylim),
        path=args.out,
    )
    print(f"wrote {args.out}")


def _run(run: Path, scored: Path, curves: dict, label: str | None = None) -> None:
    """Draws a run's validation curve, and marks the test figures in ``scored``'s ``metrics.json``."""
    config = TrainConfig.load(run / "config.json")
    history = training.read_history(run / "log.csv")
    minutes = training.epoch_minutes(run)
    values = history[training.VAL_METRIC][: len(minutes)]
    name = label or f"{config.preset}, {config.pair_sampling} pairs, seed {config.seed}"
    if name in curves:  # the same configuration run again (other code)
        name += f" ({'-'.join(run.name.split('-')[:2])})"
    curves[name] = {"validation": (minutes[: len(values)], values)}
    # A member of an ensemble run has no test figures of its own: its curve only.
    metrics_path = scored / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    figures = {LAKE: metrics.get("lake_runs_accuracy"), LAKE_TTA: metrics.get("lake_runs_accuracy_tta")}
    curves[name].update(
        {kind: ([minutes[-1]], [value]) for kind, value in figures.items() if value is not None}
    )
    print(f"{scored.name:<28} {len(values):>6} {minutes[-1]:>8.1f} {max(values):>9.1%} "
          + " ".join(f"{'-' if v is None else f'{v:.1%}':>{w}}" for v, w in zip(figures.values(), (7, 9))))


def _ensemble(folder: Path, curves: dict, label: str | None = None) -> None:
    """Marks an ensemble's test figures at the sum of its members' training minutes."""
    members = _trained_runs(folder)
    if len(members) == 1:
        _run(members[0], folder, curves, label)
        return
    minutes = sum(training.epoch_minutes(member)[-1] for member in members)
    configs = [TrainConfig.load(member / "config.json") for member in members]
    presets = sorted({config.preset for config in configs})
    seeds = ", ".join(str(seed) for seed in sorted(config.seed for config in configs))
    name = label or f"ensemble of {len(members)} ({'/'.join(presets)}, seeds {seeds})"
    if name in curves:  # the same presets and seeds again (other runs): add the oldest run's date
        name += f" (from {min('-'.join(m.name.split('-')[:2]) for m in members)})"
    metrics = json.loads((folder / "metrics.json").read_text())
    lake, tta = metrics["lake_runs_accuracy"], metrics["lake_runs_accuracy_tta"]
    curves[name] = {LAKE: ([minutes], [lake]), LAKE_TTA: ([minutes], [tta])}
    print(f"{folder.name:<28} {'':>6} {minutes:>8.1f} {metrics['val_one_shot_accuracy']:>9.1%} "
          f"{lake:>7.1%} {tta:>9.1%}")


def _trained_runs(folder: Path) -> list[Path]:
    """The run folders that trained an ensemble's networks; a member may be an ensemble itself."""
    if not (folder / "members.json").is_file():
        return [folder]
    members = json.loads((folder / "members.json").read_text())
    return [run for member in members for run in _trained_runs(Path(member))]


if __name__ == "__main__":
    main()
