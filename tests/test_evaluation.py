"""Tests for keras_siamese.evaluation on Lake's runs and the paper's test split."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from conftest import ORL_DIR, keras_probabilities
from PIL import Image

from keras_siamese import evaluation
from keras_siamese.augmentation import Distortion
from keras_siamese.data import OmniglotImages
from keras_siamese.model import build_ensemble, build_siamese, head_of, twin_of
from keras_siamese.preprocessing import fit_to_square, to_model_input


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


def test_siamese_scorer_embeds_in_batches_as_predict_does(small_model, test_split):
    twin = twin_of(small_model)
    images = test_split.images[:150]  # two full batches of 64 and a partial one
    scorer = evaluation.SiameseScorer(small_model, batch_size=64)
    expected = twin.predict(to_model_input(images, scorer.image_size), verbose=0)
    np.testing.assert_allclose(scorer.embed(images), expected, atol=1e-6)
    assert scorer.embed(images[:0]).shape == (0, expected.shape[1])


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


# --- K-shot tasks on any labelled images -----------------------------------------------------



@pytest.fixture(scope="module")
def faces() -> OmniglotImages:
    """The 400 ORL faces (40 people, 10 photographs each) as a flat folder, 28x28 grey."""
    if not ORL_DIR.is_dir():
        pytest.fail(f"ORL faces not found at {ORL_DIR}", pytrace=False)
    images, people, numbers = [], [], []
    for person in range(1, 41):
        for number in range(1, 11):
            with Image.open(ORL_DIR / f"s{person}" / f"{number}.pgm") as image:
                images.append(np.asarray(image)[..., None])
            people.append(person - 1)
            numbers.append(number)
    small = np.round(fit_to_square(np.stack(images), 28).numpy()).astype(np.uint8)
    return OmniglotImages(
        images=small,
        alphabet=np.full(len(small), ""),
        character=np.array(people, np.int32),
        drawer=np.array(numbers, np.int32),
    )


def uneven_split() -> OmniglotImages:
    """Two groups of classes with 2 to 5 images each; group "b" has only 3 classes."""
    sizes = {("a", 0): 5, ("a", 1): 4, ("a", 2): 3, ("a", 3): 2, ("b", 4): 5, ("b", 5): 5,
             ("b", 6): 5}  # fmt: skip
    keys = [key for key, n in sizes.items() for _ in range(n)]
    return OmniglotImages(
        images=np.arange(len(keys), dtype=np.uint8).reshape(-1, 1, 1, 1),
        alphabet=np.array([group for group, _ in keys]),
        character=np.array([c for _, c in keys], np.int32),
        drawer=np.concatenate([np.arange(1, n + 1) for n in sizes.values()]).astype(np.int32),
    )


def check_tasks(tasks, split, way, shots):
    """Every task: way distinct classes of its group, shots distinct images of each, the
    query a further image of the answer class."""
    assert tasks.candidates.shape == (len(tasks), way * shots) and tasks.way == way
    assert tasks.shots == shots and tasks.images is split.images
    for query, candidates, answer, group in zip(
        tasks.queries, tasks.candidates, tasks.answers, tasks.groups
    ):
        by_class = candidates.reshape(way, shots)  # class-major
        classes = split.character[by_class]
        assert (classes == classes[:, :1]).all()  # each class's shots are of that class
        assert len(set(classes[:, 0])) == way
        assert len(set(candidates)) == way * shots
        assert split.character[query] == classes[answer, 0]
        assert query not in by_class[answer]
        if group:
            assert set(split.alphabet[candidates]) | {split.alphabet[query]} == {group}
    assert 0 <= tasks.answers.min() and tasks.answers.max() < way


@pytest.mark.parametrize("shots", [1, 3, 9])
def test_class_tasks_on_a_flat_folder(faces, shots):
    tasks = evaluation.class_tasks(faces, 60, way=5, shots=shots, seed=1)
    check_tasks(tasks, faces, 5, shots)
    assert set(tasks.groups) == {""}
    again = evaluation.class_tasks(faces, 60, way=5, shots=shots, seed=1)
    for field in ("queries", "candidates", "answers", "groups"):
        np.testing.assert_array_equal(getattr(again, field), getattr(tasks, field))
    other = evaluation.class_tasks(faces, 60, way=5, shots=shots, seed=2)
    assert not np.array_equal(other.candidates, tasks.candidates)
    # Every answer position is used: the answer is not always the first class.
    assert len(set(tasks.answers)) == 5


def test_class_tasks_within_alphabets(test_split):
    tasks = evaluation.class_tasks(test_split, 40, way=20, shots=2, seed=0)
    check_tasks(tasks, test_split, 20, 2)
    groups = np.unique(test_split.alphabet)
    # Round robin: the 10 test alphabets take turns.
    np.testing.assert_array_equal(tasks.groups[: len(groups)], groups)
    across = evaluation.class_tasks(test_split, 40, way=20, shots=2, seed=0, within_group=False)
    check_tasks(across, test_split, 20, 2)
    assert set(across.groups) == {""}
    assert max(len(set(test_split.alphabet[c])) for c in across.candidates) > 1


def test_class_tasks_use_only_classes_and_groups_that_can_make_a_task():
    split = uneven_split()
    # Three shots and a query: group "a" has two such classes, "b" three.
    tasks = evaluation.class_tasks(split, 30, way=2, shots=3, seed=0)
    check_tasks(tasks, split, 2, 3)
    assert set(tasks.groups) == {"a", "b"}
    assert set(split.character[tasks.candidates[tasks.groups == "a"]].ravel()) == {0, 1}
    # Three classes of four images: group "b" only; four of two: group "a" only.
    assert set(evaluation.class_tasks(split, 10, way=3, shots=3).groups) == {"b"}
    assert set(evaluation.class_tasks(split, 10, way=4, shots=1).groups) == {"a"}
    # Seven classes: both groups together, not within one.
    check_tasks(evaluation.class_tasks(split, 10, way=7, within_group=False), split, 7, 1)
    with pytest.raises(ValueError, match="at least 5 classes with at least 2 images"):
        evaluation.class_tasks(split, 10, way=5)
    with pytest.raises(ValueError, match="at least 6 images each"):
        evaluation.class_tasks(split, 10, way=2, shots=5)
    with pytest.raises(ValueError, match="shots >= 1"):
        evaluation.class_tasks(split, 10, way=2, shots=0)


def k_shot_tasks(answers, way, shots):
    n = len(answers)
    return evaluation.OneShotTasks(
        images=np.zeros((1, 1, 1, 1), np.uint8),
        queries=np.zeros(n, int),
        candidates=np.zeros((n, way * shots), int),
        answers=np.array(answers),
        groups=np.array(["a", "b", "a"][:n]),
        shots=shots,
    )


def test_class_scores_and_accuracy_with_k_shots():
    tasks = k_shot_tasks([0, 1, 2], way=3, shots=2)
    assert tasks.way == 3
    scores = np.array([
        [0.9, 0.0, 0.5, 0.5, 0.1, 0.1],  # best shots 0.9, 0.5, 0.1: class 0 (right)
        [0.2, 0.2, 0.3, 0.9, 0.0, 0.0],  # 0.2, 0.9, 0.0: class 1 (right)
        [0.1, 0.1, 0.0, 0.8, 0.6, 0.6],  # 0.1, 0.8, 0.6: class 1 (wrong)
    ])  # fmt: skip
    np.testing.assert_allclose(
        evaluation.class_scores(scores, tasks),
        [[0.9, 0.5, 0.1], [0.2, 0.9, 0.0], [0.1, 0.8, 0.6]],
    )
    # The nearest shot decides: in the first task the mean of class 0's shots (0.45) would
    # lose to class 1's (0.5), and in the third class 2's (0.6) would beat class 1's (0.4).
    assert evaluation.accuracy(scores, tasks) == pytest.approx(2 / 3)
    assert evaluation.accuracy_by_group(scores, tasks) == {"a": 0.5, "b": 1.0}
    np.testing.assert_array_equal(evaluation.hardest_mistakes(scores, tasks, 5), [2])
    # One task's row gives its class scores.
    np.testing.assert_allclose(evaluation.class_scores(scores[1], tasks), [0.2, 0.9, 0.0])
    # Each class's best shot, as pool indices: candidates 0..5 are images 10..15.
    tasks = dataclasses.replace(tasks, candidates=np.tile(np.arange(10, 16), (3, 1)))
    np.testing.assert_array_equal(
        evaluation.best_shots(scores, tasks), [[10, 12, 14], [10, 13, 14], [10, 13, 14]]
    )
    with pytest.raises(ValueError, match="expected 6 scores per task"):
        evaluation.class_scores(scores[:, :3], tasks)
    with pytest.raises(ValueError, match="classes of 4 shots"):
        dataclasses.replace(tasks, shots=4)  # 6 candidates


def test_class_scores_of_one_shot_are_the_scores():
    tasks = k_shot_tasks([0, 1, 2], way=3, shots=1)
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.5, 0.2, 0.3]])
    assert evaluation.class_scores(scores, tasks) is scores
    assert evaluation.accuracy(scores, tasks) == pytest.approx(1 / 3)


def test_pixel_nearest_neighbour_improves_with_five_shots(faces):
    """Averaged over five photographs of each person, pixel distances pick the right person
    more often than with one (on 400 10-way tasks of ORL faces)."""
    one = evaluation.class_tasks(faces, 400, way=10, shots=1, seed=0)
    five = evaluation.class_tasks(faces, 400, way=10, shots=5, seed=0)
    one_shot = evaluation.accuracy(evaluation.pixel_scorer(one), one)
    five_shot = evaluation.accuracy(evaluation.pixel_scorer(five), five)
    assert evaluation.pixel_scorer(five).shape == (400, 50)
    assert 0.5 < one_shot and five_shot > one_shot + 0.05, (one_shot, five_shot)


def test_siamese_scorer_scores_every_shot(small_model, faces):
    tasks = evaluation.class_tasks(faces, 6, way=4, shots=3, seed=0)
    scores = evaluation.SiameseScorer(small_model)(tasks)
    assert scores.shape == (6, 12)
    pairs = {
        "left": np.repeat(tasks.images[tasks.queries], 12, axis=0),
        "right": tasks.images[tasks.candidates.ravel()],
    }
    np.testing.assert_allclose(
        scores.ravel(), keras_probabilities(small_model, pairs), rtol=1e-5, atol=1e-6
    )


# --- Verification: pairs, ROC, EER and a threshold -------------------------------------------


def test_verification_pairs_are_balanced_and_right(faces):
    left, right, same = evaluation.verification_pairs(faces, 1001, seed=3)
    assert left.shape == right.shape == same.shape == (1001,) and same.dtype == bool
    assert same.sum() == 500
    np.testing.assert_array_equal(faces.character[left] == faces.character[right], same)
    assert (left != right).all()
    assert 20 < same[:100].sum() < 80  # shuffled, not all the same pairs first
    assert len(set(faces.character[left[same]])) == 40
    again = evaluation.verification_pairs(faces, 1001, seed=3)
    for a, b in zip(again, (left, right, same)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(evaluation.verification_pairs(faces, 1001, seed=4)[0], left)


def test_verification_pairs_need_two_classes_and_a_pair():
    split = uneven_split()
    left, right, same = evaluation.verification_pairs(split, 200, seed=0)
    key = np.char.add(split.alphabet, split.character.astype(str))
    np.testing.assert_array_equal(key[left] == key[right], same)
    one_class = split.select(split.character == 0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        evaluation.verification_pairs(one_class, 10)
    singles = split.select(split.drawer == 1)
    with pytest.raises(ValueError, match="a class with 2 images"):
        evaluation.verification_pairs(singles, 10)


@pytest.mark.parametrize("ensemble", [False, True])
def test_pair_scores_are_the_models_probabilities(small_config, faces, ensemble):
    models = [build_siamese(small_config(paper_init=False)) for _ in range(2 if ensemble else 1)]
    model = build_ensemble(models) if ensemble else models[0]
    left, right, _ = evaluation.verification_pairs(faces, 300, seed=0)
    scores = evaluation.pair_scores(model, faces.images, left, right, batch_size=128)
    assert scores.shape == (300,)
    pairs = {"left": faces.images[left], "right": faces.images[right]}
    expected = keras_probabilities(model, pairs)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert np.ptp(scores) > 1e-4  # the pairs score differently


def test_roc_of_perfectly_separated_and_inverted_scores():
    same = np.array([True, True, True, False, False])
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.1])
    curve = evaluation.roc(scores, same)
    assert curve["roc_auc"] == 1.0 and curve["eer"] == 0.0
    assert curve["eer_threshold"] == 0.7  # the lowest same score still accepts no different pair
    assert evaluation.error_rates(scores, same, curve["eer_threshold"]) == (0.0, 0.0)
    for key in ("fpr", "tpr", "thresholds"):
        assert curve[key].shape == (6,)  # inf, then every score
    inverted = evaluation.roc(-scores, same)
    assert inverted["roc_auc"] == 0.0 and inverted["eer"] == 1.0
    with pytest.raises(ValueError, match="both same and different"):
        evaluation.roc(scores, np.ones(5, bool))


def test_roc_interpolates_the_equal_error_rate():
    same = np.array([True, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    curve = evaluation.roc(scores, same)
    # (FAR, FRR) accepting >= 0.9: (0, 1/2); >= 0.8: (1/2, 1/2), where they meet.
    assert curve["eer"] == pytest.approx(0.5)
    assert curve["eer_threshold"] == pytest.approx(0.8)
    assert curve["roc_auc"] == pytest.approx(0.75)
    # Three same and two different pairs: (FAR, FRR) (0, 2/3) at 0.9, (1/2, 1/3) at 0.5.
    same = np.array([True, False, True, True, False])
    scores = np.array([0.9, 0.5, 0.5, 0.3, 0.2])
    curve = evaluation.roc(scores, same)
    # FRR - FAR: 2/3 at 0.9, -1/6 at 0.5; they meet 4/5 of the way: EER 0.4.
    assert curve["eer"] == pytest.approx(0.4)
    assert curve["eer_threshold"] == pytest.approx(0.9 + 0.8 * (0.5 - 0.9))


def test_roc_agrees_with_scikit_learn_on_random_scores():
    from sklearn.metrics import auc, roc_auc_score

    rng = np.random.default_rng(0)
    same = rng.random(2000) < 0.4
    scores = rng.normal(size=2000) + 1.2 * same
    curve = evaluation.roc(scores, same)
    assert curve["roc_auc"] == pytest.approx(roc_auc_score(same, scores))
    assert curve["roc_auc"] == pytest.approx(auc(curve["fpr"], curve["tpr"]))
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["thresholds"]) < 0)
    far, frr = evaluation.error_rates(scores, same, curve["eer_threshold"])
    # At the EER threshold both error rates are within a step of the curve of the EER.
    assert abs(far - curve["eer"]) < 0.01 and abs(frr - curve["eer"]) < 0.01
    assert 0.2 < curve["eer"] < 0.35


def test_error_rates_at_thresholds():
    same = np.array([True, True, True, True, False, False])
    scores = np.array([0.9, 0.6, 0.5, 0.2, 0.5, 0.1])
    assert evaluation.error_rates(scores, same, 0.5) == (0.5, 0.25)  # 0.5 is accepted
    assert evaluation.error_rates(scores, same, 0.55) == (0.0, 0.5)
    assert evaluation.error_rates(scores, same, 0.0) == (1.0, 0.0)
    assert evaluation.error_rates(scores, same, 1.0) == (0.0, 1.0)


def test_choose_threshold_at_the_eer_and_for_a_false_accept_target():
    rng = np.random.default_rng(1)
    same = np.arange(1000) < 500
    scores = rng.normal(size=1000) + 1.5 * same
    eer_threshold = evaluation.roc(scores, same)["eer_threshold"]
    assert evaluation.choose_threshold(scores, same) == eer_threshold
    for target in (0.0, 0.01, 0.1, 0.3):
        threshold = evaluation.choose_threshold(scores, same, target_far=target)
        assert evaluation.error_rates(scores, same, threshold)[0] <= target
        # The next lower score as threshold accepts too many different pairs.
        lower = scores[scores < threshold].max()
        assert evaluation.error_rates(scores, same, lower)[0] > target
    strict = evaluation.choose_threshold(scores, same, target_far=0.01)
    loose = evaluation.choose_threshold(scores, same, target_far=0.1)
    assert strict > loose
    assert evaluation.choose_threshold(scores, same, target_far=1.0) == scores.min()
    with pytest.raises(ValueError, match="target_far"):
        evaluation.choose_threshold(scores, same, target_far=1.5)
