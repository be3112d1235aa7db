"""Export a trained Siamese network as a SavedModel for TensorFlow Serving.

Exports go to TF Serving's layout, ``<export_dir>/<name>/<version>/``. Each version is written
into a hidden temporary folder and renamed into place, so a model server watching
``<export_dir>/<name>`` never sees a half-written version (TF Serving only loads folders whose
name is a number).

The SavedModel takes images as Omniglot stores them (grey-scale pixel values in [0, 255], white
paper, any size) and resizes and normalises them in the graph with
:mod:`keras_siamese.preprocessing`, the code training and evaluation use, so a client needs no
preprocessing of its own and a served model sees exactly the pixels it sees offline. Its
signatures (:data:`SIGNATURES`; docs/serving.md, "Signatures") score pairs, embed images and
score whole one-shot tasks, with test-time augmentation computed as
``evaluation.SiameseScorer(views=...)`` computes it offline; an ensemble exports with the same
signatures.

The endpoints are plain ``tf.function``s on a ``tf.Module`` that tracks the model's
``tf.Variable``s once, because ``model.export`` and ``keras.export.ExportArchive`` write every
variable twice (keras-team/keras#23553). ``one_shot`` embeds queries and support in one twin pass
and compares the embeddings with the head, ``Q + K`` twin passes instead of ``2 Q K``
(docs/benchmarks.md, "One-shot scoring in one twin pass"). A network trained in mixed precision
is exported with its weights in the dtype they compute in (:func:`serving_copy`): the same
scores, without a cast on every call and in half the bytes (docs/benchmarks.md, "Serving copy of
bfloat16 weights"). docs/serving.md, "The SavedModel", describes the result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

import keras
import tensorflow as tf

import keras_siamese  # noqa: F401  (registers the custom layer and optimiser for load_model)
from keras_siamese.augmentation import transform, tta_transforms
from keras_siamese.config import TTA_SYMMETRIES, TTA_VIEWS, add_tta_arguments, check_tta
from keras_siamese.model import head_of, load_models, siamese_members, twin_of
from keras_siamese.preprocessing import decode_images, to_model_input

SIGNATURES = (
    "serving_default",
    "pair_encoded",
    "embed",
    "embed_encoded",
    "one_shot",
    "one_shot_encoded",
    "one_shot_tta",
    "one_shot_tta_encoded",
)


def _images(name: str) -> tf.TensorSpec:
    return tf.TensorSpec((None, None, None, 1), tf.float32, name=name)


def _encoded(name: str) -> tf.TensorSpec:
    return tf.TensorSpec((None,), tf.string, name=name)


def _casts_its_weights(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is a mixed-precision convolution or dense layer. Batch normalisation
    also keeps float32 weights under a mixed policy, but computes with them in float32."""
    policy = layer.dtype_policy
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and (
        policy.compute_dtype != policy.variable_dtype
    )


def _in_compute_dtype(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer like ``layer``, with its weights in its compute dtype if it casts them."""
    config = layer.get_config()
    if _casts_its_weights(layer):
        config["dtype"] = layer.dtype_policy.compute_dtype
    return layer.__class__.from_config(config)


def serving_copy(model: keras.Model) -> keras.Model:
    """``model`` for serving: a copy whose mixed-precision layers hold their weights in the
    dtype they compute in (bfloat16).

    A mixed-precision layer casts its float32 weights every time it computes; the copy holds
    the cast values instead, so it computes exactly what ``model`` computes, without
    the casts. A model without such layers (float32) is returned as it is.
    """
    # The convolutions and the dense layer are the twins'; the head computes in float32.
    twin_layers = [layer for member in siamese_members(model) for layer in twin_of(member).layers]
    if not any(_casts_its_weights(layer) for layer in twin_layers):
        return model
    copy = keras.models.clone_model(model, clone_function=_in_compute_dtype, recursive=True)
    # The copy has the model's structure, so its variables come in the same order. (Not matched
    # by path: a loaded model's paths can lack the scopes of a freshly built one's.)
    for target, source in zip(copy.variables, model.variables, strict=True):
        if target.name != source.name or target.shape != source.shape:
            raise ValueError(f"serving copy: {target.path} does not match {source.path}")
        target.assign(tf.cast(source.value, target.dtype))
    return copy


def _build_module(
    model: keras.Model, views: int = TTA_VIEWS, symmetries: int = TTA_SYMMETRIES, seed: int = 0
) -> tuple[tf.Module, dict]:
    """A ``tf.Module`` with the serving endpoints of ``model`` (a Siamese model or an ensemble)."""
    model = serving_copy(model)
    size = model.input["left"].shape[1]
    query_rows, support_rows = tta_transforms(views, size, seed, symmetries=symmetries)
    members = [(twin_of(m), head_of(m)) for m in siamese_members(model)]
    module = tf.Module()
    # Track the backend variables directly (not the Keras model) so each is
    # saved once.
    module.model_variables = [v.value for v in model.variables]

    def embed_members(x):
        return [tf.cast(twin(x, training=False), tf.float32) for twin, _ in members]

    def embed_inputs(x):
        # An ensemble's embedding is its members' embeddings side by side.
        return tf.concat(embed_members(x), axis=1)

    def scores_of(queries, support):
        # Each member compares its own embeddings; an ensemble averages the members.
        per_member = [
            tf.cast(head.pairwise(q, s), tf.float32)
            for (_, head), q, s in zip(members, queries, support)
        ]
        return tf.add_n(per_member) / len(members)

    def pair(left, right):
        # The full model, exactly as trained: twin on both sides, then the head.
        p = model({"left": left, "right": right}, training=False)
        return {"probability": tf.reshape(p, [-1])}

    def one_shot(queries, support):
        # Queries and support in one twin pass: on a CPU much of a pass over a few dozen small
        # images is its fixed per-op cost, which one pass pays once (docs/benchmarks.md,
        # "One-shot scoring in one twin pass").
        n = tf.shape(queries)[0]
        embedded = embed_members(tf.concat([queries, support], axis=0))
        scores = scores_of([e[:n] for e in embedded], [e[n:] for e in embedded])
        return {"scores": scores, "best": tf.argmax(scores, axis=1, output_type=tf.int32)}

    def one_shot_tta(queries, support):
        # Every view of the queries and of the support in one twin pass each.
        def views_of(images, rows):
            n = tf.shape(images)[0]
            versions = [images] + [transform(images, rows[v]) for v in range(1, views)]
            return [
                tf.reshape(e, [views, n, -1]) for e in embed_members(tf.concat(versions, axis=0))
            ]

        q, s = views_of(queries, query_rows), views_of(support, support_rows)
        # One view at a time keeps the (Q, K, d) distances of a single view in memory.
        per_view = tf.map_fn(
            lambda qs: scores_of(qs[0], qs[1]), (q, s), fn_output_signature=tf.float32
        )
        scores = tf.reduce_mean(per_view, axis=0)
        return {"scores": scores, "best": tf.argmax(scores, axis=1, output_type=tf.int32)}

    @tf.function(input_signature=[_images("left"), _images("right")])
    def serving_default(left, right):
        """Same-character probability of each (left, right) pair of images."""
        return pair(to_model_input(left, size), to_model_input(right, size))

    @tf.function(input_signature=[_encoded("left"), _encoded("right")])
    def pair_encoded(left, right):
        """Same-character probability of each (left, right) pair of image files."""
        return pair(decode_images(left, size), decode_images(right, size))

    @tf.function(input_signature=[_images("images")])
    def embed(images):
        """The twin network's feature vector of each image."""
        return {"embedding": embed_inputs(to_model_input(images, size))}

    @tf.function(input_signature=[_encoded("images")])
    def embed_encoded(images):
        """The twin network's feature vector of each image file."""
        return {"embedding": embed_inputs(decode_images(images, size))}

    @tf.function(input_signature=[_images("queries"), _images("support")])
    def one_shot_(queries, support):
        """Scores of each query against each support image, and the best one."""
        return one_shot(to_model_input(queries, size), to_model_input(support, size))

    @tf.function(input_signature=[_encoded("queries"), _encoded("support")])
    def one_shot_encoded(queries, support):
        """``one_shot`` for image files."""
        return one_shot(decode_images(queries, size), decode_images(support, size))

    @tf.function(input_signature=[_images("queries"), _images("support")])
    def one_shot_tta_(queries, support):
        """``one_shot`` with test-time augmentation: scores averaged over fixed views."""
        return one_shot_tta(to_model_input(queries, size), to_model_input(support, size))

    @tf.function(input_signature=[_encoded("queries"), _encoded("support")])
    def one_shot_tta_encoded(queries, support):
        """``one_shot_tta`` for image files."""
        return one_shot_tta(decode_images(queries, size), decode_images(support, size))

    signatures = {
        "serving_default": serving_default,
        "pair_encoded": pair_encoded,
        "embed": embed,
        "embed_encoded": embed_encoded,
        "one_shot": one_shot_,
        "one_shot_encoded": one_shot_encoded,
        "one_shot_tta": one_shot_tta_,
        "one_shot_tta_encoded": one_shot_tta_encoded,
    }
    for name, function in signatures.items():
        setattr(module, name, function)
    return module, signatures


def versions(model_dir: str | Path) -> list[int]:
    """The version numbers exported under ``model_dir``, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: str | Path) -> int:
    """One more than the highest version under ``model_dir`` (1 if none)."""
    return (versions(model_dir) or [0])[-1] + 1


def export_saved_model(
    model: keras.Model,
    export_dir: str | Path = "saved_models",
    name: str = "siamese",
    version: int | None = None,
    views: int = TTA_VIEWS,
    symmetries: int = TTA_SYMMETRIES,
) -> Path:
    """Writes ``model`` as ``<export_dir>/<name>/<version>/`` atomically.

    Args:
        model: a Siamese model from ``build_siamese`` (trained or not).
        export_dir: root folder of the model server (TF Serving's base path).
        name: model name, the folder under ``export_dir``.
        version: version number; default one more than the highest present.
        views: views averaged by the ``one_shot_tta`` signatures.
        symmetries: the symmetries those views cycle through (1, 4 or 8;
            ``augmentation.view_transforms``).

    Returns:
        The folder of the new version.

    Raises:
        FileExistsError: ``version`` is given and already exported.
        ValueError: ``views`` or ``symmetries`` out of range (``config.check_tta``).
    """
    check_tta(views, symmetries)
    model_dir = Path(export_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} already exists")
    module, signatures = _build_module(model, views, symmetries)
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        while True:
            target = model_dir / str(version if version is not None else next_version(model_dir))
            try:
                # rename is atomic, and fails if another export took the name.
                os.rename(staging, target)
                return target
            except OSError:
                if version is not None or not target.exists():
                    raise
                # A concurrent export took this version: take the next one.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m keras_siamese.export``: a ``.keras`` model (or an ensemble) to a new version."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.export",
        description="Export a trained .keras model (or a run folder's best.keras) "
        "as a new SavedModel version for TensorFlow Serving; given several, export their "
        "ensemble (the mean of their scores).",
    )
    parser.add_argument(
        "model", nargs="+", help="a .keras file or a run folder holding best.keras"
    )
    parser.add_argument("--export-dir", default="saved_models", help="base folder (default: %(default)s)")
    parser.add_argument("--name", default="siamese", help="model name (default: %(default)s)")
    parser.add_argument("--version", type=int, default=None, help="version (default: next)")
    add_tta_arguments(parser)
    args = parser.parse_args(argv)
    try:
        model = load_models(args.model)
    except FileNotFoundError as error:
        parser.error(str(error))
    target = export_saved_model(
        model, args.export_dir, args.name, args.version, args.tta_views, args.tta_symmetries
    )
    print(f"Exported {' + '.join(args.model)} to {target}")


if __name__ == "__main__":
    main()
