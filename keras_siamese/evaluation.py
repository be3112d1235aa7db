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

import keras
import numpy as np
import tensorflow as tf

from keras_siamese.data import LakeRuns, OmniglotImages
from keras_siamese.model import head_of, twin_of
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


def accuracy(scores: np.ndarray, tasks: OneShotTasks) -> float:
    """Fraction of tasks whose highest-scoring candidate is the right one."""
    return float(np.mean(np.argmax(scores, axis=1) == tasks.answers))


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
    """

    def __init__(self, model: keras.Model, batch_size: int = 256):
        self.twin = twin_of(model)
        self.head = head_of(model)
        self.image_size = model.input["left"].shape[1]
        self.batch_size = batch_size

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 Omniglot-polarity images, ``(N, d)`` float32."""
        x = to_model_input(images, self.image_size)
        return np.asarray(self.twin.predict(x, batch_size=self.batch_size, verbose=0), np.float32)

    def __call__(self, tasks: OneShotTasks) -> np.ndarray:
        n = len(tasks)
        used, inverse = np.unique(
            np.concatenate([tasks.queries, tasks.candidates.ravel()]), return_inverse=True
        )
        emb = self.embed(tasks.images[used])
        q = emb[inverse[:n]][:, None, :]
        c = emb[inverse[n:]].reshape(n, tasks.way, -1)
        probs = self.head.activation(self.head.distance_logits(q, c))
        return keras.ops.convert_to_numpy(probs)[..., 0]


def verification_accuracy(
    model: keras.Model, split: OmniglotImages, num_pairs: int = 2048, seed: int = 0
) -> float:
    """Accuracy of ``p > 0.5`` on balanced, undistorted pairs of ``split``."""
    batch = 256
    ds = pair_dataset(
        split,
        image_size=model.input["left"].shape[1],
        batch_size=batch,
        steps=max(1, num_pairs // batch),
        seed=seed,
        distortion=None,
    )
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
) -> dict[str, float]:
    """The project's standard report for a trained model.

    Returns:
        ``lake_runs_accuracy``: Lake's 20 runs (400 trials); ``lake_runs_1nn``:
        the pixel 1-NN baseline on the same trials; ``koch_test_accuracy``:
        ``koch_tasks`` within-alphabet ``way``-way tasks on the test split;
        ``verification_accuracy``: balanced held-out pairs of the test split.
    """
    scorer = SiameseScorer(model)
    lake = lake_tasks(runs)
    koch = within_alphabet_tasks(test_split, koch_tasks, way=way, seed=seed)
    return {
        "lake_runs_accuracy": accuracy(scorer(lake), lake),
        "lake_runs_1nn": accuracy(pixel_scorer(lake), lake),
        "koch_test_accuracy": accuracy(scorer(koch), koch),
        "verification_accuracy": verification_accuracy(model, test_split, seed=seed),
    }
