"""Tests for keras_siamese.preprocessing: the size a file declares is checked before it is decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_siamese.preprocessing import check_images, decode_images, fit_to_square, to_model_input

SIZE = 28


def _file(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _grey(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png_declaring(width: int, height: int) -> bytes:
    """A small grey PNG whose IHDR claims ``width`` x ``height`` (its CRC fixed up)."""
    png = bytearray(_file(Image.new("L", (8, 8), 255), "PNG"))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _gif_screen(gif: bytes, width: int, height: int) -> bytes:
    """``gif`` with its logical screen resized to ``width`` x ``height``."""
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def _frame_descriptors(gif: bytes) -> list[int]:
    """The offsets of a GIF's image descriptors (0x2C), found by walking its blocks."""
    at = 13 + (3 << (gif[10] % 8 + 1) if gif[10] & 0x80 else 0)
    found = []
    while gif[at] != 0x3B:
        if gif[at] == 0x2C:
            found.append(at)
            packed = gif[at + 9]
            at += 10 + (3 << (packed % 8 + 1) if packed & 0x80 else 0) + 1
        else:  # an extension: introducer and label
            at += 2
        while gif[at]:  # sub-blocks
            at += 1 + gif[at]
        at += 1
    return found


def _first_frame_descriptor(gif: bytes) -> int:
    return _frame_descriptors(gif)[0]


def _bmp_declaring(width: int, height: int) -> bytes:
    bmp = bytearray(_file(Image.new("L", (4, 4), 255), "BMP"))
    bmp[18:26] = struct.pack("<ii", width, height)
    return bytes(bmp)


@pytest.fixture(scope="module")
def decode():
    """``decode(files, max_pixels)``: decode_images traced as a SavedModel would run it."""
    functions = {}

    def run(files: list[bytes], max_pixels: int = 1000) -> np.ndarray:
        if max_pixels not in functions:
            functions[max_pixels] = tf.function(
                lambda x: decode_images(x, SIZE, max_pixels, "images"),
                input_signature=[tf.TensorSpec((None,), tf.string)],
            )
        return functions[max_pixels](tf.constant(files)).numpy()

    return run


def _refused(decode, files, match, max_pixels=1000):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        decode(files, max_pixels)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG", "WEBP"])
def test_each_format_is_refused_over_the_limit_and_decoded_at_it(decode, fmt):
    over, at = _file(_grey(40, 26), fmt), _file(_grey(40, 25), fmt)  # 1040 and 1000 pixels
    kind = {"WEBP": "WebP"}.get(fmt, fmt)
    _refused(
        decode, [at, over],
        rf"images\[1\] \({kind}\) declares 40x26 = 1040 pixels, over the export limit "
        r"max_pixels=1000",
    )  # fmt: skip
    decoded = decode([at, at])
    assert decoded.shape == (2, SIZE, SIZE, 1)
    if fmt in ("PNG", "BMP", "GIF"):  # lossless (the GIF of a grey image keeps its greys)
        expected = to_model_input(np.asarray(_grey(40, 25))[None, ..., None], SIZE).numpy()
        np.testing.assert_allclose(decoded[:1], expected, atol=1e-6)


def test_lossless_webp_and_a_webp_with_alpha_are_checked_too(decode):
    rgba = Image.fromarray(np.full((26, 40, 4), 200, np.uint8), "RGBA")
    for data in (_file(rgba, "WEBP", lossless=True), _file(rgba, "WEBP")):  # VP8L, VP8X
        _refused(decode, [data], r"declares 40x26 = 1040 pixels")
        assert decode([data], 1040).shape == (1, SIZE, SIZE, 1)


def test_a_png_bomb_is_refused_before_it_is_decoded(decode):
    _refused(
        decode, [_png_declaring(20000, 20000)],
        r"images\[0\] \(PNG\) declares 20000x20000 = 400000000 pixels, over the export limit "
        r"max_pixels=4194304",
        max_pixels=2048 * 2048,
    )  # fmt: skip


def test_a_gif_whose_screen_claims_20000_by_20000_is_refused(decode):
    gif = _gif_screen(_file(_grey(10, 10), "GIF"), 20000, 20000)
    _refused(decode, [gif], r"\(GIF\) declares 20000x20000 = 400000000 pixels", 2048 * 2048)


def test_a_gif_frame_larger_than_its_screen_is_refused(decode):
    gif = bytearray(_file(_grey(10, 10), "GIF"))
    at = _first_frame_descriptor(bytes(gif))
    gif[at + 5 : at + 9] = struct.pack("<HH", 30000, 30000)
    _refused(decode, [bytes(gif)], r"its first frame, 30000x30000 at \(0, 0\), exceeds its 10x10 logical screen")


def test_only_the_first_frame_of_an_animated_gif_is_decoded(decode):
    frames = [Image.fromarray(np.full((20, 30), 40 * i, np.uint8)) for i in range(4)]
    animated = _file(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode([animated])
    expected = to_model_input(np.asarray(frames[0])[None, ..., None], SIZE).numpy()
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    # Frames after the first are not read: one declaring a huge size does not matter.
    later = _frame_descriptors(animated)[1]
    bomb = bytearray(animated)
    bomb[later + 5 : later + 9] = struct.pack("<HH", 60000, 60000)
    np.testing.assert_allclose(decode([bytes(bomb)]), expected, atol=1e-6)
    # A GIF cut off inside its first frame is refused.
    _refused(decode, [animated[: _first_frame_descriptor(animated) + 12]], "no complete first frame")


def test_a_bmp_with_huge_dimensions_is_refused_whatever_their_sign(decode):
    for width, height in ((30000, 30000), (30000, -30000), (-2**31, 2)):
        _refused(decode, [_bmp_declaring(width, height)], rf"\(BMP\) declares {abs(width)}x{abs(height)}")


def test_a_jpeg_over_a_small_limit_is_refused_and_a_real_one_under_it_decodes(decode):
    jpeg = _file(_grey(105, 105).convert("RGB"), "JPEG", quality=90)
    assert decode([jpeg], 105 * 105).shape == (1, SIZE, SIZE, 1)
    _refused(decode, [jpeg], r"\(JPEG\) declares 105x105 = 11025 pixels, over the export limit max_pixels=11024", 105 * 105 - 1)


def test_animated_webp_and_jpeg_xl_are_refused(decode):
    frames = [Image.fromarray(np.full((10, 10), 40 * i, np.uint8)) for i in range(3)]
    animated = _file(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    _refused(decode, [animated], r"images\[0\]: animated WebP files are not accepted")
    for jxl in (b"\xff\x0a" + bytes(40), b"\0\0\0\x0cJXL \r\n\x87\n" + bytes(40)):
        _refused(decode, [jxl], r"JPEG XL files are not accepted")


def test_unknown_and_truncated_files_keep_the_decoders_error(decode):
    _refused(decode, [b"this is not an image"], "Unknown image file format")
    _refused(decode, [b""], "Input is empty")
    png = _file(_grey(10, 10), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode([png[:40]])


def test_float_images_over_the_limit_or_not_finite_are_refused():
    checked = tf.function(
        lambda x: check_images(x, 1000, "left"),
        input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)],
    )
    ok = np.full((2, 25, 40, 1), 255.0, np.float32)
    np.testing.assert_array_equal(checked(ok).numpy(), ok)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"left: images of 26x40 = 1040 pixels, over the export limit max_pixels=1000",
    ):
        checked(np.zeros((1, 26, 40, 1), np.float32))
    for value in (np.nan, np.inf, -np.inf):
        bad = ok.copy()
        bad[1, 3, 4, 0] = value
        with pytest.raises(tf.errors.InvalidArgumentError, match="left: pixel values must be finite"):
            checked(bad)


# --- Any size and aspect ratio, grey or colour ------------------------------------------------


def test_images_that_are_not_square_are_padded_with_their_border_not_stretched():
    face = np.full((112, 92, 1), 40.0, np.float32)
    face[30:80, 20:70] = 200.0  # a bright square in a dark photograph
    fitted = fit_to_square(face, 112).numpy()
    # 10 columns of the border's mean (40) each side; the square stays square.
    np.testing.assert_allclose(fitted[:, :10], 40.0)
    np.testing.assert_allclose(fitted[:, -10:], 40.0)
    np.testing.assert_allclose(fitted[30:80, 30:80], 200.0)
    # Traced with unknown sizes, as in a SavedModel, it pads the same way.
    traced = tf.function(
        lambda x: fit_to_square(x, 112), input_signature=[tf.TensorSpec((None, None, 1), tf.float32)]
    )
    np.testing.assert_allclose(traced(face).numpy(), fitted)


def test_square_images_pass_as_they_did_before_the_aspect_ratio_was_kept():
    images = np.random.default_rng(0).integers(0, 256, (3, 105, 105, 1)).astype(np.uint8)
    plain = tf.image.resize(1.0 - images.astype(np.float32) / 255.0, (SIZE, SIZE), method="area")
    np.testing.assert_array_equal(to_model_input(images, SIZE).numpy(), plain.numpy())


def test_colour_images_keep_three_channels_and_other_channel_counts_are_refused():
    colour = np.random.default_rng(1).integers(0, 256, (2, 40, 50, 3)).astype(np.uint8)
    assert to_model_input(colour, SIZE).shape == (2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_model_input(np.zeros((1, 28, 28, 2), np.uint8), SIZE)


def test_files_decode_to_the_channels_the_network_takes():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    files = tf.constant([_file(Image.fromarray(rgb), "PNG"), _file(Image.fromarray(grey), "PNG")])
    as_colour = decode_images(files, SIZE, channels=3).numpy()
    np.testing.assert_allclose(as_colour[0], to_model_input(rgb, SIZE).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        as_colour[1], to_model_input(np.repeat(grey[..., None], 3, axis=-1), SIZE).numpy(), atol=1e-6
    )
    as_grey = decode_images(files, SIZE).numpy()
    weights = np.array([0.2989, 0.5870, 0.1141], np.float32)
    np.testing.assert_allclose(
        as_grey[0], to_model_input((rgb * weights).sum(-1, keepdims=True), SIZE).numpy(), atol=1e-5
    )
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        decode_images(files, SIZE, channels=2)
