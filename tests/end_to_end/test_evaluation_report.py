"""The whole evaluation report (`evaluation.evaluate`) and `python -m keras_siamese.evaluation`."""

from __future__ import annotations

import pytest

from keras_siamese import evaluation
from keras_siamese.config import TTA_SYMMETRIES
from keras_siamese.model import build_siamese

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_split(splits):
    return splits["test"]


@pytest.fixture(scope="module")
def small_model(small_config):
    # Keras's initialisers: embeddings that differ from image to image.
    return build_siamese(small_config(paper_init=False))


def test_evaluate_reports_the_four_numbers(small_model, test_split, lake_runs):
    metrics = evaluation.evaluate(small_model, test_split, lake_runs, koch_tasks=20, views=1)
    assert set(metrics) == {
        "lake_runs_accuracy",
        "lake_runs_1nn",
        "koch_test_accuracy",
        "verification_accuracy",
    }
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    lake = evaluation.lake_tasks(lake_runs)
    assert metrics["lake_runs_1nn"] == evaluation.accuracy(evaluation.pixel_scorer(lake), lake)


def test_evaluate_with_mnist_adds_the_transfer_figures(small_model, test_split, lake_runs):
    from keras_siamese import data

    mnist = data.load_mnist_test()
    metrics = evaluation.evaluate(
        small_model, test_split, lake_runs, koch_tasks=20, mnist=mnist, views=2
    )
    assert 0.0 <= metrics["mnist_10way_accuracy"] <= 1.0
    digits = evaluation.labelled_tasks(*mnist, num_tasks=400, way=10, seed=0)
    assert metrics["mnist_10way_1nn"] == evaluation.accuracy(evaluation.pixel_scorer(digits), digits)
    tta = evaluation.SiameseScorer(small_model, views=metrics["tta_views"])
    assert metrics["mnist_10way_accuracy_tta"] == evaluation.accuracy(tta(digits), digits)


def test_evaluate_reports_test_time_augmentation(small_model, test_split, lake_runs):
    metrics = evaluation.evaluate(small_model, test_split, lake_runs, koch_tasks=20, views=2)
    assert 0.0 <= metrics["lake_runs_accuracy_tta"] <= 1.0
    assert 0.0 <= metrics["koch_test_accuracy_tta"] <= 1.0
    assert metrics["tta_views"] == 2 and metrics["tta_symmetries"] == TTA_SYMMETRIES


def test_evaluation_command_scores_validation_tasks_with_views(trained_run, omniglot_dir, tfds_dir, capsys):
    _, run_dir, _, _ = trained_run
    results = evaluation.main(
        [str(run_dir), "--views", "1", "2", "--symmetries", "1", "4", "--tasks", "20",
         "--data-dir", str(omniglot_dir), "--tfds-dir", str(tfds_dir)]
    )
    assert sorted(results) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(0.0 <= v <= 1.0 for v in results.values())
    # One view is the images as they are, whatever the symmetries.
    assert results[1, 1] == results[4, 1]
    assert "2 views, 4 symmetries:" in capsys.readouterr().out
