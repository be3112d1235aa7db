"""Tests for keras_siamese.augmentation: the paper's random affine distortions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_siamese.augmentation import (
    Distortion,
    affine_transforms,
    distort,
    random_affine_parameters,
    symmetry_transforms,
    transform,
    turn_or_mirror,
    view_transforms,
)

SIZE = 28
IDENTITY = {
    "theta": 0.0,
    "shear_x": 0.0,
    "shear_y": 0.0,
    "scale_x": 1.0,
    "scale_y": 1.0,
    "tx": 0.0,
    "ty": 0.0,
}


def _params(n: int = 1, **values) -> dict[str, tf.Tensor]:
    merged = {**IDENTITY, **values}
    return {k: tf.fill((n,), tf.constant(v, tf.float32)) for k, v in merged.items()}


def _transform(images: np.ndarray, params: dict[str, tf.Tensor]) -> np.ndarray:
    """Resamples images with the rows of `affine_transforms`, as `distort` does."""
    import keras

    rows = affine_transforms(params, images.shape[1])
    out = keras.ops.image.affine_transform(
        images, rows, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )
    return keras.ops.convert_to_numpy(out)


def _strokes(n: int = 4, seed: int = 0) -> np.ndarray:
    """A few line drawings: ink 1 on paper 0, like the model's inputs."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 1), np.float32)
    for image in images:
        r, c = rng.integers(6, SIZE - 6, size=2)
        image[r, 4:-4] = 1.0
        image[4:-4, c] = 1.0
    return images


@pytest.fixture(scope="module")
def many_parameters() -> dict[str, np.ndarray]:
    params = random_affine_parameters(4000, tf.constant([3, 7]), Distortion(), SIZE)
    return {k: v.numpy() for k, v in params.items()}


def test_identity_parameters_give_identity_rows():
    rows = affine_transforms(_params(3), SIZE).numpy()
    np.testing.assert_allclose(rows, np.tile([1, 0, 0, 0, 1, 0, 0, 0], (3, 1)), atol=1e-6)
    images = _strokes()
    np.testing.assert_allclose(_transform(images, _params(len(images))), images, atol=1e-6)


def test_distort_is_deterministic_per_seed():
    images = tf.constant(_strokes(8))
    a = distort(images, tf.constant([1, 2]), Distortion()).numpy()
    b = distort(images, tf.constant([1, 2]), Distortion()).numpy()
    c = distort(images, tf.constant([1, 3]), Distortion()).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == np.float32
    assert not np.allclose(a, c)
    # Some images of the batch are actually distorted (each component has p = 0.5).
    changed = np.abs(a - images.numpy()).max(axis=(1, 2, 3)) > 1e-3
    assert changed.sum() >= 4


def test_distort_fills_with_blank_paper():
    blank = tf.zeros((16, SIZE, SIZE, 1))
    np.testing.assert_array_equal(distort(blank, tf.constant([0, 0]), Distortion()).numpy(), 0.0)


def test_sampled_parameters_stay_in_the_papers_ranges(many_parameters):
    p = many_parameters
    assert all(v.shape == (4000,) and v.dtype == np.float32 for v in p.values())
    assert np.abs(p["theta"]).max() <= math.radians(10.0) + 1e-6
    assert np.abs(p["shear_x"]).max() <= 0.3 + 1e-6
    assert np.abs(p["shear_y"]).max() <= 0.3 + 1e-6
    for key in ("scale_x", "scale_y"):
        assert p[key].min() >= 0.8 - 1e-6 and p[key].max() <= 1.2 + 1e-6
    max_shift = 2.0 * SIZE / 105
    assert np.abs(p["tx"]).max() <= max_shift + 1e-6
    assert np.abs(p["ty"]).max() <= max_shift + 1e-6
    # The ranges are used, not just respected.
    assert np.abs(p["theta"]).max() > math.radians(9.0)
    assert np.abs(p["tx"]).max() > 0.9 * max_shift


def test_each_component_is_active_half_the_time(many_parameters):
    p = many_parameters
    active = {
        "rotation": p["theta"] != 0.0,
        "shear": p["shear_x"] != 0.0,
        "scale": p["scale_x"] != 1.0,
        "translation": p["tx"] != 0.0,
    }
    for name, used in active.items():
        assert 0.45 < used.mean() < 0.55, (name, used.mean())
    # A component's two parameters are switched on together.
    np.testing.assert_array_equal(active["shear"], p["shear_y"] != 0.0)
    np.testing.assert_array_equal(active["scale"], p["scale_y"] != 1.0)
    np.testing.assert_array_equal(active["translation"], p["ty"] != 0.0)
    # ... and independently of the other components.
    for a, b in [("rotation", "shear"), ("scale", "translation"), ("rotation", "translation")]:
        assert 0.2 < np.mean(active[a] & active[b]) < 0.3, (a, b)


def test_translation_scales_with_the_image_size():
    seed = tf.constant([5, 5])
    small = random_affine_parameters(500, seed, Distortion(), 28)
    large = random_affine_parameters(500, seed, Distortion(), 105)
    np.testing.assert_allclose(small["tx"].numpy() * 105 / 28, large["tx"].numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(large["tx"].numpy()).max() <= 2.0 + 1e-6


def test_scaled_distortion_stretches_every_range_but_not_the_probability(many_parameters):
    strong = Distortion().scaled(1.5)
    assert (strong.rotation_deg, strong.shear, strong.translation_px) == pytest.approx((15.0, 0.45, 3.0))
    assert (strong.scale_min, strong.scale_max, strong.probability) == pytest.approx((0.7, 1.3, 0.5))
    p = {k: v.numpy() for k, v in random_affine_parameters(4000, tf.constant([3, 7]), strong, 105).items()}
    paper = many_parameters  # the same seed at the paper's strength
    # The same draws, stretched: rotation, shear and translation by 1.5, scale's distance from 1 too.
    np.testing.assert_allclose(p["theta"], 1.5 * paper["theta"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p["shear_x"], 1.5 * paper["shear_x"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p["scale_y"] - 1, 1.5 * (paper["scale_y"] - 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p["tx"], 1.5 * paper["tx"] * 105 / SIZE, rtol=1e-4, atol=1e-6)
    assert np.abs(p["theta"]).max() > np.radians(10.0)  # beyond the paper's range


def test_zero_strength_leaves_images_as_they_are():
    images = _strokes()
    out = distort(tf.constant(images), tf.constant([4, 2]), Distortion().scaled(0.0)).numpy()
    np.testing.assert_allclose(out, images, atol=1e-6)
    with pytest.raises(ValueError, match="at least 0"):
        Distortion().scaled(-1.0)


def test_translation_moves_a_pixel_by_the_offset():
    """Forward map p -> A(p - c) + c + t with p = (x, y) = (column, row)."""
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    row, col = 10, 12
    image[0, row, col, 0] = 1.0
    out = _transform(image, _params(tx=3.0, ty=-2.0))[0, ..., 0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(out), out.shape) == (row - 2, col + 3)
    assert out[row - 2, col + 3] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "values",
    [
        dict(theta=math.radians(10.0)),
        dict(shear_x=0.3),
        dict(shear_y=-0.3),
        dict(scale_x=1.2, scale_y=0.8),
        dict(theta=-0.15, shear_x=0.2, shear_y=-0.1, scale_x=0.9, scale_y=1.1, tx=1.5, ty=-0.5),
    ],
    ids=["rotation", "shear-x", "shear-y", "scale", "all"],
)
def test_forward_map_moves_ink_where_documented(values):
    """A small blob's centre of ink lands at A (p - c) + c + t, A = R @ Sh @ S."""
    theta = values.get("theta", 0.0)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shear = np.array([[1.0, values.get("shear_x", 0.0)], [values.get("shear_y", 0.0), 1.0]])
    scale = np.diag([values.get("scale_x", 1.0), values.get("scale_y", 1.0)])
    a = rotation @ shear @ scale
    centre = np.full(2, (SIZE - 1) / 2)
    t = np.array([values.get("tx", 0.0), values.get("ty", 0.0)])

    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    row, col = 6, 20  # far from the centre, so rotation and shear move it by pixels
    image[0, row - 1 : row + 2, col - 1 : col + 2, 0] = 1.0
    out = _transform(image, _params(**values))[0, ..., 0]
    rows, cols = np.indices(out.shape)
    found = np.array([(out * cols).sum(), (out * rows).sum()]) / out.sum()  # (x, y)
    expected = a @ (np.array([col, row]) - centre) + centre + t
    assert np.abs(expected - np.array([col, row])).max() > 1.0  # the test moves the blob
    np.testing.assert_allclose(found, expected, atol=0.25)


def _symmetric(image: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` of one ``(S, S, C)`` image in numpy: mirrored where ``k % 8 >= 4``, then
    turned ``k % 4`` quarter turns anticlockwise."""
    return np.rot90(np.fliplr(image) if k % 8 >= 4 else image, k % 4)


def test_turn_or_mirror_gives_each_image_its_own_symmetry():
    images = tf.random.stateless_uniform((10, 5, 5, 1), (0, 1))
    k = tf.constant([0, 1, 2, 3, 4, 5, 6, 7, 8, -1])
    changed = turn_or_mirror(images, k).numpy()
    for image, symmetry, out in zip(images.numpy(), k.numpy(), changed):
        np.testing.assert_array_equal(out, _symmetric(image, symmetry))


@pytest.mark.parametrize("k", range(8))
def test_symmetry_rows_mirror_then_turn_exactly(k):
    images = tf.random.stateless_uniform((3, 9, 9, 1), (0, 3))
    row = symmetry_transforms(tf.constant([k]), 9)[0]
    expected = [_symmetric(image, k) for image in images.numpy()]
    np.testing.assert_array_equal(transform(images, row).numpy(), np.stack(expected))


@pytest.mark.parametrize("count", [4, 8])
def test_symmetric_views_apply_their_symmetry_then_their_distortion(count):
    images = tf.constant(_strokes())
    plain = view_transforms(10, SIZE, (3, 4))
    symmetric = view_transforms(10, SIZE, (3, 4), symmetries=count)
    np.testing.assert_array_equal(symmetric[0], plain[0])  # view 0: the images as they are
    for v in range(1, 10):
        turned = transform(images, symmetry_transforms(tf.constant([v % count]), SIZE)[0])
        np.testing.assert_allclose(
            transform(images, symmetric[v]).numpy(), transform(turned, plain[v]).numpy(), atol=1e-4
        )
    with pytest.raises(ValueError, match="symmetries must be 1, 4 or 8"):
        view_transforms(2, SIZE, symmetries=2)


def test_flip_mirrors_about_half_the_images_each_on_its_own_and_leaves_the_rest():
    images = np.zeros((64, 16, 16, 1), np.float32)
    images[:, :, :4] = 1.0  # a bar on the left
    seed = tf.constant([1, 2])
    flipped = distort(tf.constant(images), seed, Distortion(flip=0.5).scaled(0.0)).numpy()
    mirrored = flipped[:, :, -4:].mean(axis=(1, 2, 3)) > 0.9
    assert 0.3 < mirrored.mean() < 0.7
    np.testing.assert_array_equal(flipped[~mirrored], images[~mirrored])
    np.testing.assert_array_equal(flipped[mirrored], images[mirrored][:, :, ::-1])
    # Without flips the draws are the paper's, exactly as before the option existed.
    paper = distort(tf.constant(images), seed, Distortion()).numpy()
    np.testing.assert_array_equal(paper, distort(tf.constant(images), seed, Distortion(flip=0.0)).numpy())
