"""A hostile-input corpus sent to an exported SavedModel served by TensorFlow alone in a fresh
process: every request is refused with an error naming what is wrong, memory stays bounded,
and a good request is still served after each."""

from __future__ import annotations

import io
import json
import pickle
import struct
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_siamese import export
from keras_siamese.model import build_siamese

pytestmark = pytest.mark.slow

# The child's peak resident memory (VmHWM) over the whole corpus. A 20,000 x 20,000 image decoded
# would take 1.6 GB as float32 alone; the corpus's requests, refused before decoding, stay
# far below this.
PEAK_RSS_BOUND = 2 * 1024**3

# Runs each request of the corpus, then a good one, with TensorFlow only (Keras blocked, as on
# a model server), and prints one JSON line per request and the peak RSS at the end.
CHILD = textwrap.dedent(
    """
    import json, pickle, resource, sys

    for name in ("keras", "keras_siamese", "tf_keras"):
        sys.modules[name] = None

    import tensorflow as tf

    def peak_rss():
        # VmHWM is this process's own peak; ru_maxrss can also hold the peak of the process
        # that forked it (here pytest), which Linux carries over to the child.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    model_dir, corpus = sys.argv[1:]
    with open(corpus, "rb") as f:
        cases, good = pickle.load(f)
    signatures = tf.saved_model.load(model_dir).signatures
    for case, signature, inputs in cases:
        try:
            signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
            error = None
        except Exception as e:  # report every kind: the test says which are expected
            error = type(e).__name__ + ": " + str(getattr(e, "message", e))
        scores = signatures["one_shot_encoded"](
            queries=tf.constant(good[:1]), support=tf.constant(good)
        )["scores"].numpy()
        print(json.dumps({
            "case": case,
            "error": error,
            "good": scores.shape == (1, len(good)) and bool((scores >= 0).all()),
            "rss": peak_rss(),
        }), flush=True)
    """
)


def _file(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _blank(size=(105, 105)) -> Image.Image:
    return Image.new("L", size, 255)


def _png_bomb() -> bytes:
    png = bytearray(_file(_blank((8, 8)), "PNG"))
    png[16:24] = struct.pack(">II", 20000, 20000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _gif_frame_bomb() -> bytes:
    gif = bytearray(_file(_blank((10, 10)), "GIF"))
    at = 13 + (3 << (gif[10] % 8 + 1) if gif[10] & 0x80 else 0)
    while gif[at] != 0x2C:  # skip extensions to the first image descriptor
        at += 2
        while gif[at]:
            at += 1 + gif[at]
        at += 1
    gif[at + 5 : at + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(gif)


def _jpeg_bomb() -> bytes:
    jpeg = bytearray(_file(_blank((16, 16)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    return bytes(jpeg)


def _corpus() -> tuple[list, list[bytes]]:
    """(case name, signature, inputs, expected error) for each hostile request."""
    png = _file(_blank(), "PNG")
    gif = _file(_blank((10, 10)), "GIF")
    bmp = bytearray(_file(_blank((4, 4)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 46341, -46341)
    webp = bytearray(_file(_blank((16, 16)), "WEBP"))
    assert webp[12:16] == b"VP8 "  # lossy: the frame's size at bytes 26-30
    webp[26:30] = struct.pack("<HH", 16383, 16383)
    frames = [Image.new("L", (16, 16), 40 * i) for i in range(3)]
    animated_webp = _file(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    blank = np.full((2, 105, 105, 1), 255.0, np.float32)
    nan, inf = blank.copy(), blank.copy()
    nan[0, 50, 50, 0], inf[1, 0, 0, 0] = np.nan, -np.inf
    files = lambda *data: np.array(list(data), dtype=object)
    cases = [
        ("PNG bomb", "pair_encoded", {"left": files(png, _png_bomb()), "right": files(png, png)},
         r"left\[1\] \(PNG\) declares 20000x20000 = 400000000 pixels, over the export limit max_pixels=4194304"),
        ("GIF screen bomb", "embed_encoded",
         {"images": files(gif[:6] + struct.pack("<HH", 20000, 20000) + gif[10:])},
         r"images\[0\] \(GIF\) declares 20000x20000"),
        ("GIF frame bomb", "one_shot_encoded", {"queries": files(png), "support": files(_gif_frame_bomb())},
         r"support\[0\] \(GIF\): its first frame, 65535x65535 at \(0, 0\), exceeds its 10x10 logical screen"),
        ("BMP bomb", "embed_encoded", {"images": files(bytes(bmp))}, r"\(BMP\) declares 46341x46341"),
        ("JPEG bomb", "embed_encoded", {"images": files(_jpeg_bomb())}, r"\(JPEG\) declares 20000x20000"),
        ("WebP bomb", "embed_encoded", {"images": files(bytes(webp))}, r"\(WebP\) declares 16383x16383"),
        ("animated WebP", "embed_encoded", {"images": files(animated_webp)}, "animated WebP files are not accepted"),
        ("JPEG XL", "embed_encoded", {"images": files(b"\xff\x0a" + bytes(64))}, "JPEG XL files are not accepted"),
        ("not an image", "embed_encoded", {"images": files(b"<html>hello</html>")}, "Unknown image file format"),
        ("empty file", "embed_encoded", {"images": files(b"")}, "Input is empty"),
        ("truncated PNG", "embed_encoded", {"images": files(png[:60])}, "InvalidArgumentError"),
        ("too many files", "embed_encoded", {"images": files(*[png] * 257)},
         "images: 257 images, over the export limit max_images=256"),
        ("too many pairs", "one_shot", {"queries": np.full((129, 8, 8, 1), 255.0, np.float32),
                                        "support": np.full((128, 8, 8, 1), 255.0, np.float32)},
         "129 queries x 128 support images = 16512 pairs, over the export limit max_pairs=16384"),
        ("too many pixels", "serving_default", {"left": np.full((1, 2049, 2048, 1), 255.0, np.float32),
                                                "right": blank[:1]},
         "left: images of 2049x2048 = 4196352 pixels, over the export limit max_pixels=4194304"),
        ("NaN pixel", "embed", {"images": nan}, "images: pixel values must be finite"),
        ("infinite pixel", "one_shot_tta", {"queries": blank[:1], "support": inf}, "support: pixel values must be finite"),
        ("integer pixels", "embed", {"images": blank.astype(np.int32)}, r"TypeError|InvalidArgumentError|ValueError"),
        ("strings for pixels", "serving_default", {"left": files(png), "right": files(png)}, r"Error"),
        ("pixels for files", "embed_encoded", {"images": blank}, r"Error"),
        ("rank 3 pixels", "embed", {"images": blank[0]}, r"Error"),
    ]  # fmt: skip
    return cases, [png, _file(Image.new("L", (105, 105), 0), "PNG")]


@pytest.fixture(scope="module")
def served(small_config, run_python, tmp_path_factory) -> list[dict]:
    """The child's report on each case of the corpus, sent to a SavedModel with default limits."""
    tmp = tmp_path_factory.mktemp("hostile")
    target = export.export_saved_model(
        build_siamese(small_config(paper_init=False)), tmp, "siamese", views=2
    )
    cases, good = _corpus()
    with open(tmp / "corpus.pkl", "wb") as f:
        pickle.dump(([case[:3] for case in cases], good), f)
    result = run_python("-c", CHILD, target, tmp / "corpus.pkl", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["case"] for r in reports] == [case[0] for case in cases]
    return [dict(report, expected=case[3]) for report, case in zip(reports, cases)]


@pytest.mark.parametrize("index", range(len(_corpus()[0])), ids=[c[0] for c in _corpus()[0]])
def test_each_hostile_request_is_refused_with_a_clear_error(served, index):
    import re

    report = served[index]
    assert report["error"] is not None, f"{report['case']} was served"
    assert re.search(report["expected"], report["error"]), report["error"]
    assert report["good"], f"a good request failed after {report['case']}"


def test_memory_stays_bounded_over_the_corpus(served):
    assert served[-1]["rss"] < PEAK_RSS_BOUND, [(r["case"], r["rss"] >> 20) for r in served]
