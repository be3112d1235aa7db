"""Same/different training pairs as a ``tf.data`` pipeline.

Pairs are drawn on the fly, a fresh set each epoch, from images decoded and
preprocessed once and held in memory. All randomness is stateless and derived
from one seed, so a pipeline built twice with the same seed yields the same
pairs, epoch by epoch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from keras_siamese.augmentation import Distortion, distort, turn_or_mirror
from keras_siamese.data import OmniglotImages
from keras_siamese.preprocessing import to_model_input


@dataclasses.dataclass(frozen=True)
class PairIndex:
    """Where each character's images sit in an image array sorted by class.

    Images of class ``c`` are ``offset[c] : offset[c] + size[c]``; classes of
    one alphabet are contiguous, ``alphabet_start[c] : + alphabet_size[c]``.
    """

    order: np.ndarray  # permutation that sorts the split by (alphabet, character)
    offset: np.ndarray
    size: np.ndarray
    alphabet_start: np.ndarray
    alphabet_size: np.ndarray

    @classmethod
    def from_split(cls, split: OmniglotImages) -> "PairIndex":
        order = np.lexsort((split.drawer, split.character, split.alphabet))
        character = split.character[order]
        alphabet = split.alphabet[order]
        starts = np.flatnonzero(np.r_[True, character[1:] != character[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        if sizes.min() < 2:
            raise ValueError("every character needs at least two images to form a same pair")
        class_alphabet = alphabet[starts]
        alpha_first = np.flatnonzero(np.r_[True, class_alphabet[1:] != class_alphabet[:-1]])
        alpha_sizes = np.diff(np.r_[alpha_first, len(starts)])
        alpha_of_class = np.repeat(np.arange(len(alpha_first)), alpha_sizes)
        return cls(
            order=order,
            offset=starts.astype(np.int32),
            size=sizes.astype(np.int32),
            alphabet_start=alpha_first[alpha_of_class].astype(np.int32),
            alphabet_size=alpha_sizes[alpha_of_class].astype(np.int32),
        )

    @property
    def num_classes(self) -> int:
        return len(self.offset)


def _randint(seed, maxval):
    """One uniform integer in ``[0, maxval)`` per element of ``maxval``."""
    u = tf.random.stateless_uniform(tf.shape(maxval), seed)
    return tf.minimum(tf.cast(u * tf.cast(maxval, tf.float32), tf.int32), maxval - 1)


def sample_pair_indices(
    index: PairIndex, batch_size: int, seed: tf.Tensor, within_alphabet: float = 0.0
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Draws a balanced batch of pairs as image indices.

    The first half of the batch are same pairs (one character, two different
    drawers), the second half different pairs. A different pair takes its
    second character from the first one's alphabet with probability
    ``within_alphabet`` (the one-shot tasks are within-alphabet), otherwise
    from any other character.

    Returns:
        ``(left, right, label)``: int32 indices into the class-sorted images
        and float32 labels (1 = same), each ``(batch_size,)``.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=7)
    offset, size = tf.constant(index.offset), tf.constant(index.size)
    n_same = batch_size // 2
    label = tf.cast(tf.range(batch_size) < n_same, tf.float32)
    num_classes = index.num_classes
    c1 = tf.random.stateless_uniform((batch_size,), seeds[0], 0, num_classes, tf.int32)

    # Different pairs: step 1..n-1 away within the alphabet or the whole set,
    # so the second character never equals the first.
    a_start = tf.gather(index.alphabet_start, c1)
    a_size = tf.gather(index.alphabet_size, c1)
    within = tf.random.stateless_uniform((batch_size,), seeds[1]) < within_alphabet
    within = tf.logical_and(within, a_size > 1)
    c_within = a_start + (c1 - a_start + 1 + _randint(seeds[2], tf.maximum(a_size - 1, 1))) % a_size
    c_any = (c1 + 1 + _randint(seeds[3], tf.fill((batch_size,), num_classes - 1))) % num_classes
    c2 = tf.where(label > 0, c1, tf.where(within, c_within, c_any))

    size1, size2 = tf.gather(size, c1), tf.gather(size, c2)
    d1 = _randint(seeds[4], size1)
    # Same pairs take a different drawer: d1 + 1..n-1 (mod n).
    step = _randint(seeds[5], tf.maximum(size1 - 1, 1))
    d2_same = (d1 + 1 + step) % size1
    d2_diff = _randint(seeds[6], size2)
    d2 = tf.where(label > 0, d2_same, d2_diff)
    left = tf.gather(offset, c1) + d1
    right = tf.gather(offset, c2) + d2
    return left, right, label


# The draws of a batch's quarter turns and mirrors, folded into its seed.
_TURNS, _MIRRORS = 4, 5


def _character_draws(batch_seed: tf.Tensor, draw: int, shape, values: int) -> tf.Tensor:
    """Ints below ``values`` of ``shape``, apart from the seeds a batch's other draws split off.

    Their seed is folded in rather than split, so that turning or mirroring leaves every
    other draw of the batch, and so a stream without them, exactly as it is.
    """
    seed = tf.random.experimental.stateless_fold_in(batch_seed, draw)
    return tf.random.stateless_uniform(shape, seed, 0, values, tf.int32)


def _character_symmetries(batch_seed: tf.Tensor, shape, turn: bool, mirror: bool) -> tf.Tensor:
    """A random symmetry (``augmentation.turn_or_mirror``) per character: int32 ``shape``.

    0 to 3 quarter turns with ``turn``, mirrored with probability 0.5 with ``mirror``.
    """
    k = tf.zeros(shape, tf.int32)
    if mirror:
        k += 4 * _character_draws(batch_seed, _MIRRORS, shape, 2)
    if turn:
        k += _character_draws(batch_seed, _TURNS, shape, 4)
    return k


def _seeded_batches(
    make_batch, steps: int | None, seed: int, first_step: tf.Variable | int = 0
) -> tf.data.Dataset:
    """Batches ``make_batch(stateless_seed)``, made in parallel and prefetched.

    With ``steps``, each iteration is ``steps`` batches, new ones every
    iteration: the seeds come from ``Dataset.random(rerandomize_each_iteration=True)``.
    With ``steps=None`` the dataset is one endless stream whose batch ``k`` has
    the seed ``(seed, first_step + k)``: what ``fit(steps_per_epoch=...)`` reads
    through a single iterator, and what a resumed run continues where the killed
    one stopped, ``first_step`` being a variable set before iteration starts.
    """
    if steps is None:
        steps_taken = tf.data.Dataset.counter(dtype=tf.int64)
        seeds = steps_taken.map(
            lambda k: tf.stack([tf.constant(seed, tf.int64), k + tf.cast(first_step, tf.int64)])
        )
    else:
        seeds = (
            tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            .batch(2, drop_remainder=True)
            .take(steps)
        )
    # No autotuning. Its background thread re-tunes ever less often, up to once a minute,
    # and deleting the iterator waits for its next wake-up, so model.fit returns long after
    # the last epoch and past the presets' time limits. Untuned, AUTOTUNE's defaults make
    # batches as fast here, still many times faster than training consumes them
    # (docs/ablations.md, "Untuned tf.data streams"; docs/benchmarks.md, "The pair pipeline").
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        seeds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def pair_dataset(
    split: OmniglotImages,
    *,
    image_size: int,
    batch_size: int,
    steps: int | None,
    seed: int,
    distortion: Distortion | None = Distortion(),
    within_alphabet: float = 0.0,
    turn: bool = False,
    mirror_characters: bool = False,
    first_step: tf.Variable | int = 0,
) -> tf.data.Dataset:
    """Balanced same/different pairs, ``steps`` batches per epoch.

    Each epoch draws new pairs and new distortions (``rerandomize_each_iteration``),
    reproducibly from ``seed``; ``steps=None`` makes one endless stream for
    ``fit(steps_per_epoch=...)``, starting at its batch ``first_step``.
    With ``turn``, each character of a pair is turned by a random number of
    quarter turns, the two images of a same pair by the same number; with
    ``mirror_characters``, mirrored with probability 0.5, the two of a same pair
    alike (``augmentation.turn_or_mirror``).
    Elements are ``({"left": x1, "right": x2}, y)``
    with ``x`` float32 ``(batch_size, image_size, image_size, 1)`` and ``y``
    float32 ``(batch_size, 1)``.
    """
    index = PairIndex.from_split(split)
    images = to_model_input(split.images[index.order], image_size)

    def make_batch(batch_seed):
        pair_seed, left_seed, right_seed = tf.unstack(
            tf.random.experimental.stateless_split(batch_seed, num=3)
        )
        left, right, label = sample_pair_indices(index, batch_size, pair_seed, within_alphabet)
        x1, x2 = tf.gather(images, left), tf.gather(images, right)
        if turn or mirror_characters:
            k = _character_symmetries(batch_seed, (2, batch_size), turn, mirror_characters)
            x1 = turn_or_mirror(x1, k[0])
            x2 = turn_or_mirror(x2, tf.where(label > 0, k[0], k[1]))
        if distortion is not None:
            # Each image of a pair gets its own transform (paper, sec. 3.4).
            x1 = distort(x1, left_seed, distortion)
            x2 = distort(x2, right_seed, distortion)
        return {"left": x1, "right": x2}, label[:, None]

    return _seeded_batches(make_batch, steps, seed, first_step)


def _random_subsets(seed, sizes, k: int, max_size: int) -> tf.Tensor:
    """``k`` distinct indices below ``sizes[i]`` for each row ``i``: int32 ``(len(sizes), k)``.

    Random keys sorted per row, with the indices at or past a row's size pushed to the end.
    """
    keys = tf.random.stateless_uniform((tf.shape(sizes)[0], max_size), seed)
    keys += tf.cast(tf.range(max_size)[None, :] >= sizes[:, None], tf.float32) * 2.0
    return tf.argsort(keys, axis=1, stable=True)[:, :k]


def character_batch_dataset(
    split: OmniglotImages,
    *,
    image_size: int,
    alphabets: int,
    characters: int,
    drawers: int,
    steps: int | None,
    seed: int,
    distortion: Distortion | None = Distortion(),
    turn: bool = False,
    mirror_characters: bool = False,
    first_step: tf.Variable | int = 0,
) -> tf.data.Dataset:
    """Batches of characters for all-pairs training, ``steps`` batches per epoch.

    Each batch takes ``alphabets`` alphabets, ``characters`` characters of each
    and ``drawers`` drawings of each character: ``B = alphabets * characters *
    drawers`` images, whose ``B (B - 1) / 2`` pairs all serve as training pairs
    (see ``training.AllPairsCrossEntropy``). Different characters of one
    alphabet, the pairs a within-alphabet one-shot task has to tell apart, make
    up most of the different pairs. Every image gets its own distortion. With
    ``turn``, each character is first turned by a random number of quarter
    turns, all its drawings alike; with ``mirror_characters``, mirrored with
    probability 0.5, all its drawings alike (``augmentation.turn_or_mirror``).

    Elements are ``(x, y)``: ``x`` float32 ``(B, image_size, image_size, 1)``
    and ``y`` int32 ``(B,)``, the character of each image (an index into the
    split's characters). Reproducible from ``seed``, new batches each epoch;
    ``steps=None`` makes one endless stream starting at its batch ``first_step``
    (see ``pair_dataset``).

    Raises:
        ValueError: no alphabet has ``characters`` characters, or a character
            has fewer than ``drawers`` drawings.
    """
    index = PairIndex.from_split(split)
    if index.size.min() < drawers:
        raise ValueError(
            f"{drawers} drawers per character requested; some characters have {index.size.min()}"
        )
    first_class = np.unique(index.alphabet_start)
    alphabet_sizes = index.alphabet_size[first_class]
    eligible = alphabet_sizes >= characters
    if eligible.sum() < alphabets:
        raise ValueError(
            f"{alphabets} alphabets of {characters} characters requested; the split has "
            f"{int(eligible.sum())} alphabets with that many"
        )
    first_class, alphabet_sizes = first_class[eligible], alphabet_sizes[eligible]
    images = to_model_input(split.images[index.order], image_size)
    offset, size = tf.constant(index.offset), tf.constant(index.size)
    n_alphabets = len(first_class)
    first_class = tf.constant(first_class, tf.int32)
    alphabet_sizes = tf.constant(alphabet_sizes, tf.int32)
    max_characters, max_drawers = int(alphabet_sizes.numpy().max()), int(index.size.max())

    def make_batch(batch_seed):
        s = tf.unstack(tf.random.experimental.stateless_split(batch_seed, num=4))
        chosen = _random_subsets(s[0], tf.fill((1,), n_alphabets), alphabets, n_alphabets)[0]
        chars = _random_subsets(s[1], tf.gather(alphabet_sizes, chosen), characters, max_characters)
        classes = tf.reshape(tf.gather(first_class, chosen)[:, None] + chars, [-1])
        picks = _random_subsets(s[2], tf.gather(size, classes), drawers, max_drawers)
        x = tf.gather(images, tf.reshape(tf.gather(offset, classes)[:, None] + picks, [-1]))
        if turn or mirror_characters:
            shape = (alphabets * characters,)
            k = _character_symmetries(batch_seed, shape, turn, mirror_characters)
            x = turn_or_mirror(x, tf.repeat(k, drawers))
        if distortion is not None:
            x = distort(x, s[3], distortion)
        return x, tf.repeat(classes, drawers)

    return _seeded_batches(make_batch, steps, seed, first_step)
