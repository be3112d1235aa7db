"""Validation per epoch of groups of runs: one-shot accuracy and pair loss, seed by seed.

    python experiments/validation_per_epoch.py --group LABEL RUN_DIR [RUN_DIR ...] \
        [--group LABEL RUN_DIR ...] [--out docs/figures/validation_per_epoch.png]

Each group (one option, several seeds) is drawn in one colour: a thin line per run and a thick
line for the mean over its runs, of the validation one-shot accuracy (the model-selection
metric) and of the loss on validation pairs, from each run folder's ``log.csv``. It prints the
mean one-shot accuracy of each group per epoch. For runs too short to show on a time axis, such
as those of the ``folder`` preset; ``accuracy_vs_time.py`` draws Omniglot runs against minutes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_siamese import training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", nargs="+", action="append", required=True,
                        metavar=("LABEL", "RUN_DIR"), help="a legend entry and its run folders")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/validation_per_epoch.png"))
    args = parser.parse_args()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (label, *runs) in zip(colours, args.group):
        if not runs:
            parser.error(f"--group {label!r} names no run folder")
        histories = [training.read_history(Path(run) / "log.csv") for run in runs]
        epochs = min(len(h[training.VAL_METRIC]) for h in histories)
        x = np.arange(1, epochs + 1)
        means = {}
        for ax, key in ((acc_ax, training.VAL_METRIC), (loss_ax, "val_loss")):
            values = np.array([h[key][:epochs] for h in histories])
            means[key] = values.mean(axis=0)
            for run_values in values:
                ax.plot(x, run_values, color=colour, linewidth=0.6, alpha=0.4)
            ax.plot(x, means[key], color=colour, linewidth=2,
                    label=f"{label} (mean of {len(runs)})")
        print(f"{label}: " + " ".join(f"{value:.3f}" for value in means[training.VAL_METRIC]))
    acc_ax.set(xlabel="epoch", ylabel="one-shot accuracy, validation classes",
               title="Validation one-shot accuracy")
    loss_ax.set(xlabel="epoch", ylabel="binary cross-entropy", title="Loss on validation pairs")
    acc_ax.legend(loc="lower right")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
