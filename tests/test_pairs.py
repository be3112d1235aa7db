"""Tests for keras_siamese.pairs on the real training split."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_siamese.augmentation import Distortion
from keras_siamese.pairs import (
    PairIndex,
    character_batch_dataset,
    pair_dataset,
    sample_pair_indices,
)
from keras_siamese.preprocessing import to_model_input

SIZE = 28


@pytest.fixture(scope="module")
def train(splits):
    return splits["train"]


@pytest.fixture(scope="module")
def small_train(train):
    """Three alphabets of the training split: quick to preprocess, still 20+ characters each."""
    alphabets = sorted(set(train.alphabet))[:3]
    return train.select(np.isin(train.alphabet, alphabets))


def _sampled(split, batch_size, seed, within_alphabet=0.0):
    """Pairs from `sample_pair_indices`, mapped back to rows of `split`."""
    index = PairIndex.from_split(split)
    left, right, label = sample_pair_indices(
        index, batch_size, tf.constant(seed), within_alphabet=within_alphabet
    )
    return index.order[left.numpy()], index.order[right.numpy()], label.numpy()


def test_pair_index_groups_characters_and_alphabets(train):
    index = PairIndex.from_split(train)
    assert index.num_classes == len(np.unique(train.character)) == 964
    character = train.character[index.order]
    alphabet = train.alphabet[index.order]
    for c in range(index.num_classes):
        rows = slice(index.offset[c], index.offset[c] + index.size[c])
        assert len(set(character[rows])) == 1
        first = index.offset[index.alphabet_start[c]]
        last_class = index.alphabet_start[c] + index.alphabet_size[c] - 1
        end = index.offset[last_class] + index.size[last_class]
        assert set(alphabet[first:end]) == {alphabet[index.offset[c]]}
    assert index.size.sum() == len(train)
    assert np.all(index.size == 12)  # drawers 1-12


@pytest.mark.parametrize("seed", [[0, 1], [7, 42]])
def test_batches_are_balanced_and_labelled_right(train, seed):
    left, right, label = _sampled(train, 256, seed)
    np.testing.assert_array_equal(label, np.r_[np.ones(128), np.zeros(128)])
    same = label == 1
    # Same pairs: one character, two different drawers.
    np.testing.assert_array_equal(train.character[left[same]], train.character[right[same]])
    assert np.all(train.drawer[left[same]] != train.drawer[right[same]])
    # Different pairs: two characters.
    assert np.all(train.character[left[~same]] != train.character[right[~same]])
    # Pairs come from all over the split, not a corner of it.
    assert len(np.unique(train.character[left])) > 200
    assert len(np.unique(train.alphabet[right[~same]])) > 20  # of 30


def test_within_alphabet_one_keeps_different_pairs_in_the_alphabet(train):
    left, right, label = _sampled(train, 512, [3, 4], within_alphabet=1.0)
    different = label == 0
    np.testing.assert_array_equal(train.alphabet[left[different]], train.alphabet[right[different]])
    assert np.all(train.character[left[different]] != train.character[right[different]])
    # With 0.0 the second character is drawn from the whole split (30 alphabets).
    left, right, label = _sampled(train, 512, [3, 4], within_alphabet=0.0)
    different = label == 0
    same_alphabet = np.mean(train.alphabet[left[different]] == train.alphabet[right[different]])
    assert same_alphabet < 0.15


def test_pair_dataset_shapes_and_dtypes(small_train):
    ds = pair_dataset(small_train, image_size=SIZE, batch_size=16, steps=3, seed=0)
    batches = list(ds)
    assert len(batches) == 3
    x, y = batches[0]
    assert set(x) == {"left", "right"}
    for side in ("left", "right"):
        assert x[side].dtype == tf.float32 and tuple(x[side].shape) == (16, SIZE, SIZE, 1)
        assert 0.0 <= float(tf.reduce_min(x[side])) and float(tf.reduce_max(x[side])) <= 1.0 + 1e-6
    assert y.dtype == tf.float32 and tuple(y.shape) == (16, 1)
    np.testing.assert_array_equal(y.numpy()[:, 0], np.r_[np.ones(8), np.zeros(8)])


def test_pair_dataset_images_match_their_labels(small_train):
    """Undistorted pairs hold the split's images: same pairs one character, others two."""
    pixels = to_model_input(small_train.images, SIZE).numpy()
    lookup = {image.tobytes(): i for i, image in enumerate(pixels)}
    assert len(lookup) == len(small_train)
    ds = pair_dataset(
        small_train, image_size=SIZE, batch_size=32, steps=2, seed=5, distortion=None
    )
    for x, y in ds:
        left = np.array([lookup[image.tobytes()] for image in x["left"].numpy()])
        right = np.array([lookup[image.tobytes()] for image in x["right"].numpy()])
        same = y.numpy()[:, 0] == 1
        assert same.sum() == 16
        char_l, char_r = small_train.character[left], small_train.character[right]
        np.testing.assert_array_equal(char_l[same], char_r[same])
        assert np.all(small_train.drawer[left[same]] != small_train.drawer[right[same]])
        assert np.all(char_l[~same] != char_r[~same])


def _epoch(ds) -> list[np.ndarray]:
    """One pass over `ds`, each batch as one array: left and right images side by side."""
    return [np.concatenate([x["left"], x["right"]], axis=2) for x, _ in ds]


def test_same_seed_gives_the_same_pairs_epoch_by_epoch(small_train):
    def build(seed):
        return pair_dataset(small_train, image_size=SIZE, batch_size=8, steps=2, seed=seed)

    first, second = build(11), build(11)
    for _ in range(2):  # two epochs of each pipeline
        for a, b in zip(_epoch(first), _epoch(second), strict=True):
            np.testing.assert_array_equal(a, b)
    other = _epoch(build(12))
    assert not np.array_equal(other[0], _epoch(build(11))[0])


def test_each_epoch_draws_new_pairs(small_train):
    ds = pair_dataset(small_train, image_size=SIZE, batch_size=8, steps=2, seed=3)
    epoch1, epoch2 = _epoch(ds), _epoch(ds)
    assert len(epoch1) == len(epoch2) == 2
    for a, b in zip(epoch1, epoch2):
        assert not np.array_equal(a, b)


def test_an_endless_stream_starts_at_its_first_step(small_train):
    kwargs = dict(image_size=SIZE, batch_size=8, steps=None, seed=3)
    from_zero = _epoch(pair_dataset(small_train, **kwargs).take(5))
    assert len(from_zero) == 5
    assert not np.array_equal(from_zero[0], from_zero[1])
    for a, b in zip(_epoch(pair_dataset(small_train, first_step=3, **kwargs).take(2)), from_zero[3:]):
        np.testing.assert_array_equal(a, b)
    # A variable is read when batches are made, so it can be set after the pipeline is built
    # (as training does once a resumed run has restored its step count).
    first_step = tf.Variable(0, dtype=tf.int64)
    ds = pair_dataset(small_train, first_step=first_step, **kwargs).take(1)
    first_step.assign(4)
    np.testing.assert_array_equal(_epoch(ds)[0], from_zero[4])


def test_streams_run_without_autotuning(small_train):
    """Deleting an autotuned iterator waits for tf.data's tuning thread, which late in a run
    wakes once a minute: model.fit returned up to a minute after its last epoch."""
    streams = [
        pair_dataset(small_train, image_size=SIZE, batch_size=8, steps=None, seed=0),
        _character_batches(small_train, steps=None),
    ]
    for stream in streams:
        assert stream.options().autotune.enabled is False
        assert len(next(iter(stream))) == 2  # and it still makes batches


def test_distortion_changes_the_images_but_not_the_pairs(small_train):
    kwargs = dict(image_size=SIZE, batch_size=8, steps=1, seed=9)
    (x_plain, y_plain), = list(pair_dataset(small_train, distortion=None, **kwargs))
    (x_dist, y_dist), = list(pair_dataset(small_train, distortion=Distortion(), **kwargs))
    np.testing.assert_array_equal(y_plain, y_dist)
    assert not np.allclose(x_plain["left"], x_dist["left"])
    # Distortions move the ink; they do not invent or erase much of it.
    ink_plain = x_plain["left"].numpy().sum(axis=(1, 2, 3))
    ink_dist = x_dist["left"].numpy().sum(axis=(1, 2, 3))
    np.testing.assert_allclose(ink_dist, ink_plain, rtol=0.6)


def test_a_character_with_one_image_is_rejected(small_train):
    keep = (small_train.character != small_train.character[0]) | (small_train.drawer == 1)
    with pytest.raises(ValueError, match="at least two images"):
        PairIndex.from_split(small_train.select(keep))


def _character_batches(split, steps=2, seed=0, distortion=None, **shape):
    shape = {"alphabets": 3, "characters": 4, "drawers": 3, **shape}
    return character_batch_dataset(
        split, image_size=SIZE, steps=steps, seed=seed, distortion=distortion, **shape
    )


def test_character_batches_hold_whole_characters_of_a_few_alphabets(small_train):
    index = PairIndex.from_split(small_train)
    ordered = to_model_input(small_train.images[index.order], SIZE).numpy()
    class_alphabet = small_train.alphabet[index.order][index.offset]
    class_character = small_train.character[index.order][index.offset]
    for x, y in _character_batches(small_train, steps=3):
        x, y = x.numpy(), y.numpy()
        assert x.shape == (3 * 4 * 3, SIZE, SIZE, 1) and x.dtype == np.float32
        assert y.shape == (36,) and y.dtype == np.int32
        # 12 characters, 3 drawings each, in blocks: 4 characters of each of 3 alphabets.
        classes = y[::3]
        np.testing.assert_array_equal(y, np.repeat(classes, 3))
        assert len(np.unique(classes)) == 12
        alphabets = class_alphabet[classes].reshape(3, 4)
        assert all(len(set(row)) == 1 for row in alphabets)
        assert len({row[0] for row in alphabets}) == 3
        # Every image is a drawing of its character, each drawing at most once
        # (undistorted, so the pixels can be matched).
        for i, c in enumerate(y):
            rows = index.offset[c] + np.arange(index.size[c])
            hits = [r for r in rows if np.array_equal(ordered[r], x[i])]
            assert hits, f"image {i} is not a drawing of character {class_character[c]}"
        for c in classes:
            block = x[y == c].reshape(3, -1)
            assert len({b.tobytes() for b in block}) == 3


def test_character_batches_are_reproducible_and_new_each_epoch(small_train):
    dataset = _character_batches(small_train, distortion=Distortion())
    first = [(x.numpy(), y.numpy()) for x, y in dataset]
    second = [(x.numpy(), y.numpy()) for x, y in dataset]
    again = [(x.numpy(), y.numpy()) for x, y in _character_batches(small_train, distortion=Distortion())]
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    assert any(not np.array_equal(y1, y2) for (_, y1), (_, y2) in zip(first, second))


def test_character_batches_reject_shapes_the_split_cannot_fill(small_train):
    with pytest.raises(ValueError, match="13 drawers per character"):
        _character_batches(small_train, drawers=13)
    with pytest.raises(ValueError, match="4 alphabets of 4 characters"):
        _character_batches(small_train, alphabets=4)
    with pytest.raises(ValueError, match="alphabets of 200 characters"):
        _character_batches(small_train, characters=200)


def _symmetries_between(plain, changed):
    """``(mirrored, k)`` with ``rot90(fliplr(plain) if mirrored else plain, k) == changed``,
    for each image of a batch (mirrored first, then turned, as the pipeline does)."""
    return [
        {
            (flip, k)
            for flip in (False, True)
            for k in range(4)
            if np.array_equal(np.rot90(np.fliplr(p) if flip else p, k), c)
        }
        for p, c in zip(plain, changed)
    ]


# The symmetries each option draws from: 4 quarter turns, 2 mirror images, or all 8.
CHARACTER_SYMMETRIES = {
    (True, False): {(False, k) for k in range(4)},
    (False, True): {(False, 0), (True, 0)},
    (True, True): {(flip, k) for flip in (False, True) for k in range(4)},
}


@pytest.mark.parametrize("turn, mirror_characters", list(CHARACTER_SYMMETRIES))
def test_character_batches_turn_and_mirror_every_drawing_of_a_character_alike(
    small_train, turn, mirror_characters
):
    plain = [(x.numpy(), y.numpy()) for x, y in _character_batches(small_train, steps=3)]
    changed = [
        (x.numpy(), y.numpy())
        for x, y in _character_batches(
            small_train, steps=3, turn=turn, mirror_characters=mirror_characters
        )
    ]
    drawn = []
    for (x, y), (x_changed, y_changed) in zip(plain, changed):
        np.testing.assert_array_equal(y, y_changed)  # the same draws, only turned or mirrored
        symmetries = _symmetries_between(x, x_changed)
        for c in np.unique(y):
            common = set.intersection(*(symmetries[i] for i in np.flatnonzero(y == c)))
            assert common, f"the drawings of character {c} are not changed alike"
            drawn.append(min(common))
    # 108 characters: every symmetry of the option turns up, and no other.
    assert set(drawn) == CHARACTER_SYMMETRIES[turn, mirror_characters]


@pytest.mark.parametrize("turn, mirror_characters", list(CHARACTER_SYMMETRIES))
def test_pairs_turn_and_mirror_both_images_of_a_same_pair_alike(
    small_train, turn, mirror_characters
):
    kwargs = dict(image_size=SIZE, batch_size=64, steps=1, seed=5, distortion=None)
    ((plain, label),) = list(pair_dataset(small_train, **kwargs))
    ((changed, label_changed),) = list(
        pair_dataset(small_train, turn=turn, mirror_characters=mirror_characters, **kwargs)
    )
    np.testing.assert_array_equal(label, label_changed)
    left = _symmetries_between(plain["left"].numpy(), changed["left"].numpy())
    right = _symmetries_between(plain["right"].numpy(), changed["right"].numpy())
    assert all(left) and all(right)
    assert set.union(*left) <= CHARACTER_SYMMETRIES[turn, mirror_characters]
    same = label.numpy()[:, 0] > 0
    assert all(left[i] & right[i] for i in np.flatnonzero(same))
    # Different pairs change their two images independently: some differently.
    assert any(not left[i] & right[i] for i in np.flatnonzero(~same))
