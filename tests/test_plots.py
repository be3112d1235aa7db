"""Tests for keras_siamese.plots: every picture is a non-empty PNG of the figure's size.

Real Omniglot images and Lake's runs, scored by a tiny untrained network.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import AxesImage
from matplotlib.text import Text
from PIL import Image

from keras_siamese import evaluation, plots
from keras_siamese.model import build_siamese, twin_of
from keras_siamese.pairs import pair_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plots.plt.close("all")


@pytest.fixture(scope="module")
def model(small_config):
    return build_siamese(small_config(paper_init=False))


@pytest.fixture(scope="module")
def lake(lake_runs):
    return evaluation.lake_tasks(lake_runs)


@pytest.fixture(scope="module")
def lake_scores(model, lake):
    return evaluation.SiameseScorer(model)(lake)


def check_png(path, fig, min_size=(600, 150), max_size=(2400, 3000)) -> Image.Image:
    """The file is a PNG of the figure's size at plots.DPI, within sensible bounds, not blank."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5000
    width, height = fig.get_size_inches() * plots.DPI
    with Image.open(path) as image:
        image.load()
    assert image.format == "PNG"
    # Matplotlib rounds fractional pixels down or to nearest depending on the size.
    assert abs(image.width - width) <= 1 and abs(image.height - height) <= 1, image.size
    assert min_size[0] <= image.width <= max_size[0], image.size
    assert min_size[1] <= image.height <= max_size[1], image.size
    grey = np.asarray(image.convert("L"))
    assert grey.min() < 64 and grey.max() > 200  # ink and paper, not a blank canvas
    return image


def test_learning_curves(tmp_path):
    history = {"epoch": [0, 1, 2], "loss": [0.7, 0.6, 0.5], "val_loss": [0.7, 0.65, 0.6],
               "accuracy": [0.5, 0.6, 0.7], "val_one_shot_accuracy": [0.1, 0.2, 0.3]}  # fmt: skip
    fig = plots.plot_learning_curves(history, tmp_path / "curves.png")
    image = check_png(tmp_path / "curves.png", fig)
    assert image.size == (11 * plots.DPI, 4 * plots.DPI)  # 11 x 4 inches


def test_alphabet_grid(omniglot, tmp_path):
    fig = plots.plot_alphabet_grid(omniglot["background"], characters=12, path=tmp_path / "g.png")
    image = check_png(tmp_path / "g.png", fig)
    assert image.width > image.height  # 12 characters across, 10 alphabets down
    picked = plots.plot_alphabet_grid(
        omniglot["evaluation"], ["Tengwar", "Atlantean"], characters=5, drawer=20
    )
    assert picked.get_size_inches()[1] < fig.get_size_inches()[1] / 3  # two rows only


def test_drawers(omniglot, tmp_path):
    fig = plots.plot_drawers(omniglot["background"], path=tmp_path / "d.png")
    check_png(tmp_path / "d.png", fig)
    assert "20 drawers" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="not in the split"):
        plots.plot_drawers(omniglot["background"], character=99999)


def test_pairs(splits, tmp_path):
    ds = pair_dataset(splits["train"], image_size=28, batch_size=16, steps=1, seed=0)
    fig = plots.plot_pairs(next(iter(ds)), n=8, path=tmp_path / "p.png")
    check_png(tmp_path / "p.png", fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles.count("same (y=1)") == 4 and titles.count("different (y=0)") == 4


def test_distortions(splits, tmp_path):
    fig = plots.plot_distortions(splits["train"].images[0], n=15, path=tmp_path / "x.png")
    check_png(tmp_path / "x.png", fig)
    pictures = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(pictures) == 16 and pictures[0].shape == (105, 105)
    # The copies are distorted: most differ from the original.
    assert sum(not np.allclose(p, pictures[0]) for p in pictures[1:]) >= 10


def test_one_shot_task(lake, lake_scores, tmp_path):
    fig = plots.plot_one_shot_task(lake, lake_scores, 0, path=tmp_path / "t.png")
    image = check_png(tmp_path / "t.png", fig)
    assert np.allclose(image.size, np.multiply(plots.TASK_PANEL_SIZE, plots.DPI), atol=1)
    right = int(np.argmax(lake_scores[0])) == lake.answers[0]
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert ("right: picked" if right else "wrong: picked") in texts
    assert "run01, trial 1" in texts
    # Pixel 1-NN scores are minus distances: drawn too.
    pixel_scores = evaluation.pixel_scorer(lake)
    pixel = plots.plot_one_shot_task(lake, pixel_scores, 7, path=tmp_path / "n.png")
    check_png(tmp_path / "n.png", pixel)


def test_task_sheet(lake, lake_scores, tmp_path):
    fig = plots.plot_task_sheet(lake, lake_scores, path=tmp_path / "s.png")
    image = check_png(tmp_path / "s.png", fig)
    width, height = plots.TASK_PANEL_SIZE
    expected = (plots.DPI * width, plots.DPI * (plots.SHEET_HEADING + 6 * height))
    assert np.allclose(image.size, expected, atol=1)
    mistakes = evaluation.hardest_mistakes(lake_scores, lake, 2)
    two = plots.plot_task_sheet(lake, lake_scores, mistakes, title="mistakes")
    assert two.get_size_inches()[1] == pytest.approx(plots.SHEET_HEADING + 2 * height)


def test_accuracy_by_group(lake, lake_scores, splits, model, tmp_path):
    scores = {"network": lake_scores, "pixel 1-NN": evaluation.pixel_scorer(lake)}
    fig = plots.plot_accuracy_by_group(lake, scores, title="Lake", path=tmp_path / "a.png")
    check_png(tmp_path / "a.png", fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"run{r:02d}" for r in range(1, 21)]
    assert len(ax.patches) == 40  # two bars per run
    koch = evaluation.within_alphabet_tasks(splits["test"], 40, seed=0)
    by_alphabet = plots.plot_accuracy_by_group(
        koch, {"network": evaluation.SiameseScorer(model)(koch)}, path=tmp_path / "b.png"
    )
    check_png(tmp_path / "b.png", by_alphabet)
    assert len(by_alphabet.axes[0].get_yticklabels()) == 10


def test_filters(model, tmp_path):
    fig = plots.plot_filters(model, path=tmp_path / "f.png")
    check_png(tmp_path / "f.png", fig)
    assert sum(1 for ax in fig.axes if ax.images) == twin_of(model).get_layer("conv1").filters


def test_embeddings(omniglot, model, tmp_path):
    evaluation_split = omniglot["evaluation"]
    characters = np.unique(evaluation_split.character)[:6]
    mask = np.isin(evaluation_split.character, characters)
    images = evaluation_split.images[mask]
    embeddings = evaluation.SiameseScorer(model).embed(images)
    fig = plots.plot_embeddings(
        {"pixels": images, "embeddings": embeddings}, evaluation_split.character[mask],
        images=images, title="six characters", path=tmp_path / "e.png",
    )  # fmt: skip
    check_png(tmp_path / "e.png", fig)
    assert len(fig.axes) == 2
    assert all(len(ax.collections) == 6 for ax in fig.axes)  # one scatter per character
    legend = plots.plot_embeddings({"e": embeddings}, evaluation_split.character[mask])
    assert legend.axes[0].get_legend() is not None


def test_pca_2d_finds_the_main_directions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    coords, explained = plots.pca_2d(x)
    assert coords.shape == (200, 2)
    np.testing.assert_allclose(np.abs(np.corrcoef(coords[:, 0], x[:, 0])[0, 1]), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.abs(np.corrcoef(coords[:, 1], x[:, 1])[0, 1]), 1.0, atol=1e-2)
    assert explained[0] > explained[1] > 0 and explained.sum() > 0.99


def test_plot_accuracy_versus_time(tmp_path):
    path = tmp_path / "accuracy_vs_time.png"
    fig = plots.plot_accuracy_versus_time(
        {
            "cpu": {"validation": ([2.0, 4.0, 6.5], [0.25, 0.4, 0.5]), "test": ([6.5], [0.7])},
            "ensemble": {"test": ([13.0], [0.8])},
        },
        targets={"paper": 0.92, "goal": 0.88},
        ylim=(0.2, 1.0),
        path=path,
    )
    check_png(path, fig)
    (ax,) = fig.axes
    # One colour per run, one mark per kind of figure (the same for every run).
    lines = ax.get_lines()
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[1].get_marker() == lines[2].get_marker() != lines[0].get_marker()
    labels = [[t.get_text() for t in legend.texts] for legend in fig.legends]
    assert ["cpu", "ensemble"] in labels
    # The reference lines are named in the legend, told apart by their dashes.
    assert ["validation, per epoch", "test (end)", "paper", "goal"] in labels
    paper, goal = lines[-2:]
    assert paper.get_ydata()[0] == 0.92 and goal.get_ydata()[0] == 0.88
    assert paper.get_linestyle() != goal.get_linestyle()
    assert ax.get_ylim() == (0.2, 1.0)


def test_roc(splits, model, tmp_path):
    """Held-out Omniglot pairs scored by the network and by pixel distance."""
    split = splits["test"]
    left, right, same = evaluation.verification_pairs(split, 400, seed=0)
    network = evaluation.pair_scores(model, split.images, left, right)
    pixels = split.images.reshape(len(split.images), -1).astype(np.float32) / 255.0
    pixel = -np.linalg.norm(pixels[left] - pixels[right], axis=1)
    curves = {"Siamese network": evaluation.roc(network, same),
              "pixel 1-NN": evaluation.roc(pixel, same)}  # fmt: skip
    threshold = evaluation.choose_threshold(network, same, target_far=0.2)
    fig = plots.plot_roc(curves, tmp_path / "roc.png", threshold=threshold)
    check_png(tmp_path / "roc.png", fig)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().texts]
    for name, curve in curves.items():
        assert f"{name}: AUC {curve['roc_auc']:.3f}, EER {curve['eer']:.1%}" in labels
    assert any(label.startswith("EER line") for label in labels)
    # The operating point sits at the threshold's error rates on the network's pairs.
    (point,) = [line for line in ax.get_lines() if line.get_label().startswith("threshold")]
    far, frr = evaluation.error_rates(network, same, threshold)
    assert far <= 0.2
    np.testing.assert_allclose([point.get_xdata()[0], point.get_ydata()[0]], [far, 1 - frr])
    assert f"false accept {far:.1%}, false reject {frr:.1%}" in point.get_label()
    # Without a threshold: no operating point.
    plain = plots.plot_roc(curves)
    assert not [line for line in plain.axes[0].get_lines() if "threshold" in line.get_label()]


def test_k_shot_tasks_are_drawn_with_their_best_shots(splits, tmp_path):
    tasks = evaluation.class_tasks(splits["test"], 6, way=20, shots=3, seed=0)
    scores = evaluation.pixel_scorer(tasks)
    fig = plots.plot_task_sheet(tasks, scores, path=tmp_path / "k.png")
    check_png(tmp_path / "k.png", fig)
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "6 3-shot tasks" in texts and "best of 3 shots shown" in texts
    one = plots.plot_one_shot_task(tasks, scores, 0)
    strip = max((image.get_array() for image in one.findobj(AxesImage)), key=lambda a: a.shape[1])
    # Each class is drawn with its nearest shot to the query, the one that scores the class.
    best = np.argmax(scores[0].reshape(20, 3), axis=1)
    assert set(best) != {0}  # not merely the first shots
    best_shots = tasks.candidates[0].reshape(20, 3)[np.arange(20), best]
    pictures = [plots._picture(tasks.images[c]) for c in best_shots]
    np.testing.assert_array_equal(strip, plots._mosaic([pictures], 20, pad=8))
    by_group = plots.plot_accuracy_by_group(tasks, {"pixel 1-NN": scores})
    assert by_group.axes[0].get_xlabel() == "20-way 3-shot accuracy (6 tasks)"


def test_tasks_of_few_candidates_fit_their_panel(splits, tmp_path):
    """A 5-way task's pictures are square and stay below the heading, above their bars."""
    tasks = evaluation.class_tasks(splits["test"], 3, way=5, seed=0)
    scores = evaluation.pixel_scorer(tasks)
    fig = plots.plot_one_shot_task(tasks, scores, 0, path=tmp_path / "5.png")
    check_png(tmp_path / "5.png", fig)
    pictures = [image for image in fig.findobj(AxesImage) if image.axes.get_title() != "query"]
    assert len(pictures) == 5
    for k, picture in enumerate(pictures):
        box = picture.get_window_extent()
        assert box.width == pytest.approx(box.height, rel=0.02)
        assert box.x0 < picture.axes.transData.transform((k, 0))[0] < box.x1
        assert box.y1 < 0.9 * fig.bbox.height


def test_colour_images_are_drawn_in_grey():
    red, green, blue = (np.full((4, 5), v, np.uint8) for v in (30, 60, 90))
    picture = plots._picture(np.stack([red, green, blue], axis=-1))
    assert picture.shape == (4, 5)
    np.testing.assert_allclose(picture, 60 / 255)
    np.testing.assert_allclose(plots._picture(red[..., None]), 30 / 255)
