"""Image preprocessing shared by training, evaluation and serving.

Every image that reaches the network goes through :func:`to_model_input`, so a
model scored offline and a model scored through a SavedModel see exactly the
same pixels. :func:`decode_images` is the serving path for encoded PNG or JPEG
files: it decodes them to the same grey-scale pixels that the training data
holds and then calls :func:`to_model_input`.
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
            Any size: images are resized to `image_size`.
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
        # strokes stay visible when downsampling instead of aliasing away. At
        # the same size (possible when the size is only known at run time) it
        # copies the pixels unchanged.
        x = tf.image.resize(x, (image_size, image_size), method="area")
    return x


def decode_images(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a batch of PNG, JPEG, GIF or BMP files into the network's input.

    Colour images are converted to grey scale; images may differ in size.

    Args:
        encoded: string tensor `(N,)`, the files' bytes.
        image_size: side of the square image the network takes.

    Returns:
        float32 tensor `(N, image_size, image_size, 1)`, as :func:`to_model_input`.

    Raises:
        tf.errors.InvalidArgumentError: a file is not a decodable image.
    """

    def decode_one(data: tf.Tensor) -> tf.Tensor:
        # The file's own channels (decode_image refuses channels=1 for GIFs);
        # expand_animations=False: a GIF gives its first frame, always rank 3.
        image = tf.cast(tf.io.decode_image(data, expand_animations=False), tf.float32)
        channels = tf.shape(image)[-1]
        has_alpha = channels % 2 == 0  # grey + alpha, or RGBA
        colour = tf.cond(has_alpha, lambda: image[..., :-1], lambda: image)
        alpha = tf.cond(
            has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1])
        )
        grey = tf.cond(
            tf.shape(colour)[-1] == 3,
            lambda: tf.reduce_sum(colour * [0.2989, 0.5870, 0.1141], axis=-1, keepdims=True),
            lambda: colour[..., :1],
        )
        # Transparent pixels are blank paper (white), as in a drawing on a page.
        pixels = grey * alpha + 255.0 * (1.0 - alpha)
        pixels.set_shape((None, None, 1))
        return to_model_input(pixels, image_size)

    return tf.map_fn(
        decode_one,
        tf.convert_to_tensor(encoded, tf.string),
        fn_output_signature=tf.TensorSpec((image_size, image_size, 1), tf.float32),
    )
