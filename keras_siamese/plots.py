"""Pictures of runs and results, shared by the command line and the notebook.

Every function draws onto a new matplotlib figure, saves it when given a path,
and returns the figure. The Agg backend is used where there is no display.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_learning_curves(history: dict[str, list[float]], path: str | Path | None = None):
    """Loss and accuracies per epoch: training and validation pairs, and the
    one-shot validation accuracy that drives early stopping."""
    epochs = [int(e) + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "training pairs"), ("val_loss", "validation pairs")):
        if key in history:
            ax_loss.plot(epochs, history[key], marker=".", label=label)
    ax_loss.set(title="Loss (cross-entropy + L2)", xlabel="epoch", ylabel="loss")
    ax_loss.legend()
    for key, label in (
        ("accuracy", "verification, training pairs"),
        ("val_accuracy", "verification, validation pairs"),
        ("val_one_shot_accuracy", "20-way one-shot, validation"),
    ):
        if key in history:
            ax_acc.plot(epochs, history[key], marker=".", label=label)
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
