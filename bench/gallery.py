"""Identifying images against a gallery: milliseconds per query by gallery size.

    python bench/gallery.py [--sizes 10 1000 100000] [--batch 32] [--repeats 5] [--slow 2]

Exports the ``cpu`` network (D = 512 embeddings, float32, untrained: speed does not depend on
the weights) once, and for each gallery size K (random embeddings in (0, 1), 1,000 labels)
times, for 1 query and a batch of ``--batch`` queries, in milliseconds per query:

- ``numpy``: the baseline, the head's formula ``sigmoid(|q - S| @ alpha + b)`` broadcast in
  NumPy over the whole gallery, one query at a time (from embeddings);
- ``compare``: the SavedModel's ``compare`` signature over the whole gallery (from embeddings;
  the gallery sliced into chunks of about 2^20 distances in a ``tf.while_loop``);
- ``xla``: the head's formula compiled by XLA (``jit_compile=True``) over the whole gallery,
  from the Keras head: a reference, in no SavedModel (TF Serving runs XLA only when started with
  ``--xla_cpu_compilation_enabled``);
- ``best``: ``gallery.Identifier.scores``, the best enrolled image of each query through the
  SavedModel's ``compare`` (``gallery.best_matches``; from embeddings);
- ``identify``: ``gallery.Identifier`` from PNG files, in process: the queries embedded, then
  ``best``;
- ``served``: the exported gallery SavedModel's ``identify_encoded`` from the same files,
  loaded with ``tf.saved_model.load``;
- ``embed``: ``embed_encoded`` of the files alone, the part of a query that does not depend on K.

The timings of one size and batch take turns round by round (``bench/common.py``); a timing
whose first call takes longer than ``--slow`` seconds is timed once more only (marked ``*``).
Prints medians, and the ratios of ``numpy`` to ``served`` and to ``best``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from common import interleaved_seconds, print_machine
from keras_siamese import export, gallery
from keras_siamese.config import PRESETS
from keras_siamese.model import build_siamese, head_of

COLUMNS = ("numpy", "compare", "xla", "best", "identify", "served", "embed")


def _pngs(count: int, rng: np.random.Generator) -> list[bytes]:
    """Random grey 92 x 112 images (the ORL faces' size) as PNG files."""
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 92), np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def _tasks(
    functions: dict, enrolled: gallery.Gallery, identifier: gallery.Identifier, served,
    queries: np.ndarray, files: list[bytes],
) -> dict:  # fmt: skip
    """The timings of one gallery and one batch of queries (embeddings and their files)."""
    alpha, bias = functions["head"]
    tensor, support = tf.constant(queries), tf.constant(enrolled.embeddings)
    batch = tf.constant(files)

    def numpy_scores():
        for q in queries:
            scores = 1.0 / (1.0 + np.exp(-(np.abs(enrolled.embeddings - q) @ alpha + bias)))
            scores.argmax()

    compare, xla = functions["compare"], functions["xla"]
    return {
        "numpy": numpy_scores,
        "compare": lambda: compare(query_embeddings=tensor, support_embeddings=support)["scores"].numpy(),
        "xla": lambda: xla(tensor, support).numpy(),
        "best": lambda: identifier.scores(queries),
        "identify": lambda: identifier(files),
        "served": lambda: served(images=batch)["score"].numpy(),
        "embed": lambda: functions["embed"](images=batch)["embedding"].numpy(),
    }


def _time(tasks: dict, repeats: int, slow: float) -> tuple[dict[str, float], set[str]]:
    """Median seconds of each task; tasks whose first call exceeds ``slow`` seconds are timed
    once more only (returned as the second set)."""
    quick, once = {}, set()
    for name, task in tasks.items():
        start = time.perf_counter()
        task()
        if time.perf_counter() - start > slow:
            once.add(name)
        else:
            quick[name] = task
    seconds = {name: statistics.median(times) for name, times in
               interleaved_seconds(quick, repeats).items()}  # fmt: skip
    for name in once:
        start = time.perf_counter()
        tasks[name]()
        seconds[name] = time.perf_counter() - start
    return seconds, once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1_000, 100_000])
    parser.add_argument("--batch", type=int, default=32, help="queries in a batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--slow", type=float, default=2.0,
                        help="time once more only what takes longer than this (seconds)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model = build_siamese(PRESETS["cpu"].model)
    head = head_of(model)
    alpha, bias = head.alpha.numpy(), head.bias.numpy()
    xla = tf.function(lambda q, s: head.pairwise(q, s), jit_compile=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = gallery.open_saved_model(export.export_saved_model(model, tmp, "base"))
        width = base.embedding_size
        compare = base.signature("compare")
        functions = {
            "head": (alpha, bias), "compare": compare, "xla": xla,
            "embed": base.signature("embed_encoded"),
        }  # fmt: skip
        files = _pngs(args.batch, rng)
        for size in args.sizes:
            enrolled = gallery.Gallery(
                labels=tuple(f"label{k % 1000}" for k in range(size)),
                embeddings=rng.random((size, width), np.float32),
                files=tuple(f"image{k}.png" for k in range(size)),
                model_id=base.model_id,
                threshold=base.threshold,
                saved_model=str(base.path),
            )
            identifier = gallery.Identifier(base, enrolled)
            support = enrolled.embeddings
            served = tf.saved_model.load(
                str(gallery.export_gallery(base, enrolled, tmp, f"gallery{size}"))
            ).signatures["identify_encoded"]
            for count in (1, args.batch):
                queries = rng.random((count, width), np.float32)
                tasks = _tasks(functions, enrolled, identifier, served, queries, files[:count])
                seconds, once = _time(tasks, args.repeats, args.slow)
                # The formulations agree (a check, not a timing).
                reference = xla(queries, support).numpy()
                exact = compare(query_embeddings=queries, support_embeddings=support)["scores"]
                np.testing.assert_allclose(exact.numpy(), reference, rtol=1e-4)
                np.testing.assert_allclose(identifier.scores(queries)[0], reference.max(axis=1), rtol=1e-5)
                rows.append((size, count, {n: 1000 * s / count for n, s in seconds.items()}, once))
                print(f"  K = {size:,}, Q = {count}: done", flush=True)
    print_machine()
    print(f"cpu network (D = {width}, float32), galleries of random embeddings; ms per query, "
          f"medians of {args.repeats} rounds (* one round)")  # fmt: skip
    print(f"{'K':>8} {'Q':>3} " + " ".join(f"{name:>9}" for name in COLUMNS) + "  numpy/served  numpy/best")
    for size, count, ms, once in rows:
        cells = " ".join(f"{ms[n]:8.2f}{'*' if n in once else ' '}" for n in COLUMNS)
        print(f"{size:8,} {count:3d} {cells}  {ms['numpy'] / ms['served']:11.1f}x "
              f"{ms['numpy'] / ms['best']:11.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
