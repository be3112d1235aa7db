"""N-way one-shot evaluation and verification accuracy.

A one-shot task shows a query image and ``way`` candidate images, one of them
of the query's character; a scorer (a callable from :class:`OneShotTasks` to
``(T, way)`` scores, higher meaning "same character") rates every (query,
candidate) pair and the highest score is the pick. The same code scores Lake
et al.'s 20 official runs, Koch et al.'s within-alphabet tasks, the Siamese
network and a pixel-space nearest-neighbour baseline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_siamese.augmentation import Distortion, transform, tta_transforms
from keras_siamese.config import TTA_SYMMETRIES, TTA_SYMMETRY_CHOICES, TTA_VIEWS
from keras_siamese.data import LakeRuns, OmniglotImages
from keras_siamese.model import head_of, load_models, siamese_members, twin_of
from keras_siamese.pairs import pair_dataset
from keras_siamese.preprocessing import to_model_input


@dataclasses.dataclass(frozen=True)
class OneShotTasks:
    """A set of one-shot tasks over a pool of images.

    Attributes:
        images: uint8 ``(M, H, W, 1)`` pool in Omniglot polarity.
        queries: int ``(T,)`` pool index of each task's query.
        candidates: int ``(T, way)`` pool indices of each task's candidates.
        answers: int ``(T,)`` position in ``candidates`` of the right one.
        groups: str ``(T,)`` the alphabet (or run) each task belongs to.
    """

    images: np.ndarray
    queries: np.ndarray
    candidates: np.ndarray
    answers: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def way(self) -> int:
        return self.candidates.shape[1]


def lake_tasks(runs: LakeRuns) -> OneShotTasks:
    """Lake et al.'s 20 runs as 400 tasks, scored as Lake scores them.

    In each run every one of the 20 test images is compared with the run's 20
    training images; the highest score must be its own character.
    """
    n_runs, way = runs.training.shape[:2]
    pool = np.concatenate(
        [runs.training.reshape(-1, *runs.training.shape[2:]),
         runs.test.reshape(-1, *runs.test.shape[2:])]
    )
    run = np.repeat(np.arange(n_runs), way)
    queries = n_runs * way + np.arange(n_runs * way)
    candidates = (run * way)[:, None] + np.arange(way)[None, :]
    return OneShotTasks(
        images=pool,
        queries=queries,
        candidates=candidates,
        answers=runs.answers.reshape(-1).astype(np.int64),
        groups=np.array([f"run{r + 1:02d}" for r in run]),
    )


def within_alphabet_tasks(
    split: OmniglotImages, num_tasks: int, way: int = 20, seed: int = 0
) -> OneShotTasks:
    """Koch et al.'s ``way``-way within-alphabet one-shot tasks.

    Each task picks an alphabet (round robin, so alphabets count equally), two
    drawers, and ``way`` characters of that alphabet: the candidates are the
    characters as drawn by the first drawer, the query one of them as drawn by
    the second. Alphabets with fewer than ``way`` characters are skipped.
    """
    rng = np.random.default_rng(seed)
    lookup = {
        (a, c, d): i
        for i, (a, c, d) in enumerate(zip(split.alphabet, split.character, split.drawer))
    }
    by_alphabet = {
        a: np.unique(split.character[split.alphabet == a]) for a in np.unique(split.alphabet)
    }
    alphabets = [a for a, chars in by_alphabet.items() if len(chars) >= way]
    if not alphabets:
        raise ValueError(f"no alphabet in the split has {way} characters")
    drawers = np.unique(split.drawer)
    queries, candidates, answers, groups = [], [], [], []
    for t in range(num_tasks):
        alphabet = alphabets[t % len(alphabets)]
        chars = rng.choice(by_alphabet[alphabet], size=way, replace=False)
        support_drawer, query_drawer = rng.choice(drawers, size=2, replace=False)
        answer = int(rng.integers(way))
        candidates.append([lookup[(alphabet, c, support_drawer)] for c in chars])
        queries.append(lookup[(alphabet, chars[answer], query_drawer)])
        answers.append(answer)
        groups.append(alphabet)
    return OneShotTasks(
        images=split.images,
        queries=np.array(queries),
        candidates=np.array(candidates),
        answers=np.array(answers),
        groups=np.array(groups),
    )


def labelled_tasks(
    images: np.ndarray, labels: np.ndarray, num_tasks: int = 400, way: int = 10, seed: int = 0
) -> OneShotTasks:
    """``way``-way one-shot tasks over any labelled images (the paper's MNIST transfer).

    Each task takes ``way`` classes, one random image of each as the candidates, and a
    different image of one of them as the query.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) < way:
        raise ValueError(f"{way}-way tasks need {way} classes; the labels have {len(classes)}")
    members = {c: np.flatnonzero(labels == c) for c in classes}
    queries, candidates, answers = [], [], []
    for _ in range(num_tasks):
        chosen = rng.choice(classes, size=way, replace=False)
        answer = int(rng.integers(way))
        picks = [rng.choice(members[c], size=2, replace=False) for c in chosen]
        candidates.append([pick[0] for pick in picks])
        queries.append(picks[answer][1])
        answers.append(answer)
    return OneShotTasks(
        images=images,
        queries=np.array(queries),
        candidates=np.array(candidates),
        answers=np.array(answers),
        groups=np.array([str(labels[q]) for q in queries]),
    )


def accuracy(scores: np.ndarray, tasks: OneShotTasks) -> float:
    """Fraction of tasks whose highest-scoring candidate is the right one."""
    return float(np.mean(np.argmax(scores, axis=1) == tasks.answers))


def accuracy_by_group(scores: np.ndarray, tasks: OneShotTasks) -> dict[str, float]:
    """Accuracy of each group of tasks (alphabet or run), in sorted group order."""
    correct = np.argmax(scores, axis=1) == tasks.answers
    return {
        str(group): float(np.mean(correct[tasks.groups == group]))
        for group in np.unique(tasks.groups)
    }


def hardest_mistakes(scores: np.ndarray, tasks: OneShotTasks, n: int) -> np.ndarray:
    """Indices of the ``n`` wrong tasks the scorer was surest of.

    Mistakes are ranked by how far the wrong pick's score lies above the
    right candidate's, largest first.
    """
    rows = np.arange(len(tasks))
    picks = np.argmax(scores, axis=1)
    margin = scores[rows, picks] - scores[rows, tasks.answers]
    wrong = np.flatnonzero(picks != tasks.answers)
    return wrong[np.argsort(-margin[wrong], kind="stable")][:n]


def pixel_scorer(tasks: OneShotTasks) -> np.ndarray:
    """1-nearest-neighbour in pixel space: minus the Euclidean distance."""
    pool = tasks.images.reshape(len(tasks.images), -1).astype(np.float32) / 255.0
    q = pool[tasks.queries][:, None, :]
    c = pool[tasks.candidates]
    return -np.linalg.norm(q - c, axis=-1)


class SiameseScorer:
    """Scores one-shot tasks with a Siamese model, embedding each image once.

    The head only compares embeddings, so a ``way``-way task costs one twin
    pass per distinct image plus ``way`` cheap head evaluations, not ``way``
    full pair passes. Scores are the head's probabilities.

    With ``views > 1`` it adds test-time augmentation: the probabilities of
    ``views`` versions of each pair are averaged, view 0 being the images as
    they are and views ``1..views-1`` fixed draws of the training distortion
    (``augmentation.view_transforms``), one set for queries and another for
    candidates, so the two images of a pair are distorted independently as in
    training. Before its distortion, view ``v`` turns or mirrors every image of
    the task alike, by symmetry ``v % symmetries`` (1: none; see
    ``augmentation.view_transforms``). The SavedModel's ``one_shot_tta``
    signature applies the same transforms and gives the same scores.
    The weighted-L1 head is symmetric, so scoring ``(a, b)`` and ``(b, a)``
    gives the same probability and "symmetric scoring" needs no extra work.

    ``model`` may be an ensemble (``model.build_ensemble``): each member scores
    the tasks with its own twin and head, and the scores are averaged.
    """

    def __init__(
        self,
        model: keras.Model,
        batch_size: int = 256,
        *,
        views: int = 1,
        distortion: Distortion = Distortion(),
        seed: int = 0,
        symmetries: int = TTA_SYMMETRIES,
    ):
        self.members = [(twin_of(m), head_of(m)) for m in siamese_members(model)]
        self.image_size = model.input["left"].shape[1]
        self.batch_size = batch_size
        self.views = views
        self.query_transforms, self.support_transforms = tta_transforms(
            views, self.image_size, seed, distortion, symmetries
        )

    def embed(self, images: np.ndarray, transform_row: tf.Tensor | None = None) -> np.ndarray:
        """Embeddings of uint8 Omniglot-polarity images, ``(N, d)`` float32.

        ``transform_row``: an ``affine_transform`` row to apply first (a view).
        An ensemble's embedding is its members' embeddings side by side.
        """
        return np.concatenate(self._member_embeddings(images, transform_row), axis=1)

    def _member_embeddings(self, images, transform_row=None) -> list[np.ndarray]:
        x = to_model_input(images, self.image_size)
        if transform_row is not None:
            x = transform(x, transform_row)
        return [
            np.asarray(twin.predict(x, batch_size=self.batch_size, verbose=0), np.float32)
            for twin, _ in self.members
        ]

    def __call__(self, tasks: OneShotTasks) -> np.ndarray:
        n = len(tasks)
        queries, query_of_task = np.unique(tasks.queries, return_inverse=True)
        candidates, candidate_of_task = np.unique(tasks.candidates.ravel(), return_inverse=True)
        total = 0.0
        for view in range(self.views):
            rows = (None, None) if view == 0 else (
                self.query_transforms[view], self.support_transforms[view]
            )
            member_queries = self._member_embeddings(tasks.images[queries], rows[0])
            member_candidates = self._member_embeddings(tasks.images[candidates], rows[1])
            for (_, head), q, c in zip(self.members, member_queries, member_candidates):
                q = q[query_of_task][:, None, :]
                c = c[candidate_of_task].reshape(n, tasks.way, -1)
                total += keras.ops.convert_to_numpy(
                    head.activation(head.distance_logits(q, c))
                )[..., 0]
        return total / (self.views * len(self.members))


def ensemble_accuracy(model: keras.Model, tasks: OneShotTasks) -> tuple[float, list[float]]:
    """One-shot accuracy of an ensemble on ``tasks``, and of each of its members.

    The ensemble's scores are the mean of its members' (as ``SiameseScorer``
    scores an ensemble), so each member embeds the tasks once.
    """
    member_scores = [SiameseScorer(member)(tasks) for member in siamese_members(model)]
    members = [accuracy(scores, tasks) for scores in member_scores]
    return accuracy(np.mean(member_scores, axis=0), tasks), members


def saved_model_lake_scores(saved_model: str | Path, runs: LakeRuns, augmented: bool = False) -> np.ndarray:
    """Scores of Lake's 400 trials through an exported SavedModel, ``(400, 20)`` as ``lake_tasks``.

    Each run is one call of ``one_shot_encoded`` (``one_shot_tta_encoded`` if
    ``augmented``) with the run's own PNG files: its 20 test images as queries and
    its 20 training images as support, as a TF Serving client would send them.
    """
    signature = "one_shot_tta_encoded" if augmented else "one_shot_encoded"
    one_shot = tf.saved_model.load(str(saved_model)).signatures[signature]
    scores = [
        one_shot(
            queries=tf.constant(list(runs.test_files[run])),
            support=tf.constant(list(runs.training_files[run])),
        )["scores"].numpy()
        for run in range(len(runs.answers))
    ]
    return np.concatenate(scores)


def verification_accuracy(
    model: keras.Model, split: OmniglotImages, num_pairs: int = 2048, seed: int = 0
) -> float:
    """Accuracy of ``p > 0.5`` on balanced, undistorted pairs of ``split``.

    The pairs come from ``seed`` alone, whatever TensorFlow's global seed: ``fit``
    sets that to the run's seed, and a network scored again later by another
    command must meet the same pairs.
    """
    batch = 256
    # One stateless stream (steps=None) taken batch by batch: Dataset.random, behind
    # pair_dataset's epochs of `steps` batches, mixes in the global seed.
    ds = pair_dataset(
        split,
        image_size=model.input["left"].shape[1],
        batch_size=batch,
        steps=None,
        seed=seed,
        distortion=None,
    ).take(max(1, num_pairs // batch))
    correct = total = 0
    for x, y in ds:
        p = model(x, training=False)
        correct += int(tf.reduce_sum(tf.cast(tf.equal(p > 0.5, y > 0.5), tf.int32)))
        total += int(y.shape[0])
    return correct / total


def evaluate(
    model: keras.Model,
    test_split: OmniglotImages,
    runs: LakeRuns,
    *,
    koch_tasks: int = 400,
    way: int = 20,
    seed: int = 0,
    mnist: tuple[np.ndarray, np.ndarray] | None = None,
    views: int = TTA_VIEWS,
    symmetries: int = TTA_SYMMETRIES,
) -> dict[str, float]:
    """The project's standard report for a trained model.

    Args:
        mnist: MNIST ``(images, labels)`` (``data.load_mnist_test``) for the
            paper's transfer experiment, or None to skip it.

    Returns:
        ``lake_runs_accuracy``: Lake's 20 runs (400 trials); ``lake_runs_1nn``:
        the pixel 1-NN baseline on the same trials; ``koch_test_accuracy``:
        ``koch_tasks`` within-alphabet ``way``-way tasks on the test split;
        ``verification_accuracy``: balanced held-out pairs of the test split;
        with ``mnist``, ``mnist_10way_accuracy`` and ``mnist_10way_1nn``: 400
        10-way one-shot tasks on MNIST digits, no retraining (paper: 70.3%);
        with ``views > 1``, ``lake_runs_accuracy_tta``, ``koch_test_accuracy_tta``
        (and ``mnist_10way_accuracy_tta``): the same tasks with test-time augmentation
        over ``views`` views cycling through ``symmetries`` symmetries (see
        :class:`SiameseScorer`), recorded as ``tta_views`` and ``tta_symmetries``.
    """
    scorer = SiameseScorer(model)
    lake = lake_tasks(runs)
    koch = within_alphabet_tasks(test_split, koch_tasks, way=way, seed=seed)
    metrics = {
        "lake_runs_accuracy": accuracy(scorer(lake), lake),
        "lake_runs_1nn": accuracy(pixel_scorer(lake), lake),
        "koch_test_accuracy": accuracy(scorer(koch), koch),
        "verification_accuracy": verification_accuracy(model, test_split, seed=seed),
    }
    augmented = SiameseScorer(model, views=views, symmetries=symmetries) if views > 1 else None
    if augmented is not None:
        metrics.update(tta_views=views, tta_symmetries=symmetries)
        metrics["lake_runs_accuracy_tta"] = accuracy(augmented(lake), lake)
        metrics["koch_test_accuracy_tta"] = accuracy(augmented(koch), koch)
    if mnist is not None:
        digits = labelled_tasks(*mnist, num_tasks=400, way=10, seed=seed)
        metrics["mnist_10way_accuracy"] = accuracy(scorer(digits), digits)
        metrics["mnist_10way_1nn"] = accuracy(pixel_scorer(digits), digits)
        if augmented is not None:
            metrics["mnist_10way_accuracy_tta"] = accuracy(augmented(digits), digits)
    return metrics


def main(argv: list[str] | None = None) -> dict[tuple[int, int], float]:
    """``python -m keras_siamese.evaluation MODEL``: test-time augmentation on validation tasks.

    Scores within-alphabet one-shot tasks of the validation split (never the test alphabets)
    with 1, 4, 8, ... views, cycling through 1 or 8 symmetries, and prints the accuracy of
    each: the figures behind the choice of ``evaluate``'s default views and symmetries
    (docs/ablations.md, "Test-time augmentation").
    """
    import argparse

    from keras_siamese import data

    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.evaluation", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument(
        "model", nargs="+", help="a .keras file or a run folder holding best.keras; several: "
        "their ensemble"
    )
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--symmetries", type=int, nargs="+", default=[1, TTA_SYMMETRIES],
                        choices=TTA_SYMMETRY_CHOICES,
                        help="the symmetries the views cycle through, query and support alike: "
                        "1 none, 4 the quarter turns, 8 also mirrored (the default TTA)")
    parser.add_argument("--tasks", type=int, default=640)
    parser.add_argument("--seed", type=int, default=5, help="task sampling (training uses 2)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tfds-dir", default=None)
    args = parser.parse_args(argv)
    try:
        model = load_models(args.model)
    except FileNotFoundError as error:
        parser.error(str(error))
    split = data.paper_split(data.load_omniglot(args.data_dir, args.tfds_dir))["validation"]
    tasks = within_alphabet_tasks(split, args.tasks, seed=args.seed)
    results = {}
    for symmetries in args.symmetries:
        for views in args.views:
            scorer = SiameseScorer(model, views=views, symmetries=symmetries)
            results[symmetries, views] = accuracy(scorer(tasks), tasks)
            print(
                f"{views:3d} views, {symmetries} symmetries: {results[symmetries, views]:.1%} "
                f"on {len(tasks)} validation tasks", flush=True,
            )
    return results


if __name__ == "__main__":
    main()
