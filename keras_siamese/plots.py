"""Pictures of the data, the model and its results, shared by the command line and the notebook.

Every function draws onto a new matplotlib figure, saves it as a PNG of the figure's size at
:data:`DPI` when given a path, and returns the figure. The Agg backend is used where there is no
display.

Images may be given in either polarity the project uses: uint8 Omniglot pixels (255 = paper,
as loaded by :mod:`keras_siamese.data`) or float model inputs (1 = ink, as made by
:func:`keras_siamese.preprocessing.to_model_input`); both are drawn as dark ink on white paper.
"""

from __future__ import annotations

import math
import os
from itertools import cycle
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure, SubFigure  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from keras_siamese.data import OmniglotImages  # noqa: E402
from keras_siamese.evaluation import (  # noqa: E402
    OneShotTasks,
    accuracy,
    accuracy_by_group,
    best_shots,
    class_scores,
)
from keras_siamese.model import twin_of  # noqa: E402

DPI = 120
"""Resolution of saved PNGs: a figure of ``w x h`` inches is saved as ``w*DPI x h*DPI`` pixels."""

RIGHT = "#2ca02c"  # green: the right answer, a right pick
WRONG = "#d62728"  # red: a wrong pick
SAME = "#1f77b4"
DIFFERENT = "#ff7f0e"
SERIES = ("#1f77b4", "#a0a0a0", "#ff7f0e", "#9467bd")  # the network first, then baselines


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig


def _picture(image) -> np.ndarray:
    """A 2-D float image with paper = 1 and ink = 0, from either polarity (see module doc).

    A colour image ``(H, W, 3)`` is drawn in grey, the mean of its channels.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[-1] == 1 else image.mean(axis=-1).astype(image.dtype)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return 1.0 - image.astype(np.float32)


def _show(ax, image, frame: str = "#cccccc", linewidth: float = 0.8, linestyle: str = "-"):
    """Draws one character image on `ax` with a thin frame and no ticks."""
    ax.imshow(_picture(image), cmap="gray", vmin=0.0, vmax=1.0)
    _frame(ax, frame, linewidth, linestyle)


def _frame(ax, colour: str, linewidth: float = 0.8, linestyle: str = "-"):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(linewidth)
        spine.set_linestyle(linestyle)


def _mosaic(rows: Sequence[Sequence[np.ndarray]], columns: int, pad: int = 4) -> np.ndarray:
    """Tiles rows of same-sized pictures into one image, padding short rows with paper."""
    height, width = rows[0][0].shape
    out = np.ones((len(rows) * (height + pad) + pad, columns * (width + pad) + pad), np.float32)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row[:columns]):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            out[top : top + height, left : left + width] = tile
    return out


def _blank_grid(rows: int, columns: int, figsize: tuple[float, float]):
    """A figure with a ``rows x columns`` array of axes, all hidden until drawn into."""
    fig, axes = plt.subplots(rows, columns, figsize=figsize, layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _pretty(name: str) -> str:
    return str(name).replace("_", " ")


def _shots(tasks: OneShotTasks) -> str:
    """``"one-shot"``, or ``"5-shot"`` for tasks of several shots."""
    return f"{'one' if tasks.shots == 1 else tasks.shots}-shot"


def _kind(tasks: OneShotTasks) -> str:
    """``"20-way one-shot"``, or ``"5-way 5-shot"`` for tasks of several shots."""
    return f"{tasks.way}-way {_shots(tasks)}"


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------


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
    ax_acc.legend(loc="best")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------


def plot_alphabet_grid(
    split: OmniglotImages,
    alphabets: Sequence[str] | None = None,
    *,
    max_alphabets: int = 10,
    characters: int = 12,
    drawer: int | None = None,
    path: str | Path | None = None,
):
    """A grid of alphabets (rows) and their first characters (columns), all by one drawer.

    Args:
        split: the images to draw from.
        alphabets: the rows; by default up to ``max_alphabets`` spread over the split's
            alphabets in alphabetical order.
        characters: characters shown per alphabet.
        drawer: whose drawings to show; by default the split's lowest drawer number.
    """
    every = [str(a) for a in np.unique(split.alphabet)]
    if alphabets is None:
        picks = np.linspace(0, len(every) - 1, min(max_alphabets, len(every))).round()
        alphabets = [every[int(i)] for i in picks]
    drawer = int(split.drawer.min()) if drawer is None else drawer
    rows, labels = [], []
    for name in alphabets:
        in_alphabet = split.alphabet == name
        shown = np.flatnonzero(in_alphabet & (split.drawer == drawer))[:characters]
        rows.append([_picture(split.images[i]) for i in shown])
        labels.append(f"{_pretty(name)} ({len(np.unique(split.character[in_alphabet]))})")
    pad = 6
    mosaic = _mosaic(rows, characters, pad)
    tile = split.images.shape[1] + pad
    # Fixed margins: room on the left for long alphabet names, on top for the title.
    margin_left, margin_top, margin = 2.6, 0.45, 0.1
    width = margin_left + 0.62 * characters + margin
    height = margin_top + 0.62 * len(rows) * mosaic.shape[0] / (len(rows) * tile) + margin
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes(
        (margin_left / width, margin / height, 1 - (margin_left + margin) / width,
         1 - (margin_top + margin) / height)
    )  # fmt: skip
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
    _frame(ax, "#cccccc")
    ax.set_yticks(pad / 2 + tile * (np.arange(len(rows)) + 0.5), labels=labels)
    ax.tick_params(axis="y", length=0)
    ax.set_title(
        f"{len(rows)} of {len(every)} alphabets (characters in each): the first "
        f"{characters} characters, as drawn by drawer {drawer}",
        fontsize=11,
    )
    return _save(fig, path)


def plot_drawers(
    split: OmniglotImages, character: int | None = None, *, path: str | Path | None = None
):
    """One character as drawn by each of its drawers (Omniglot has 20 per character).

    Args:
        split: the images to draw from.
        character: the character id; by default the split's first.
    """
    character = int(split.character[0]) if character is None else character
    shown = np.flatnonzero(split.character == character)
    if not len(shown):
        raise ValueError(f"character {character} is not in the split")
    shown = shown[np.argsort(split.drawer[shown], kind="stable")]
    columns = min(10, len(shown))
    rows = math.ceil(len(shown) / columns)
    fig, axes = _blank_grid(rows, columns, (1.15 * columns, 0.5 + 1.3 * rows))
    for ax, i in zip(axes.ravel(), shown):
        ax.set_axis_on()
        _show(ax, split.images[i])
        ax.set_xlabel(f"drawer {split.drawer[i]}", fontsize=9)
    fig.suptitle(
        f"Character {character} of {_pretty(split.alphabet[shown[0]])}, "
        f"once by each of {len(shown)} drawers"
    )
    return _save(fig, path)


def plot_pairs(batch, n: int = 8, *, path: str | Path | None = None):
    """Same and different pairs from :func:`keras_siamese.pairs.pair_dataset`, labelled.

    Args:
        batch: one element of the dataset, ``({"left": x1, "right": x2}, y)``.
        n: pairs shown, half same and half different when the batch has both.
    """
    inputs, labels = batch
    left, right = np.asarray(inputs["left"]), np.asarray(inputs["right"])
    labels = np.asarray(labels).reshape(-1)
    same = list(np.flatnonzero(labels > 0.5))
    different = list(np.flatnonzero(labels <= 0.5))
    order = []
    while len(order) < min(n, len(labels)):
        for pool in (same, different):
            if pool and len(order) < n:
                order.append(pool.pop(0))
    fig, axes = plt.subplots(
        2, len(order), figsize=(0.4 + 1.25 * len(order), 3.2), layout="constrained",
        squeeze=False,
    )  # fmt: skip
    for column, i in enumerate(order):
        is_same = labels[i] > 0.5
        colour = SAME if is_same else DIFFERENT
        _show(axes[0, column], left[i], colour, 2.0)
        _show(axes[1, column], right[i], colour, 2.0)
        axes[0, column].set_title(
            f"{'same' if is_same else 'different'} (y={labels[i]:.0f})", color=colour, fontsize=10
        )
    axes[0, 0].set_ylabel("left")
    axes[1, 0].set_ylabel("right")
    size = left.shape[1]
    fig.suptitle(f"Training pairs as the network sees them ({size}x{size} pixels)")
    return _save(fig, path)


def plot_distortions(
    image,
    n: int = 15,
    *,
    image_size: int = 105,
    seed: int = 0,
    distortion=None,
    columns: int = 8,
    path: str | Path | None = None,
):
    """One image and ``n`` random affine distortions of it (Koch et al., section 3.4).

    Args:
        image: one ``(H, W, 1)`` image in either polarity.
        n: distorted copies.
        image_size: side the image is resized to before distorting (as in training).
        seed: seed of the distortions.
        distortion: the ranges, by default the paper's
            (:class:`keras_siamese.augmentation.Distortion`).
    """
    import tensorflow as tf

    from keras_siamese.augmentation import Distortion, distort
    from keras_siamese.preprocessing import to_model_input

    image = np.asarray(image)
    if image.dtype != np.uint8:  # a model input: back to Omniglot polarity for to_model_input
        image = np.round(255.0 * (1.0 - image)).astype(np.uint8)
    x = to_model_input(image[np.newaxis], image_size)
    distorted = distort(
        tf.repeat(x, n, axis=0), tf.constant([seed, 0], tf.int64), distortion or Distortion()
    )
    tiles = [x[0].numpy()] + list(distorted.numpy())
    rows = math.ceil(len(tiles) / columns)
    fig, axes = _blank_grid(rows, columns, (1.2 * columns, 0.55 + 1.25 * rows))
    for k, (ax, tile) in enumerate(zip(axes.ravel(), tiles)):
        ax.set_axis_on()
        _show(ax, tile, "black" if k == 0 else "#cccccc", 2.0 if k == 0 else 0.8)
    axes[0, 0].set_title("original", fontsize=10)
    fig.suptitle(
        f"{n} random distortions: rotation, shear, scale and shift, each with probability "
        f"{(distortion or Distortion()).probability:g}",
        fontsize=11,
    )
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# One-shot tasks
# ---------------------------------------------------------------------------------------------

TASK_PANEL_SIZE = (12.0, 2.9)
"""Inches of one task as drawn by :func:`plot_one_shot_task` and on a :func:`plot_task_sheet`."""
SHEET_HEADING = 0.45
"""Inches of the heading above the tasks of a :func:`plot_task_sheet`."""
TASK_TILE_MAX = 0.55
"""Inches, at most, of each candidate's picture in a task (a 20-way task's are smaller)."""


def _draw_task(fig: Figure | SubFigure, tasks: OneShotTasks, scores: np.ndarray, index: int):
    """Draws task ``index`` into ``fig`` (a figure or subfigure of ``TASK_PANEL_SIZE`` inches).

    A K-shot task is drawn with each class's best shot and the class's score (its best shot's).
    """
    width, height = TASK_PANEL_SIZE
    way = tasks.way
    answer = int(tasks.answers[index])
    task_scores = np.asarray(class_scores(scores[index], tasks), np.float64)
    pick = int(np.argmax(task_scores))
    right = pick == answer

    # The query on the left; the candidates in a strip, each above its own bar.
    query_side = 1.25
    left = (0.25 + query_side + 0.75) / width
    strip_width = 0.99 - left
    slot = strip_width * width / way  # inches per candidate
    # Pictures at most TASK_TILE_MAX inches high, so that a strip of few candidates stays
    # below the heading; `box` is the share of its slot each picture takes.
    tile = min(slot, TASK_TILE_MAX)
    box = tile / slot
    strip_bottom = 0.68
    ax_query = fig.add_axes((0.25 / width, 0.22, query_side / width, query_side / height))
    _show(ax_query, tasks.images[tasks.queries[index]], "black", 1.5)
    ax_query.set_title("query", fontsize=10)

    ax_strip = fig.add_axes((left, strip_bottom, strip_width, tile / height))
    pictures = [_picture(tasks.images[c]) for c in best_shots(scores, tasks)[index]]
    if box == 1.0:  # one mosaic of the candidates, side by side
        ax_strip.imshow(
            _mosaic([pictures], way, pad=8), cmap="gray", vmin=0.0, vmax=1.0,
            extent=(-0.5, way - 0.5, 1.0, 0.0), aspect="auto",
        )  # fmt: skip
    else:  # each picture square, centred in its slot above its bar
        for k, picture in enumerate(pictures):
            ax_strip.imshow(
                _mosaic([[picture]], 1, pad=8), cmap="gray", vmin=0.0, vmax=1.0,
                extent=(k - 0.5 * box, k + 0.5 * box, 1.0, 0.0), aspect="auto",
            )  # fmt: skip
        ax_strip.set(xlim=(-0.5, way - 0.5), ylim=(1.0, 0.0))
    _frame(ax_strip, "white")
    for k, colour, style in ((answer, RIGHT, "-"), (pick, RIGHT if right else WRONG, "-")):
        ax_strip.add_patch(
            Rectangle((k - 0.47 * box, 0.03), 0.94 * box, 0.94, fill=False, edgecolor=colour,
                      linewidth=2.5, linestyle=style)
        )  # fmt: skip

    ax_bars = fig.add_axes((left, 0.16, strip_width, strip_bottom - 0.22))
    colours = ["#b0b0b0"] * way
    colours[answer] = RIGHT
    colours[pick] = RIGHT if right else WRONG
    ax_bars.set_xlim(-0.5, way - 0.5)
    ax_bars.set_xticks(np.arange(way), labels=[str(k + 1) for k in range(way)], fontsize=8)
    ax_bars.tick_params(axis="x", length=0)
    if task_scores.min() >= 0.0 and task_scores.max() <= 1.0:  # probabilities
        ax_bars.bar(np.arange(way), task_scores, width=0.7, color=colours)
        ax_bars.set_ylim(0.0, 1.0)
        ax_bars.set_ylabel("p(same)" if tasks.shots == 1 else "mean p(same)", fontsize=9)
    else:  # other scores (e.g. minus a distance): bars rise from just below the lowest
        spread = float(np.ptp(task_scores)) or 1.0
        floor = float(task_scores.min()) - 0.1 * spread
        ax_bars.bar(np.arange(way), task_scores - floor, bottom=floor, width=0.7, color=colours)
        ax_bars.set_ylim(floor, float(task_scores.max()) + 0.05 * spread)
        ax_bars.set_ylabel("score" if tasks.shots == 1 else "mean score", fontsize=9)
    ax_bars.tick_params(axis="y", labelsize=8)
    ax_bars.grid(axis="y", alpha=0.3)
    ax_bars.spines[["top", "right"]].set_visible(False)

    group = tasks.groups[index]
    trial = int(np.sum(tasks.groups[:index] == group)) + 1
    verdict = (
        f"right: picked candidate {pick + 1}"
        if right
        else f"wrong: picked candidate {pick + 1} (red), the answer is {answer + 1} (green)"
    )
    shown = "" if tasks.shots == 1 else f" (best of {tasks.shots} shots shown)"
    title = f"{_pretty(group)}, trial {trial}" if group else f"Trial {trial}"  # a flat folder
    heading = fig.text(left, 0.92, f"{title}{shown}:", fontsize=11, va="center")
    fig.add_artist(
        Annotation(
            verdict, xy=(1.0, 0.5), xycoords=heading, xytext=(8, 0), textcoords="offset points",
            va="center", fontsize=11, color=RIGHT if right else WRONG, fontweight="bold",
        )
    )  # fmt: skip


def plot_one_shot_task(
    tasks: OneShotTasks, scores: np.ndarray, index: int, *, path: str | Path | None = None
):
    """One ``way``-way task: the query, the candidates, their scores as bars, the pick marked.

    The highest-scoring candidate is the pick: framed and coloured green when it is the
    query's character, red otherwise (the right one then framed in green). A K-shot task
    shows each class's best shot, above its score, the class's (``class_scores``).

    Args:
        tasks: the tasks (see :mod:`keras_siamese.evaluation`).
        scores: ``(T, way * shots)`` scores of every task, higher meaning "same character".
        index: the task to draw.
    """
    fig = plt.figure(figsize=TASK_PANEL_SIZE)
    _draw_task(fig, tasks, scores, index)
    return _save(fig, path)


def plot_task_sheet(
    tasks: OneShotTasks,
    scores: np.ndarray,
    indices: Sequence[int] | None = None,
    *,
    n: int = 6,
    title: str | None = None,
    path: str | Path | None = None,
):
    """Several tasks drawn as :func:`plot_one_shot_task` draws one, stacked on one sheet.

    Args:
        tasks: the tasks.
        scores: ``(T, way * shots)`` scores of every task.
        indices: the tasks to draw; by default ``n`` spread evenly over all tasks.
        title: a heading; by default how many of the drawn tasks were right.
    """
    if indices is None:
        indices = np.linspace(0, len(tasks) - 1, min(n, len(tasks))).round().astype(int)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no tasks to draw")
    picks = np.argmax(class_scores(scores, tasks), axis=1)
    right = sum(int(picks[i] == tasks.answers[i]) for i in indices)
    width, height = TASK_PANEL_SIZE
    fig = plt.figure(figsize=(width, SHEET_HEADING + height * len(indices)))
    top, *panels = fig.subfigures(
        len(indices) + 1, 1, height_ratios=[SHEET_HEADING] + [height] * len(indices)
    )
    top.text(
        0.01, 0.4,
        title or f"{len(indices)} {_shots(tasks)} tasks: {right} right, "
        f"{len(indices) - right} wrong",
        fontsize=13, fontweight="bold", va="center",
    )  # fmt: skip
    for panel, i in zip(panels, indices):
        _draw_task(panel, tasks, scores, i)
    return _save(fig, path)


def plot_accuracy_by_group(
    tasks: OneShotTasks,
    scores: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
    path: str | Path | None = None,
):
    """Accuracy per group of tasks (alphabet or run), one bar per scorer, with chance marked.

    Args:
        tasks: the tasks; their ``groups`` are the rows.
        scores: scorer name -> ``(T, way * shots)`` scores, e.g. the network and the pixel 1-NN
            baseline; the first is drawn in blue.
        title: a heading; by default the task's way.
    """
    groups = [str(g) for g in np.unique(tasks.groups)]
    per_group = {name: accuracy_by_group(s, tasks) for name, s in scores.items()}
    count = len(scores)
    fig, ax = plt.subplots(
        figsize=(8.0, 1.6 + 0.17 * len(groups) * max(2, count)), layout="constrained"
    )
    bar = 0.8 / count
    for j, (name, values) in enumerate(per_group.items()):
        offset = (j - (count - 1) / 2) * bar
        ax.barh(
            np.arange(len(groups)) + offset, [values[g] for g in groups], height=0.92 * bar,
            color=SERIES[j % len(SERIES)],
            label=f"{name}: {accuracy(scores[name], tasks):.1%} overall",
        )  # fmt: skip
    ax.axvline(1.0 / tasks.way, color="black", linestyle="--", linewidth=1, zorder=3,
               label=f"chance ({1.0 / tasks.way:.0%})")  # fmt: skip
    ax.set_yticks(np.arange(len(groups)), labels=[_pretty(g) for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{_kind(tasks)} accuracy ({len(tasks)} tasks)")
    ax.set_title(title or f"{_kind(tasks)} accuracy per group")
    fig.legend(loc="outside lower center", ncols=count + 1, fontsize=9, frameon=False)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def plot_roc(
    curves: Mapping[str, Mapping], path: str | Path | None = None, *, threshold: float | None = None
):
    """ROC curves of verification scores: true-accept against false-accept rate.

    Each curve's legend entry gives its AUC and equal error rate, which is marked where the
    curve crosses the EER line (false-accept rate = false-reject rate).

    Args:
        curves: name -> a dict from :func:`keras_siamese.evaluation.roc`, e.g. the Siamese
            network's and the pixel 1-NN baseline's; the first is drawn in blue.
        threshold: an accept threshold (``evaluation.choose_threshold``) whose operating point
            is marked on the first curve, with its false-accept and false-reject rates.
    """
    fig, ax = plt.subplots(figsize=(6.0, 6.0), layout="constrained")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, label="chance")
    ax.plot([0, 1], [1, 0], color="black", linestyle=":", linewidth=1,
            label="EER line (false accept = false reject)")  # fmt: skip
    for j, (name, curve) in enumerate(curves.items()):
        colour = SERIES[j % len(SERIES)]
        ax.plot(curve["fpr"], curve["tpr"], color=colour, linewidth=1.8,
                label=f"{name}: AUC {curve['roc_auc']:.3f}, EER {curve['eer']:.1%}")  # fmt: skip
        ax.plot(curve["eer"], 1.0 - curve["eer"], "o", color=colour, markersize=5)
    if threshold is not None and curves:
        first = next(iter(curves.values()))
        # The last curve point whose threshold is at or above `threshold`: pairs scored at
        # least `threshold` are accepted, as at that point.
        point = int(np.flatnonzero(np.asarray(first["thresholds"]) >= threshold)[-1])
        far, tar = first["fpr"][point], first["tpr"][point]
        ax.plot(far, tar, "D", color="black", markerfacecolor="white", markersize=8,
                markeredgewidth=1.5, zorder=4,
                label=f"threshold {threshold:.3g}: false accept {far:.1%}, "
                f"false reject {1.0 - tar:.1%}")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal",
           xlabel="false-accept rate (different pairs accepted)",
           ylabel="true-accept rate (same pairs accepted)",
           title="Verification ROC on held-out classes")  # fmt: skip
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# What the network learned
# ---------------------------------------------------------------------------------------------


def plot_filters(model: keras.Model, *, columns: int = 16, path: str | Path | None = None):
    """The first convolution's filters of a Siamese model's twin, one tile each.

    Each filter is scaled to its own range: light pixels are its largest weights. A filter
    that has learned to detect strokes shows oriented light and dark bands.
    """
    conv = twin_of(model).get_layer("conv1")
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float32)  # (k, k, 1, F)
    size, filters = kernel.shape[0], kernel.shape[-1]
    columns = min(columns, filters)
    rows = math.ceil(filters / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(0.2 + 0.75 * columns, 0.6 + 0.75 * rows), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax in axes.ravel():
        ax.set_axis_off()
    for f, ax in zip(range(filters), axes.ravel()):
        weights = kernel[:, :, 0, f]
        ax.imshow(weights, cmap="gray", interpolation="nearest")
        ax.set_axis_on()
        _frame(ax, "#888888", 0.5)
    fig.suptitle(f"conv1: {filters} filters of {size}x{size} (light = large weights)")
    return _save(fig, path)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects ``(N, d)`` features onto their first two principal components.

    Returns:
        ``(N, 2)`` coordinates and the fraction of the variance each component explains.
    """
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    total = float(np.sum(s**2)) or 1.0
    coords = u[:, :2] * s[:2]
    if coords.shape[1] < 2:  # one feature only
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords.astype(np.float32), np.pad(s[:2] ** 2 / total, (0, max(0, 2 - len(s))))


def plot_embeddings(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    images: np.ndarray | None = None,
    title: str | None = None,
    path: str | Path | None = None,
):
    """2-D PCA projections of features, one panel per feature space, coloured by character.

    Args:
        features: panel title -> ``(N, ...)`` features of the same ``N`` images, e.g. raw
            pixels and the twin's embeddings.
        labels: ``(N,)`` character of each image.
        images: ``(N, H, W, 1)`` the images; when given, each character's first image is
            drawn at the centre of its points (in place of a legend).
        title: a heading.
    """
    labels = np.asarray(labels)
    classes = list(dict.fromkeys(labels.tolist()))
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colours = {c: palette(k % palette.N) for k, c in enumerate(classes)}
    fig, axes = plt.subplots(
        1, len(features), figsize=(5.4 * len(features), 5.4), squeeze=False, layout="constrained"
    )
    for ax, (name, values) in zip(axes[0], features.items()):
        coords, explained = pca_2d(values)
        for c in classes:
            mine = labels == c
            ax.scatter(*coords[mine].T, s=16, color=colours[c], alpha=0.75, label=str(c))
            if images is not None:
                first = int(np.flatnonzero(mine)[0])
                thumbnail = OffsetImage(_picture(images[first]), cmap="gray", zoom=0.32,
                                        norm=Normalize(0.0, 1.0))  # fmt: skip
                ax.add_artist(
                    AnnotationBbox(
                        thumbnail, coords[mine].mean(axis=0), frameon=True, pad=0.1,
                        bboxprops={"edgecolor": colours[c], "linewidth": 2},
                    )
                )  # fmt: skip
        ax.set_xlabel(f"principal component 1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"principal component 2 ({explained[1]:.0%} of variance)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if images is None:
            ax.legend(title="character", fontsize=8, ncols=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_versus_time(
    runs: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    targets: Mapping[str, float] | None = None,
    ylim: tuple[float, float] = (0.0, 1.0),
    path: str | Path | None = None,
) -> Figure:
    """One-shot accuracy against training time: one colour per run, one mark per kind of figure.

    Args:
        runs: run label to its series, each a name and ``(minutes, accuracy)``: e.g.
            ``{"validation": (epoch ends, accuracies), "Lake's runs": ([end], [accuracy])}``.
            A series of several points is drawn as a line, a single point as a mark
            whose shape depends on the series name (the same name, the same shape).
        targets: label to accuracy, drawn as horizontal reference lines (the paper's figure).
        ylim: the accuracy axis's range (narrower to tell close figures apart).
    """
    from matplotlib.lines import Line2D

    # Constrained layout keeps the legends beside the axes inside the figure.
    fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors * 2
    shapes: dict[str, str] = {}
    for (label, series), colour in zip(runs.items(), palette):
        for name, (minutes, values) in series.items():
            if len(minutes) > 1:
                ax.plot(minutes, values, marker=".", color=colour)
            else:
                shape = shapes.setdefault(name, "D*^svP"[len(shapes) % 6])
                ax.plot(minutes, values, marker=shape, markersize=8, linestyle="none",
                        color=colour, markeredgecolor="black", markeredgewidth=0.4)
    # Reference lines told apart by their dashes in the legend, not labelled on the axes,
    # where the labels would cover marks near them.
    dashes = cycle(("--", ":", "-.", (0, (5, 1, 1, 1))))
    references = [
        ax.axhline(value, color="#555555", linestyle=style, linewidth=0.9, label=label)
        for (label, value), style in zip((targets or {}).items(), dashes)
    ]
    ax.set(xlabel="training time (minutes)", ylabel="20-way one-shot accuracy", ylim=ylim)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    # Beside the axes (inside they would cover the curves): which colour is which run,
    # and below it which mark is which figure.
    colours = [Line2D([], [], color=c, marker="s", linestyle="none", label=label)
               for label, c in zip(runs, palette)]
    marks = [Line2D([], [], color="grey", marker=".", label="validation, per epoch")] + [
        Line2D([], [], color="grey", marker=shape, linestyle="none", label=f"{name} (end)")
        for name, shape in shapes.items()
    ] + references
    fig.legend(handles=colours, loc="outside right upper", fontsize=7, frameon=False)
    fig.legend(handles=marks, loc="outside right lower", fontsize=7, frameon=False)
    return _save(fig, path)
