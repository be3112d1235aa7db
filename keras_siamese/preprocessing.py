"""Image preprocessing shared by training, evaluation and serving.

Every image that reaches the network goes through :func:`to_model_input`, so a
model scored offline and a model scored through a SavedModel see exactly the
same pixels.
"""

from __future__ import annotations

import tensorflow as tf

# Omniglot PNGs are white (255) strokes-on-paper images; the network sees ink as
# 1.0 and paper as 0.0, so that the zero padding of convolutions and of the
# affine distortions is "blank paper".


def to_model_input(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Convert grey-scale images to the network's input.

    Args:
        images: uint8 (or float in [0, 255]) tensor of shape `(..., H, W, 1)`
            with 255 = white background and 0 = ink, as stored in Omniglot.
        image_size: side of the square image the network takes.

    Returns:
        float32 tensor `(..., image_size, image_size, 1)`, ink = 1, paper = 0.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4) or images.shape[-1] != 1:
        raise ValueError(
            f"expected grey-scale images of shape (H, W, 1) or (N, H, W, 1), "
            f"got {images.shape}"
        )
    x = 1.0 - tf.cast(images, tf.float32) / 255.0
    if x.shape[-3] != image_size or x.shape[-2] != image_size:
        # "area" averages the pixels that fall into each output pixel: thin
        # strokes stay visible when downsampling instead of aliasing away.
        x = tf.image.resize(x, (image_size, image_size), method="area")
    return x
