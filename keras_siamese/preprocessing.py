"""Image preprocessing shared by training, evaluation and serving.

Every image that reaches the network goes through :func:`to_model_input`, so a
model scored offline and a model scored through a SavedModel see exactly the
same pixels. :func:`decode_images` is the serving path for encoded PNG, JPEG,
GIF or BMP files: it checks the size each file declares in its header, decodes
it to the same grey-scale pixels that the training data holds and then calls
:func:`to_model_input`. :func:`check_images` holds pixel arrays from clients to
the same limit and refuses non-finite values.
"""

from __future__ import annotations

import functools
from typing import Callable

import tensorflow as tf

# Omniglot PNGs are white (255) strokes-on-paper images; the network sees ink as
# 1.0 and paper as 0.0, so that the zero padding of convolutions and of the
# affine distortions is "blank paper".

# The largest image, in pixels (height x width), that the serving path decodes or
# takes as an array unless told otherwise: 2048 x 2048. docs/serving.md, "Limits".
DEFAULT_MAX_PIXELS = 2048 * 2048

# Sub-blocks walked at most to find the end of a GIF's first frame. A frame of
# DEFAULT_MAX_PIXELS pixels needs far fewer (LZW data comes in blocks of up to
# 255 bytes); a file cut into more is refused rather than walked for long.
_MAX_GIF_BLOCKS = 1 << 16

# The magic bytes that tf.io.decode_image recognises each format by (a prefix of them).
_PNG = (0x89, 0x50, 0x4E, 0x47)
_GIF = (0x47, 0x49, 0x46, 0x38)  # GIF8
_BMP = (0x42, 0x4D)  # BM
_JPEG = (0xFF, 0xD8, 0xFF)
_RIFF, _WEBP = (0x52, 0x49, 0x46, 0x46), (0x57, 0x45, 0x42, 0x50)  # RIFF....WEBP
_VP8, _VP8L, _VP8X = (0x56, 0x50, 0x38, 0x20), (0x56, 0x50, 0x38, 0x4C), (0x56, 0x50, 0x38, 0x58)
_JXL, _JXL_CONTAINER = (0xFF, 0x0A), (0, 0, 0, 0x0C, 0x4A, 0x58, 0x4C, 0x20)


def fit_to_square(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize images to ``image_size`` squares, keeping their aspect ratio.

    An image that is not square is first padded to a square, centred, with the mean of its
    own border pixels (per channel): a photograph's background or a page's paper, whatever
    the image has, never a colour assumed for a domain. Then "area" resizing averages the
    pixels that fall into each output pixel, so thin strokes stay visible when downsampling
    instead of aliasing away. Square images are only resized; at the same size (possible when
    the size is only known at run time) the pixels are copied unchanged.

    Args:
        images: float tensor ``(..., H, W, C)`` of rank 3 or 4, in any value range.
        image_size: side of the square result.

    Returns:
        float32 tensor ``(..., image_size, image_size, C)``.
    """
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    height, width = x.shape[-3], x.shape[-2]
    if height is None or width is None or height != width:
        h, w = tf.shape(x)[-3], tf.shape(x)[-2]

        def padded():
            side = tf.maximum(h, w)
            border = tf.concat(
                [x[..., 0, :, :], x[..., -1, :, :], x[..., :, 0, :], x[..., :, -1, :]], axis=-2
            )
            fill = tf.reduce_mean(border, axis=-2, keepdims=True)[..., None, :, :]
            top, left = (side - h) // 2, (side - w) // 2
            paddings = tf.stack([[top, side - h - top], [left, side - w - left], [0, 0]])
            if x.shape.rank == 4:
                paddings = tf.concat([[[0, 0]], paddings], axis=0)
            # Padding x - fill with zeros pads x with fill, one value per image and channel.
            return tf.pad(x - fill, paddings) + fill

        if height is not None and width is not None:
            x = padded()
        else:  # known at run time only: square images pass exactly as they are
            side = tf.maximum(h, w)
            shape = tf.concat([tf.shape(x)[:-3], [side, side], tf.shape(x)[-1:]], axis=0)
            x = tf.cond(tf.equal(h, w), lambda: x, lambda: tf.reshape(padded(), shape))
    if x.shape[-3] != image_size or x.shape[-2] != image_size:
        x = tf.image.resize(x, (image_size, image_size), method="area")
    return x


def to_model_input(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Convert images to the network's input.

    Args:
        images: uint8 (or float in [0, 255]) tensor of shape `(..., H, W, C)`, rank 3 or 4,
            with C = 1 (grey) or 3 (colour); for Omniglot 255 = white background and 0 = ink.
            Any size: images are fitted to `image_size` squares (:func:`fit_to_square`).
        image_size: side of the square image the network takes.

    Returns:
        float32 tensor `(..., image_size, image_size, C)`, `1 - pixel / 255`: ink = 1 and
        paper = 0 for a drawing. The same fixed map applies to every image, photographs too.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4) or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected grey-scale or colour images of shape (H, W, C) or (N, H, W, C) with "
            f"C = 1 or 3, got {images.shape}"
        )
    return fit_to_square(1.0 - tf.cast(images, tf.float32) / 255.0, image_size)


def _text(*parts) -> tf.Tensor:
    """One string tensor of ``parts``: Python values and scalar tensors, joined."""
    return tf.strings.join(
        [
            p if isinstance(p, str) or (tf.is_tensor(p) and p.dtype == tf.string)
            else tf.strings.as_string(p)
            for p in parts
        ]
    )


def check_images(images: tf.Tensor, max_pixels: int, name: str = "images") -> tf.Tensor:
    """``images`` (float `(N, H, W, 1)` pixel values), refused unless small and finite.

    The checks run in the graph, before anything else touches the pixels: an image
    of more than ``max_pixels`` pixels (``H * W``) would cost every later step that
    many times over, and a NaN or infinite pixel would give NaN scores.

    Args:
        images: the pixel values a client sent.
        max_pixels: the most pixels (``H * W``) an image may have.
        name: what the error messages call the images (the input's name).

    Returns:
        ``images``, once checked.

    Raises:
        tf.errors.InvalidArgumentError: (when run) an image is larger than
            ``max_pixels`` or a pixel is NaN or infinite.
    """
    shape = tf.shape(images, out_type=tf.int64)
    height, width = shape[1], shape[2]
    pixels = height * width
    size_check = tf.debugging.Assert(
        pixels <= max_pixels,
        [
            _text(
                name, ": images of ", height, "x", width, " = ", pixels,
                f" pixels, over the export limit max_pixels={max_pixels}",
            )
        ],
    )  # fmt: skip
    with tf.control_dependencies([size_check]):
        return tf.debugging.assert_all_finite(
            images, f"{name}: pixel values must be finite (a NaN or infinite value was sent)"
        )


def _gif_first_frame(data: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Walks a GIF's blocks to the end of its first frame.

    Returns ``(end, ok, left, top, width, height)``: the offset just past the first
    frame's image data, whether the walk got there, and the frame's position and
    size as its image descriptor declares them.
    """
    b = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64)
    n = tf.size(b, out_type=tf.int64)
    zero = tf.constant(0, tf.int64)

    def byte(i):
        # -1 past the end of the file.
        i = tf.cast(i, tf.int64)
        return tf.where(i < n, tf.gather(b, tf.minimum(i, n - 1)), tf.constant(-1, tf.int64))

    def u16(i):
        return byte(i) + 256 * byte(i + 1)

    def colour_table(packed):
        # A colour table follows when bit 7 is set: 3 * 2^(size + 1) bytes.
        return tf.where(
            packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), zero
        )

    # Stages: 0 a block starts at pos, 1 an extension's sub-blocks, 2 the first frame's
    # sub-blocks, 3 done, 4 malformed.
    start = 13 + colour_table(byte(10))

    def pair(a, b):
        return tf.stack([tf.cast(a, tf.int64), tf.cast(b, tf.int64)])

    def step(pos, stage, steps, left, top, width, height):
        c = byte(pos)
        # At a block start: an extension (0x21 label), an image (0x2C), or anything else.
        descriptor = byte(pos + 9)
        image_pos = pos + 10 + colour_table(descriptor) + 1  # + the LZW code size byte
        at_block = tf.where(
            c == 0x21,
            pair(pos + 2, 1),
            tf.where((c == 0x2C) & (descriptor >= 0), pair(image_pos, 2), pair(pos, 4)),
        )
        # In sub-blocks: a length byte, 0 ends them.
        in_blocks = tf.where(
            c < 0,
            pair(pos, 4),
            tf.where(
                c == 0, pair(pos + 1, tf.where(stage == 2, 3, 0)), pair(pos + 1 + c, stage)
            ),
        )
        new = tf.where(stage == 0, at_block, in_blocks)
        is_image = (stage == 0) & (c == 0x2C)
        return (
            new[0],
            new[1],
            steps + 1,
            tf.where(is_image, u16(pos + 1), left),
            tf.where(is_image, u16(pos + 3), top),
            tf.where(is_image, u16(pos + 5), width),
            tf.where(is_image, u16(pos + 7), height),
        )

    pos, stage, _, left, top, width, height = tf.while_loop(
        lambda pos, stage, steps, *_: (stage < 3) & (steps < _MAX_GIF_BLOCKS),
        step,
        (start, zero, zero, zero, zero, zero, zero),
    )
    return pos, stage == 3, left, top, width, height


def _checked_file(index: tf.Tensor, data: tf.Tensor, max_pixels: int, name: str) -> tf.Tensor:
    """``data`` (one file's bytes) once its header has been checked, ready to decode.

    The size the header declares is checked against ``max_pixels`` before any
    decoder sees the file. A GIF is cut after its first frame (the frame
    ``decode_image`` returns), so the decoder never reads the frames after it.
    Animated WebP (which TensorFlow's decoder cannot take safely) and JPEG XL
    (whose size is not at a fixed place in the header) are refused. Files in
    other formats pass unchanged, for the decoder to refuse.
    """
    header = tf.cast(
        tf.io.decode_raw(tf.strings.substr(data + b"\0" * 32, 0, 32), tf.uint8), tf.int64
    )

    def at(i, magic):
        return tf.reduce_all(tf.equal(header[i : i + len(magic)], tf.constant(magic, tf.int64)))

    def little_endian(i, size):
        return tf.reduce_sum(header[i : i + size] * tf.constant([1 << 8 * k for k in range(size)], tf.int64))

    def big_endian_u32(i):
        return tf.reduce_sum(header[i : i + 4] * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64))

    def signed_i32(i):
        value = little_endian(i, 4)
        return tf.where(value >= 1 << 31, value - (1 << 32), value)

    is_png, is_gif, is_bmp, is_jpeg = at(0, _PNG), at(0, _GIF), at(0, _BMP), at(0, _JPEG)
    is_webp = at(0, _RIFF) & at(8, _WEBP)
    is_jxl = at(0, _JXL) | at(0, _JXL_CONTAINER)
    vp8_bits = little_endian(21, 4)
    vp8x_flags = header[20]
    # (width, height) as each format's header declares them; (0, 0) for other files.
    declared = [
        (is_png, big_endian_u32(16), big_endian_u32(20)),
        (is_gif, little_endian(6, 2), little_endian(8, 2)),
        # BMP rows run top-down when the height is negative.
        (is_bmp, tf.abs(signed_i32(18)), tf.abs(signed_i32(22))),
        (is_webp & at(12, _VP8), little_endian(26, 2) % (1 << 14), little_endian(28, 2) % (1 << 14)),
        (is_webp & at(12, _VP8L), vp8_bits % (1 << 14) + 1, vp8_bits // (1 << 14) % (1 << 14) + 1),
        (is_webp & at(12, _VP8X), little_endian(24, 3) + 1, little_endian(27, 3) + 1),
    ]
    zero = tf.constant(0, tf.int64)
    width, height = zero, zero
    for is_format, format_width, format_height in reversed(declared):
        width = tf.where(is_format, format_width, width)
        height = tf.where(is_format, format_height, height)
    width, height = tf.cond(
        is_jpeg,
        lambda: tuple(tf.cast(tf.image.extract_jpeg_shape(data)[i], tf.int64) for i in (1, 0)),
        lambda: (width, height),
    )
    gif_end, gif_ok, left, top, frame_width, frame_height = tf.cond(
        is_gif, lambda: _gif_first_frame(data), lambda: (zero, tf.constant(True), zero, zero, zero, zero)
    )
    kind = tf.where(
        is_png,
        "PNG",
        tf.where(is_gif, "GIF", tf.where(is_bmp, "BMP", tf.where(is_webp, "WebP", "JPEG"))),
    )
    image = _text(name, "[", index, "] (", kind, ")")
    pixels = width * height
    checks = [
        tf.debugging.Assert(
            pixels <= max_pixels,
            [
                _text(
                    image, " declares ", width, "x", height, " = ", pixels,
                    f" pixels, over the export limit max_pixels={max_pixels}",
                )
            ],
        ),
        tf.debugging.Assert(
            gif_ok,
            [
                _text(
                    image, ": no complete first frame found within ", _MAX_GIF_BLOCKS,
                    " blocks of the file",
                )
            ],
        ),
        tf.debugging.Assert(
            (left + frame_width <= width) & (top + frame_height <= height),
            [
                _text(
                    image, ": its first frame, ", frame_width, "x", frame_height, " at (", left,
                    ", ", top, "), exceeds its ", width, "x", height, " logical screen",
                )
            ],
        ),
        tf.debugging.Assert(
            ~(is_webp & at(12, _VP8X) & (vp8x_flags % 4 >= 2)),
            [_text(name, "[", index, "]: animated WebP files are not accepted")],
        ),
        tf.debugging.Assert(
            ~is_jxl,
            [
                _text(
                    name, "[", index, "]: JPEG XL files are not accepted (send PNG, JPEG, GIF, "
                    "BMP or WebP)",
                )
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.cond(
            is_gif,
            # The first frame, then the GIF trailer.
            lambda: tf.strings.substr(data, zero, gif_end) + b"\x3b",
            lambda: tf.identity(data),
        )


@functools.lru_cache(maxsize=None)
def _file_checker(max_pixels: int) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``_checked_file`` for one limit as a ``tf.function`` with a fixed signature: traced once,
    and shared by every input of every signature that decodes files, which keeps exports quick."""
    return tf.function(
        lambda index, data, name: _checked_file(index, data, max_pixels, name),
        input_signature=[
            tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string)
        ],
        autograph=False,
    )


def decode_images(
    encoded: tf.Tensor,
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "images",
    channels: int = 1,
) -> tf.Tensor:
    """Decode a batch of PNG, JPEG, GIF or BMP files into the network's input.

    Images become grey scale (``channels=1``) or colour (``channels=3``) whatever their own
    mode, transparent pixels white; images may differ in size and aspect ratio. Each file's
    header is read first: a file that declares more than ``max_pixels`` pixels, or a
    GIF whose first frame exceeds its logical screen, is refused before it is decoded.

    Args:
        encoded: string tensor `(N,)`, the files' bytes.
        image_size: side of the square image the network takes.
        max_pixels: the most pixels (height x width) a file may declare.
        name: what the error messages call the files (the input's name).
        channels: 1 or 3, the channels the network takes.

    Returns:
        float32 tensor `(N, image_size, image_size, channels)`, as :func:`to_model_input`.

    Raises:
        tf.errors.InvalidArgumentError: a file is not a decodable image, or is over
            ``max_pixels``.
    """

    check_file = _file_checker(max_pixels)

    def decode_one(indexed: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        data = check_file(*indexed, tf.constant(name))
        # The file's own channels (decode_image refuses channels=1 for GIFs);
        # expand_animations=False: a GIF gives its first frame, always rank 3.
        image = tf.cast(tf.io.decode_image(data, expand_animations=False), tf.float32)
        has_alpha = tf.shape(image)[-1] % 2 == 0  # grey + alpha, or RGBA
        colour = tf.cond(has_alpha, lambda: image[..., :-1], lambda: image)
        alpha = tf.cond(
            has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1])
        )
        if channels == 1:
            colour = tf.cond(
                tf.shape(colour)[-1] == 3,
                lambda: tf.reduce_sum(colour * [0.2989, 0.5870, 0.1141], axis=-1, keepdims=True),
                lambda: colour[..., :1],
            )
        else:
            colour = tf.cond(
                tf.shape(colour)[-1] == 3, lambda: colour, lambda: tf.tile(colour[..., :1], [1, 1, 3])
            )
        # Transparent pixels are blank paper (white), as in a drawing on a page.
        pixels = colour * alpha + 255.0 * (1.0 - alpha)
        pixels.set_shape((None, None, channels))
        return to_model_input(pixels, image_size)

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    encoded = tf.convert_to_tensor(encoded, tf.string)
    return tf.map_fn(
        decode_one,
        (tf.range(tf.size(encoded, out_type=tf.int64)), encoded),
        fn_output_signature=tf.TensorSpec((image_size, image_size, channels), tf.float32),
    )
