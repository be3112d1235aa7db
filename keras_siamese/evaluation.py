"""N-way K-shot evaluation, verification and its ROC.

A one-shot task shows a query image and ``way`` candidate images, one of them
of the query's character; a scorer (a callable from :class:`OneShotTasks` to
``(T, way)`` scores, higher meaning "same character") rates every (query,
candidate) pair and the highest score is the pick. The same code scores Lake
et al.'s 20 official runs, Koch et al.'s within-alphabet tasks, the Siamese
network and a pixel-space nearest-neighbour baseline.

A K-shot task (:func:`class_tasks`, on any labelled images such as a folder of
people's faces) shows ``shots`` support images of each of its ``way`` classes.
Scorers stay per candidate image, ``(T, way * shots)``, and
:func:`class_scores` gives each class its best shot's score, ``(T, way)``:
the nearest of its support images decides, as the gallery scores a label by
its best enrolled image. The accuracy functions go through it, so they serve
one-shot and K-shot tasks alike (the pixel 1-NN baseline of a K-shot task is
the nearest support image in pixel space).

Verification asks "are these two images of the same class?" for pairs of
held-out classes (:func:`verification_pairs`, :func:`pair_scores`).
:func:`roc` gives the ROC curve, its AUC and the equal error rate, and
:func:`choose_threshold` a probability threshold: the EER threshold, or the
lowest one whose false-accept rate stays within a target. Chosen on the
validation classes and applied to the test classes, that threshold answers
"none of these" when a query's best score falls below it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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
    """A set of one-shot (or K-shot) tasks over a pool of images.

    Attributes:
        images: uint8 ``(M, H, W, C)`` pool in Omniglot polarity, C = 1 or 3.
        queries: int ``(T,)`` pool index of each task's query.
        candidates: int ``(T, way * shots)`` pool indices of each task's candidates,
            class-major: column ``c * shots + k`` is shot ``k`` of class ``c``.
        answers: int ``(T,)`` the right class, ``0 .. way - 1`` (for one shot, the
            position in ``candidates`` of the right one).
        groups: str ``(T,)`` the alphabet (or run, or folder group) each task belongs to.
        shots: support images per class.
    """

    images: np.ndarray
    queries: np.ndarray
    candidates: np.ndarray
    answers: np.ndarray
    groups: np.ndarray
    shots: int = 1

    def __post_init__(self):
        if self.shots < 1 or self.candidates.shape[1] % self.shots:
            raise ValueError(
                f"{self.candidates.shape[1]} candidates per task do not make classes of "
                f"{self.shots} shots"
            )

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def way(self) -> int:
        """Classes per task."""
        return self.candidates.shape[1] // self.shots


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


def _class_members(split: OmniglotImages) -> dict[tuple[str, int], np.ndarray]:
    """Pool indices of the images of each class, a class being a (group, character) pair.

    In sorted class order, each class's images in pool order.
    """
    members: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(split.alphabet.tolist(), split.character.tolist())):
        members.setdefault(key, []).append(i)
    return {key: np.array(members[key]) for key in sorted(members)}


def class_tasks(
    split: OmniglotImages,
    num_tasks: int,
    way: int,
    shots: int = 1,
    seed: int = 0,
    within_group: bool = True,
) -> OneShotTasks:
    """``way``-way ``shots``-shot tasks over any labelled images (e.g. a folder of classes).

    Each task picks a group (round robin over the groups that can make a task, so groups
    count equally), ``way`` distinct classes of it, ``shots`` distinct support images of
    each, and as the query a further image of one of them (the answer), never one of its
    support images. A group can make a task when at least ``way`` of its classes have at
    least ``shots + 1`` images; only those classes are drawn.

    Args:
        split: the images; ``alphabet`` is the group, ``character`` the class.
        num_tasks: tasks to make.
        way: classes per task.
        shots: support images per class.
        seed: the ``numpy`` random seed: the same arguments give the same tasks.
        within_group: draw each task's classes from one group; False draws them from the
            whole split, one group named ``""`` (as a flat folder's only group is).

    Returns:
        Tasks over ``split.images`` with ``groups`` the group of each task.

    Raises:
        ValueError: ``way`` or ``shots`` below 1, or no group that can make a task.
    """
    if way < 1 or shots < 1:
        raise ValueError(f"tasks need way >= 1 and shots >= 1, got way={way}, shots={shots}")
    rng = np.random.default_rng(seed)
    eligible: dict[str, list[np.ndarray]] = {}
    for (group, _), members in _class_members(split).items():
        if len(members) >= shots + 1:
            eligible.setdefault(group if within_group else "", []).append(members)
    groups = sorted(g for g, classes in eligible.items() if len(classes) >= way)
    if not groups:
        most = max((len(classes) for classes in eligible.values()), default=0)
        raise ValueError(
            f"{way}-way {shots}-shot tasks need a group of at least {way} classes with at "
            f"least {shots + 1} images each ({shots} support images and a query); the "
            f"{'best group' if within_group else 'split'} has {most} such classes"
        )
    queries, candidates, answers, task_groups = [], [], [], []
    for t in range(num_tasks):
        group = groups[t % len(groups)]
        classes = eligible[group]
        chosen = rng.choice(len(classes), size=way, replace=False)
        answer = int(rng.integers(way))
        # shots + 1 distinct images of every class: the first `shots` are its support,
        # the last is the query when the class is the answer.
        picks = [rng.choice(classes[c], size=shots + 1, replace=False) for c in chosen]
        candidates.append(np.concatenate([pick[:shots] for pick in picks]))
        queries.append(picks[answer][shots])
        answers.append(answer)
        task_groups.append(group)
    return OneShotTasks(
        images=split.images,
        queries=np.array(queries, dtype=np.int64),
        candidates=np.array(candidates, dtype=np.int64).reshape(num_tasks, way * shots),
        answers=np.array(answers, dtype=np.int64),
        groups=np.array(task_groups, dtype=str),
        shots=shots,
    )


def class_scores(scores: np.ndarray, tasks: OneShotTasks) -> np.ndarray:
    """Per-class scores ``(..., way)`` from per-candidate scores ``(..., way * shots)``.

    Each class scores its best shot: the highest of its shots' scores, its nearest support
    image to the query. This is how ``gallery.identify`` scores a label by its enrolled
    images, and on a class whose images differ in pose or light the nearest one says more
    than their mean, which a distant shot drags down. With one shot the scores are
    returned as they are. A single task's row ``(way * shots,)`` gives its ``(way,)`` class
    scores.
    """
    scores = np.asarray(scores)
    if scores.shape[-1] != tasks.way * tasks.shots:
        raise ValueError(
            f"expected {tasks.way * tasks.shots} scores per task ({tasks.way} classes of "
            f"{tasks.shots} shots), got {scores.shape[-1]}"
        )
    if tasks.shots == 1:
        return scores
    return scores.reshape(*scores.shape[:-1], tasks.way, tasks.shots).max(axis=-1)


def best_shots(scores: np.ndarray, tasks: OneShotTasks) -> np.ndarray:
    """Pool indices ``(T, way)`` of each class's best shot in each task: the support image
    whose score is the class's score (:func:`class_scores`), the first of equals on a tie.

    ``scores`` are per candidate, ``(T, way * shots)``, as a scorer gives them.
    """
    shape = (len(tasks), tasks.way, tasks.shots)
    picks = np.argmax(np.asarray(scores).reshape(shape), axis=-1)
    return np.take_along_axis(tasks.candidates.reshape(shape), picks[..., None], axis=-1)[..., 0]


def accuracy(scores: np.ndarray, tasks: OneShotTasks) -> float:
    """Fraction of tasks whose highest-scoring class is the right one.

    ``scores`` are per candidate, ``(T, way * shots)``, as a scorer gives them
    (see :func:`class_scores`).
    """
    return float(np.mean(np.argmax(class_scores(scores, tasks), axis=1) == tasks.answers))


def accuracy_by_group(scores: np.ndarray, tasks: OneShotTasks) -> dict[str, float]:
    """Accuracy of each group of tasks (alphabet or run), in sorted group order."""
    correct = np.argmax(class_scores(scores, tasks), axis=1) == tasks.answers
    return {
        str(group): float(np.mean(correct[tasks.groups == group]))
        for group in np.unique(tasks.groups)
    }


def hardest_mistakes(scores: np.ndarray, tasks: OneShotTasks, n: int) -> np.ndarray:
    """Indices of the ``n`` wrong tasks the scorer was surest of.

    Mistakes are ranked by how far the wrong pick's score lies above the
    right candidate's (class scores, for K shots), largest first.
    """
    scores = class_scores(scores, tasks)
    rows = np.arange(len(tasks))
    picks = np.argmax(scores, axis=1)
    margin = scores[rows, picks] - scores[rows, tasks.answers]
    wrong = np.flatnonzero(picks != tasks.answers)
    return wrong[np.argsort(-margin[wrong], kind="stable")][:n]


def pixel_scorer(tasks: OneShotTasks) -> np.ndarray:
    """1-nearest-neighbour in pixel space: minus the Euclidean distance, per candidate.

    For K shots, :func:`class_scores` takes each class's nearest shot.
    """
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
        return [np.asarray(self._twin_outputs(twin, x), np.float32) for twin, _ in self.members]

    def _twin_outputs(self, twin: keras.Model, x: tf.Tensor) -> np.ndarray:
        """``twin``'s outputs for ``x`` in batches of ``batch_size``.

        One replica runs each batch through ``predict_on_batch``, the compiled predict
        step without ``predict``'s per-call input pipeline, which costs more than a
        validation task set's few hundred images take to embed. Under a strategy of
        several replicas ``predict`` splits each batch between them.
        """
        if twin.distribute_strategy.num_replicas_in_sync > 1:
            return twin.predict(x, batch_size=self.batch_size, verbose=0)
        return np.concatenate([
            twin.predict_on_batch(x[start:start + self.batch_size])
            for start in range(0, max(len(x), 1), self.batch_size)  # an empty x gives (0, d)
        ])  # fmt: skip

    def _member_probabilities(
        self, left: list[np.ndarray], right: list[np.ndarray]
    ) -> Iterator[np.ndarray]:
        """Each member's head probabilities of embedding pairs, in member order.

        ``left`` and ``right`` hold one array of embeddings per member (as
        ``_member_embeddings`` gives them), of shapes that broadcast; the
        probabilities have their broadcast shape without the embedding axis.
        """
        for (_, head), l, r in zip(self.members, left, right):
            yield keras.ops.convert_to_numpy(head.activation(head.distance_logits(l, r)))[..., 0]

    def __call__(self, tasks: OneShotTasks) -> np.ndarray:
        """Probabilities ``(T, way * shots)`` of every (query, candidate) pair of ``tasks``."""
        n, per_task = tasks.candidates.shape
        queries, query_of_task = np.unique(tasks.queries, return_inverse=True)
        candidates, candidate_of_task = np.unique(tasks.candidates.ravel(), return_inverse=True)
        total = 0.0
        for view in range(self.views):
            rows = (None, None) if view == 0 else (
                self.query_transforms[view], self.support_transforms[view]
            )
            member_queries = self._member_embeddings(tasks.images[queries], rows[0])
            member_candidates = self._member_embeddings(tasks.images[candidates], rows[1])
            for p in self._member_probabilities(
                [q[query_of_task][:, None, :] for q in member_queries],
                [c[candidate_of_task].reshape(n, per_task, -1) for c in member_candidates],
            ):
                total += p
        return total / (self.views * len(self.members))


def ensemble_accuracy(model: keras.Model, tasks: OneShotTasks) -> tuple[float, list[float]]:
    """One-shot accuracy of an ensemble on ``tasks``, and of each of its members.

    The ensemble's scores are the mean of its members' (as ``SiameseScorer``
    scores an ensemble), so each member embeds the tasks once.
    """
    member_scores = [SiameseScorer(member)(tasks) for member in siamese_members(model)]
    members = [accuracy(scores, tasks) for scores in member_scores]
    return accuracy(np.mean(member_scores, axis=0), tasks), members


def saved_model_lake_scores(
    saved_model: str | Path | tf.Module, runs: LakeRuns, augmented: bool = False
) -> np.ndarray:
    """Scores of Lake's 400 trials through an exported SavedModel, ``(400, 20)`` as ``lake_tasks``.

    Each run is one call of ``one_shot_encoded`` (``one_shot_tta_encoded`` if
    ``augmented``) with the run's own PNG files: its 20 test images as queries and
    its 20 training images as support, as a TF Serving client would send them.
    ``saved_model`` is the SavedModel's folder, or the SavedModel as
    ``tf.saved_model.load`` gives it (to score it more than once, load it once).
    """
    signature = "one_shot_tta_encoded" if augmented else "one_shot_encoded"
    if isinstance(saved_model, (str, Path)):
        saved_model = tf.saved_model.load(str(saved_model))
    one_shot = saved_model.signatures[signature]
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
    command must meet the same pairs. They are the training pipeline's pairs
    (``pair_dataset``), so this figure stays comparable from run to run; for an ROC,
    an EER and a threshold see :func:`verification_pairs` and :func:`pair_scores`.
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


def verification_pairs(
    split: OmniglotImages, num_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced same and different pairs of ``split``'s images, as pool indices.

    Half the pairs (``num_pairs // 2``) are same pairs: a class drawn uniformly among
    those with two images or more, and two different images of it. The rest are
    different pairs: two different classes drawn uniformly, and one image of each.
    Classes are (group, character) pairs, and a different pair may cross groups.
    Same and different pairs come shuffled together, from the ``numpy`` ``seed`` alone.

    Returns:
        ``(left, right, same)``: int ``(P,)`` pool indices of the two images of each
        pair and bool ``(P,)`` whether they show the same class.

    Raises:
        ValueError: fewer than two classes, or no class with two images.
    """
    rng = np.random.default_rng(seed)
    classes = list(_class_members(split).values())
    sizes = np.array([len(members) for members in classes])
    if len(classes) < 2 or sizes.max() < 2:
        raise ValueError(
            f"verification pairs need at least 2 classes and a class with 2 images; the "
            f"split has {len(classes)} classes of at most {sizes.max(initial=0)} images"
        )
    # Each class's images as one slice of `pool`: class c is pool[starts[c] : starts[c] + sizes[c]].
    pool = np.concatenate(classes)
    starts = np.cumsum(sizes) - sizes
    n_same = num_pairs // 2
    n_different = num_pairs - n_same

    same_class = rng.choice(np.flatnonzero(sizes >= 2), size=n_same)
    first = rng.integers(sizes[same_class])
    second = (first + 1 + rng.integers(sizes[same_class] - 1)) % sizes[same_class]
    left_class = rng.integers(len(classes), size=n_different)
    right_class = (left_class + 1 + rng.integers(len(classes) - 1, size=n_different)) % len(classes)

    left = pool[np.concatenate([
        starts[same_class] + first, starts[left_class] + rng.integers(sizes[left_class])
    ])]  # fmt: skip
    right = pool[np.concatenate([
        starts[same_class] + second, starts[right_class] + rng.integers(sizes[right_class])
    ])]  # fmt: skip
    same = np.arange(num_pairs) < n_same
    order = rng.permutation(num_pairs)
    return left[order], right[order], same[order]


def pair_scores(
    model: keras.Model,
    images: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    batch_size: int = 4096,
) -> np.ndarray:
    """The Siamese probability ``(P,)`` that the images of each pair show the same class.

    Each distinct image of ``images[left]`` and ``images[right]`` is embedded once
    (:class:`SiameseScorer`); the head then compares the pairs ``batch_size`` at a time.
    An ensemble's probability is the mean of its members'.
    """
    left, right = np.asarray(left), np.asarray(right)
    scorer = SiameseScorer(model)
    used, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    embeddings = scorer._member_embeddings(images[used])
    first, second = inverse[: len(left)], inverse[len(left) :]
    scores = np.zeros(len(left), np.float32)
    for start in range(0, len(left), batch_size):
        batch = slice(start, start + batch_size)
        total = 0.0
        for p in scorer._member_probabilities(
            [e[first[batch]] for e in embeddings], [e[second[batch]] for e in embeddings]
        ):
            total += p
        scores[batch] = total / len(scorer.members)
    return scores


def roc(scores: np.ndarray, same: np.ndarray) -> dict:
    """The ROC curve of scores of same (positive) and different pairs, its AUC and the EER.

    A pair is accepted as "same" when its score is at least the threshold. The curve is
    ``sklearn.metrics.roc_curve``'s, with every threshold kept (one per distinct score,
    after a first of ``inf`` that accepts nothing).

    The equal error rate is where the false-accept rate (FPR) equals the false-reject
    rate (1 - TPR). Between the last curve point with FPR < 1 - TPR and the first with
    FPR >= 1 - TPR, both rates are interpolated linearly and the EER is where the two
    lines meet; ``eer_threshold`` is interpolated between the two points' thresholds in the
    same proportion (the second point's threshold when the first is the ``inf`` one).

    Returns:
        ``roc_auc``, ``eer``, ``eer_threshold`` (floats) and the curve's ``fpr``, ``tpr`` and
        ``thresholds`` (arrays, thresholds decreasing).

    Raises:
        ValueError: the pairs are not both same and different, or the lengths differ.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if scores.shape != same.shape or same.all() or not same.any():
        raise ValueError(
            f"an ROC needs as many scores as labels and both same and different pairs; got "
            f"{scores.shape} scores, {same.shape} labels with {int(same.sum())} same pairs"
        )
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    # FRR - FAR falls from 1 (nothing accepted) to -1 (everything accepted).
    gap = (1.0 - tpr) - fpr
    upper = int(np.argmax(gap <= 0.0))
    lower = upper - 1
    t = gap[lower] / (gap[lower] - gap[upper])
    eer = fpr[lower] + t * (fpr[upper] - fpr[lower])
    if np.isfinite(thresholds[lower]):
        eer_threshold = thresholds[lower] + t * (thresholds[upper] - thresholds[lower])
    else:
        eer_threshold = thresholds[upper]
    return {
        "roc_auc": float(roc_auc_score(same, scores)),
        "eer": float(eer),
        "eer_threshold": float(eer_threshold),
        "fpr": fpr,
        "tpr": tpr,
        "thresholds": thresholds,
    }


def error_rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(false-accept rate, false-reject rate)`` of accepting pairs scored ``>= threshold``.

    The false-accept rate is the fraction of different pairs accepted, the false-reject
    rate the fraction of same pairs rejected.
    """
    scores, same = np.asarray(scores), np.asarray(same, bool)
    accepted = scores >= threshold
    return float(np.mean(accepted[~same])), float(np.mean(~accepted[same]))


def choose_threshold(
    scores: np.ndarray, same: np.ndarray, target_far: float | None = None
) -> float:
    """An accept threshold for pair scores, chosen on validation pairs.

    Without ``target_far``, the EER threshold (:func:`roc`). With it, the lowest threshold
    among the scores whose false-accept rate is at most ``target_far``: of those, the one
    that rejects the fewest same pairs (``inf`` when only rejecting everything will do).
    The caller applies it to pairs (or queries) of other, test classes.
    """
    curve = roc(scores, same)
    if target_far is None:
        return curve["eer_threshold"]
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target_far must be within [0, 1], got {target_far}")
    # Thresholds fall and false-accept rates rise along the curve.
    within = np.flatnonzero(curve["fpr"] <= target_far)
    return float(curve["thresholds"][within[-1]])


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
