"""Tests for keras_siamese.evaluation on Lake's runs and the paper's test split."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from keras_siamese import evaluation
from keras_siamese.augmentation import Distortion
from keras_siamese.model import build_ensemble, build_siamese, head_of
from keras_siamese.preprocessing import to_model_input


@pytest.fixture(scope="module")
def lake(lake_runs):
    return evaluation.lake_tasks(lake_runs)


@pytest.fixture(scope="module")
def test_split(splits):
    return splits["test"]


@pytest.fixture(scope="module")
def koch_tasks(test_split):
    return evaluation.within_alphabet_tasks(test_split, 40, way=20, seed=0)


@pytest.fixture(scope="module")
def small_model(small_config):
    # Keras's initialisers: embeddings that differ from image to image.
    return build_siamese(small_config(paper_init=False))


def test_lake_tasks_are_the_400_trials(lake, lake_runs):
    assert len(lake) == 400 and lake.way == 20
    assert lake.candidates.shape == (400, 20)
    for t in (0, 137, 399):
        run, query = divmod(t, 20)
        np.testing.assert_array_equal(lake.images[lake.queries[t]], lake_runs.test[run, query])
        for k in range(20):
            np.testing.assert_array_equal(
                lake.images[lake.candidates[t, k]], lake_runs.training[run, k]
            )
        assert lake.answers[t] == lake_runs.answers[run, query]
        assert lake.groups[t] == f"run{run + 1:02d}"
    assert len(set(lake.groups)) == 20


def test_pixel_nearest_neighbour_matches_lakes_baseline(lake):
    """Lake et al. (2015) report 21.7% for 1-NN on raw pixels."""
    scores = evaluation.pixel_scorer(lake)
    assert scores.shape == (400, 20)
    assert 0.15 <= evaluation.accuracy(scores, lake) <= 0.30


def test_accuracy_counts_the_argmax():
    tasks = evaluation.OneShotTasks(
        images=np.zeros((1, 1, 1, 1), np.uint8),
        queries=np.zeros(4, int),
        candidates=np.zeros((4, 3), int),
        answers=np.array([0, 1, 2, 2]),
        groups=np.array(["a"] * 4),
    )
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    assert evaluation.accuracy(scores, tasks) == 0.75


def test_within_alphabet_tasks(koch_tasks, test_split):
    tasks, split = koch_tasks, test_split
    assert len(tasks) == 40 and tasks.way == 20
    assert tasks.images is split.images
    for t in range(len(tasks)):
        candidates, query = tasks.candidates[t], tasks.queries[t]
        assert set(split.alphabet[candidates]) == {tasks.groups[t]}
        assert split.alphabet[query] == tasks.groups[t]
        assert len(set(split.drawer[candidates])) == 1  # one drawer drew the candidates
        assert len(set(split.character[candidates])) == 20  # of 20 characters
        answer = candidates[tasks.answers[t]]
        assert split.character[query] == split.character[answer]
        assert split.drawer[query] != split.drawer[answer]
    # Alphabets take turns (those with at least 20 characters).
    assert len(set(tasks.groups)) == 10
    assert tasks.answers.min() >= 0 and tasks.answers.max() < 20
    # Same seed, same tasks.
    again = evaluation.within_alphabet_tasks(split, 40, way=20, seed=0)
    np.testing.assert_array_equal(again.candidates, tasks.candidates)
    np.testing.assert_array_equal(again.queries, tasks.queries)


def test_within_alphabet_tasks_need_enough_characters(test_split):
    with pytest.raises(ValueError, match="no alphabet"):
        evaluation.within_alphabet_tasks(test_split, 5, way=100)


@pytest.mark.parametrize("tasks_name", ["koch_tasks", "lake"])
def test_siamese_scorer_equals_the_models_predictions(small_model, tasks_name, request):
    tasks = request.getfixturevalue(tasks_name)
    size = small_model.input["left"].shape[1]
    scores = evaluation.SiameseScorer(small_model, batch_size=64)(tasks)
    assert scores.shape == (len(tasks), 20)
    picked = np.arange(0, len(tasks), max(1, len(tasks) // 20))  # a spread of tasks
    left = np.repeat(tasks.queries[picked], tasks.way)
    right = tasks.candidates[picked].ravel()
    x = {
        "left": to_model_input(tasks.images[left], size).numpy(),
        "right": to_model_input(tasks.images[right], size).numpy(),
    }
    expected = small_model.predict(x, verbose=0).reshape(len(picked), tasks.way)
    np.testing.assert_allclose(scores[picked], expected, atol=1e-5)
    assert np.std(scores[picked], axis=1).min() > 1e-6  # candidates get different scores


def test_verification_accuracy(small_model, test_split):
    value = evaluation.verification_accuracy(small_model, test_split, num_pairs=512, seed=0)
    assert 0.0 <= value <= 1.0
    # 512 pairs in two batches of 256: accuracies are multiples of 1/512.
    assert value * 512 == pytest.approx(round(value * 512))


def test_verification_pairs_do_not_depend_on_the_global_seed(small_model, test_split):
    """``fit`` sets the global seed to the run's and ``ensemble`` does not: the same network
    must score the same either way."""
    values = []
    for global_seed in (1, 2):
        keras.utils.set_random_seed(global_seed)
        values.append(evaluation.verification_accuracy(small_model, test_split, num_pairs=512))
    assert values[0] == values[1]


def test_verification_accuracy_of_a_constant_model_is_one_half(small_config, test_split):
    """Pairs are balanced: a model that always says "same" is right half of the time."""
    model = build_siamese(small_config(paper_init=False))
    head = head_of(model)
    head.alpha.assign(np.zeros(head.alpha.shape, np.float32))
    head.bias.assign(np.full((1,), 5.0, np.float32))
    assert evaluation.verification_accuracy(model, test_split, num_pairs=512) == 0.5
    head.bias.assign(np.full((1,), -5.0, np.float32))  # always "different"
    assert evaluation.verification_accuracy(model, test_split, num_pairs=512) == 0.5


def test_accuracy_by_group_and_hardest_mistakes():
    tasks = evaluation.OneShotTasks(
        images=np.zeros((1, 1, 1, 1), np.uint8),
        queries=np.zeros(4, int),
        candidates=np.zeros((4, 3), int),
        answers=np.array([0, 1, 2, 2]),
        groups=np.array(["b", "a", "b", "a"]),
    )
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    assert evaluation.accuracy_by_group(scores, tasks) == {"a": 0.5, "b": 0.5}
    # Task 1 is wrong by 0.7, task 2 by 0.2; the right tasks are not mistakes.
    np.testing.assert_array_equal(evaluation.hardest_mistakes(scores, tasks, 5), [1, 2])
    np.testing.assert_array_equal(evaluation.hardest_mistakes(scores, tasks, 1), [1])


def test_labelled_tasks_are_one_shot_tasks_over_the_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 5)
    images = rng.integers(0, 256, (len(labels), 4, 4, 1), dtype=np.uint8)
    tasks = evaluation.labelled_tasks(images, labels, num_tasks=50, way=10, seed=3)
    assert len(tasks) == 50 and tasks.way == 10
    for q, candidates, answer in zip(tasks.queries, tasks.candidates, tasks.answers):
        assert len(set(labels[candidates])) == 10  # one candidate per class
        assert labels[q] == labels[candidates[answer]] and q != candidates[answer]
    with pytest.raises(ValueError, match="need 13 classes"):
        evaluation.labelled_tasks(images, labels, way=13)


# --- Test-time augmentation -----------------------------------------------------------------


def test_test_time_augmentation_with_identity_distortions_changes_nothing(small_model, lake):
    plain = evaluation.SiameseScorer(small_model)(lake)
    one_view = evaluation.SiameseScorer(small_model, views=1)(lake)
    identity = Distortion(probability=0.0)  # every view is the image itself
    augmented = evaluation.SiameseScorer(
        small_model, views=3, distortion=identity, symmetries=1
    )(lake)
    np.testing.assert_array_equal(one_view, plain)
    np.testing.assert_allclose(augmented, plain, atol=1e-6)


def test_symmetric_views_score_a_turned_or_mirrored_task_as_the_task(small_model, test_split):
    """Views through all 8 symmetries, undistorted, see a task turned or mirrored as a whole
    as the same 8 views in another order: the same scores. One view does not."""
    # Tasks of two alphabets: a small pool of images to embed through 8 views, 5 times.
    two = np.isin(test_split.alphabet, np.unique(test_split.alphabet)[:2])
    koch_tasks = evaluation.within_alphabet_tasks(test_split.select(two), 20, way=20, seed=0)
    identity = Distortion(probability=0.0)
    scorer = evaluation.SiameseScorer(small_model, views=8, distortion=identity, symmetries=8)
    plain = evaluation.SiameseScorer(small_model)
    expected, expected_plain = scorer(koch_tasks), plain(koch_tasks)
    for turns, mirrored in ((1, False), (2, False), (0, True), (3, True)):
        images = koch_tasks.images[:, :, ::-1] if mirrored else koch_tasks.images  # (N, H, W, 1)
        images = np.rot90(images, turns, axes=(1, 2))
        changed = dataclasses.replace(koch_tasks, images=np.ascontiguousarray(images))
        np.testing.assert_allclose(scorer(changed), expected, atol=1e-5, err_msg=f"{turns=}, {mirrored=}")
        assert not np.allclose(plain(changed), expected_plain, atol=1e-3), (turns, mirrored)


def test_test_time_augmentation_averages_distorted_views(small_model, koch_tasks):
    plain = evaluation.SiameseScorer(small_model)(koch_tasks)
    scorer = evaluation.SiameseScorer(small_model, views=4, seed=1)
    augmented = scorer(koch_tasks)
    assert augmented.shape == plain.shape and ((augmented >= 0) & (augmented <= 1)).all()
    assert not np.allclose(augmented, plain)
    np.testing.assert_array_equal(augmented, scorer(koch_tasks))  # seeded: repeatable
    other_seed = evaluation.SiameseScorer(small_model, views=4, seed=2)(koch_tasks)
    assert not np.allclose(augmented, other_seed)


def test_test_time_augmentation_views_do_not_depend_on_the_batch(small_model, koch_tasks):
    """A view is a fixed transform: scoring a subset of the tasks gives the same scores."""
    scorer = evaluation.SiameseScorer(small_model, views=3, seed=1)
    subset = dataclasses.replace(
        koch_tasks,
        queries=koch_tasks.queries[:5],
        candidates=koch_tasks.candidates[:5],
        answers=koch_tasks.answers[:5],
        groups=koch_tasks.groups[:5],
    )
    np.testing.assert_allclose(scorer(subset), scorer(koch_tasks)[:5], atol=1e-6)


@pytest.mark.parametrize("views", [1, 3])
def test_an_ensemble_scores_the_mean_of_its_members(small_config, koch_tasks, views):
    members = [build_siamese(small_config(paper_init=False)) for _ in range(2)]
    expected = np.mean(
        [evaluation.SiameseScorer(m, views=views, seed=1)(koch_tasks) for m in members], axis=0
    )
    ensemble = build_ensemble(members)
    scores = evaluation.SiameseScorer(ensemble, views=views, seed=1)(koch_tasks)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    embeddings = evaluation.SiameseScorer(ensemble).embed(koch_tasks.images[:3])
    assert embeddings.shape == (3, 2 * small_config().dense_units)
