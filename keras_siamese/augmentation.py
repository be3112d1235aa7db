"""The paper's affine distortions, done in the TensorFlow graph.

Koch et al. (2015, sec. 3.4) distort each image of a training pair with a
random affine transform T = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y): rotation
within +-10 degrees, shear within +-0.3, scale within 0.8-1.2 and translation
within +-2 pixels, each of the four components included with probability 0.5.
The components are composed into one matrix per image and applied in a single
resampling with ``keras.ops.image.affine_transform``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from keras_siamese.config import TTA_SYMMETRIES, TTA_SYMMETRY_CHOICES


@dataclasses.dataclass(frozen=True)
class Distortion:
    """Ranges of the random affine distortion, in the paper's units.

    Translations are given in pixels of a ``reference_size`` image (Omniglot's
    105x105) and are scaled to the size of the images being distorted. ``flip`` is the
    probability of mirroring an image left to right, for images whose mirror image shows
    the same class (a face, an object; not a character): 0 in the paper.
    """

    rotation_deg: float = 10.0
    shear: float = 0.3
    scale_min: float = 0.8
    scale_max: float = 1.2
    translation_px: float = 2.0
    probability: float = 0.5
    reference_size: int = 105
    flip: float = 0.0

    def scaled(self, strength: float) -> "Distortion":
        """These ranges times ``strength`` (scale as its distance from 1): 0 is no distortion.

        The probability of each component stays as it is, so ``strength`` changes how far
        an image is distorted, not how often.
        """
        if strength < 0:
            raise ValueError(f"strength must be at least 0, got {strength}")
        return dataclasses.replace(
            self,
            rotation_deg=self.rotation_deg * strength,
            shear=self.shear * strength,
            scale_min=1.0 - (1.0 - self.scale_min) * strength,
            scale_max=1.0 + (self.scale_max - 1.0) * strength,
            translation_px=self.translation_px * strength,
        )


def _uniform(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def random_affine_parameters(
    batch_size: int, seed: tf.Tensor, distortion: Distortion, image_size: int
) -> dict[str, tf.Tensor]:
    """Draws the paper's transform parameters for ``batch_size`` images.

    Returns a dict of float32 ``(batch_size,)`` tensors: ``theta`` (radians),
    ``shear_x``, ``shear_y``, ``scale_x``, ``scale_y``, ``tx``, ``ty`` (pixels
    of an ``image_size`` image). A component that is not drawn (probability
    ``1 - distortion.probability``) holds its identity value.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    shape = (batch_size,)
    keep = [
        _uniform(shape, seeds[i], 0.0, 1.0) < distortion.probability for i in range(4)
    ]
    uses_rotation, uses_shear, uses_scale, uses_translation = keep
    max_theta = math.radians(distortion.rotation_deg)
    max_t = distortion.translation_px * image_size / distortion.reference_size

    def pick(use, values, identity):
        return tf.where(use, values, tf.fill(shape, identity))

    shear = _uniform((2, batch_size), seeds[5], -distortion.shear, distortion.shear)
    scale = _uniform((2, batch_size), seeds[6], distortion.scale_min, distortion.scale_max)
    shift = _uniform((2, batch_size), seeds[7], -max_t, max_t)
    scale_x = pick(uses_scale, scale[0], 1.0)
    if distortion.flip:
        # A seed folded in, not split off: the other draws stay as they are without flips.
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 8)
        flipped = _uniform(shape, flip_seed, 0.0, 1.0) < distortion.flip
        scale_x = tf.where(flipped, -scale_x, scale_x)
    return {
        "theta": pick(uses_rotation, _uniform(shape, seeds[4], -max_theta, max_theta), 0.0),
        "shear_x": pick(uses_shear, shear[0], 0.0),
        "shear_y": pick(uses_shear, shear[1], 0.0),
        "scale_x": scale_x,
        "scale_y": pick(uses_scale, scale[1], 1.0),
        "tx": pick(uses_translation, shift[0], 0.0),
        "ty": pick(uses_translation, shift[1], 0.0),
    }


def affine_transforms(params: dict[str, tf.Tensor], image_size: int) -> tf.Tensor:
    """Turns transform parameters into ``affine_transform``'s ``(N, 8)`` rows.

    The forward map sends an input pixel ``p`` to ``A (p - c) + c + t`` with
    ``A = rotation @ shear @ scale`` about the image centre ``c``.
    ``affine_transform`` wants the inverse (output pixel -> input pixel), so
    the rows hold ``A^-1`` and ``c - A^-1 (c + t)``.
    """
    cos, sin = tf.cos(params["theta"]), tf.sin(params["theta"])
    # A = R @ Sh @ S with R = [[cos, -sin], [sin, cos]],
    # Sh = [[1, shear_x], [shear_y, 1]], S = diag(scale_x, scale_y).
    sx, sy = params["scale_x"], params["scale_y"]
    hx, hy = params["shear_x"], params["shear_y"]
    a = (cos - sin * hy) * sx
    b = (cos * hx - sin) * sy
    c = (sin + cos * hy) * sx
    d = (sin * hx + cos) * sy
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    centre = (image_size - 1) / 2.0
    qx, qy = centre + params["tx"], centre + params["ty"]
    ox = centre - (ia * qx + ib * qy)
    oy = centre - (ic * qx + id_ * qy)
    zeros = tf.zeros_like(a)
    return tf.stack([ia, ib, ox, ic, id_, oy, zeros, zeros], axis=1)


def distort(images: tf.Tensor, seed: tf.Tensor, distortion: Distortion) -> tf.Tensor:
    """Applies an independent random paper distortion to each image.

    Args:
        images: float ``(N, S, S, C)`` model inputs (paper = 0, so the area
            uncovered by the transform is filled with blank paper).
        seed: int ``(2,)`` stateless seed; the same seed gives the same output.
        distortion: the ranges to draw from.
    """
    image_size = images.shape[1]
    params = random_affine_parameters(tf.shape(images)[0], seed, distortion, image_size)
    transforms = affine_transforms(params, image_size)
    return keras.ops.image.affine_transform(
        images, transforms, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )


def turn_or_mirror(images: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Applies symmetry ``k[i]`` of the square (``symmetry_transforms``) to image ``i``.

    A character turned by a quarter, a half or three quarters, or mirrored, is a
    new character to the network: training on them multiplies the characters it
    learns to tell apart by up to eight (quarter turns: Santoro et al. 2016;
    Vinyals et al. 2016), where the paper's small distortions only vary each one.
    The resampling is exact, so the pixels are only moved, never blended.

    Args:
        images: float ``(N, S, S, C)``.
        k: int ``(N,)``: ``k % 4`` quarter turns anticlockwise, mirrored left to
            right first where ``k % 8 >= 4``.
    """
    rows = symmetry_transforms(k, images.shape[1])
    return keras.ops.image.affine_transform(
        images, rows, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )


def symmetry_transforms(symmetries: tf.Tensor, image_size: int) -> tf.Tensor:
    """``affine_transform`` rows ``(N, 8)`` of exact symmetries of a square image.

    Symmetry ``k`` (taken modulo 8) mirrors the image left to right when ``k >= 4``,
    then turns it by ``k % 4`` quarter turns anticlockwise, as resampling rows that
    map pixel centres onto pixel centres, so the result is the same to the last bit.
    Training turns characters with them (``turn_or_mirror``), test-time augmentation
    folds them into its views (``view_transforms``).
    """
    edge = float(image_size - 1)
    # Output pixel (x, y) -> input pixel: a quarter turn takes it from (edge - y, x),
    # a mirror from (edge - x, y). As 3x3 matrices on (x, y, 1); the image is mirrored
    # first, so the mirror's matrix acts last on output pixels.
    turn = np.array([[0.0, -1.0, edge], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    flip = np.array([[-1.0, 0.0, edge], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    turns = [np.linalg.matrix_power(turn, n) for n in range(4)]
    table = tf.constant(np.stack(turns + [flip @ t for t in turns]), tf.float32)
    return _rows(tf.gather(table, tf.cast(symmetries, tf.int32) % 8))


def _rows(matrices: tf.Tensor) -> tf.Tensor:
    """``(N, 3, 3)`` affine matrices (output -> input pixel) as ``affine_transform`` rows."""
    top = tf.reshape(matrices[:, :2, :], (-1, 6))
    return tf.concat([top, tf.zeros_like(top[:, :2])], axis=1)


def _matrices(rows: tf.Tensor) -> tf.Tensor:
    """``affine_transform`` rows ``(N, 8)`` (no projective part) as ``(N, 3, 3)`` matrices."""
    bottom = tf.tile(tf.constant([[[0.0, 0.0, 1.0]]]), (tf.shape(rows)[0], 1, 1))
    return tf.concat([tf.reshape(rows[:, :6], (-1, 2, 3)), bottom], axis=1)


def view_transforms(
    views: int,
    image_size: int,
    seed: tuple[int, int] = (0, 0),
    distortion: Distortion = Distortion(),
    symmetries: int = 1,
) -> tf.Tensor:
    """Fixed transforms for test-time augmentation: ``affine_transform`` rows ``(views, 8)``.

    Row 0 is the identity (the image as it is); rows ``1..views-1`` are draws of
    ``distortion`` made once from ``seed``. An image's view ``v`` thus depends
    only on the image and ``v``, never on the batch it comes in, so a
    SavedModel and an offline scorer given the same rows score identically.
    With ``symmetries`` 4 (the quarter turns) or 8 (each also mirrored), view
    ``v`` first applies symmetry ``v % symmetries`` (``symmetry_transforms``),
    then its distortion, the order in which training turns and distorts.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    if symmetries not in TTA_SYMMETRY_CHOICES:
        raise ValueError(f"symmetries must be 1, 4 or 8, got {symmetries}")
    identity = tf.constant([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    params = random_affine_parameters(views - 1, tf.constant(seed), distortion, image_size)
    rows = tf.concat([identity, affine_transforms(params, image_size)], axis=0)
    if symmetries == 1:
        return rows
    # Symmetry first, then distortion: output pixel -> distorted -> symmetric -> input.
    symmetric = _matrices(symmetry_transforms(tf.range(views) % symmetries, image_size))
    return _rows(symmetric @ _matrices(rows))


def transform(images: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
    """Applies one ``affine_transform`` row (8,) to every image of a batch (paper = 0 fills)."""
    rows = tf.tile(tf.reshape(row, (1, 8)), (tf.shape(images)[0], 1))
    return keras.ops.image.affine_transform(
        images, rows, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )


def tta_transforms(
    views: int,
    image_size: int,
    seed: int = 0,
    distortion: Distortion = Distortion(),
    symmetries: int = TTA_SYMMETRIES,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Test-time augmentation views of queries and of support images, ``(views, 8)`` each.

    Two independent sets of distortions, so that the two images of a pair are
    distorted independently, as in training; the symmetry of a view (see
    ``view_transforms``) is the same in both. Turning or mirroring the query and
    every candidate alike leaves a task the same task, so each symmetric view is
    another valid look at it, one the network has learnt where it was trained on
    turned characters.
    """
    return (
        view_transforms(views, image_size, (seed, 0), distortion, symmetries),
        view_transforms(views, image_size, (seed, 1), distortion, symmetries),
    )
