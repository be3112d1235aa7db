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

Every signature holds a request to :class:`ExportLimits` in the graph itself (image sizes read
from file headers before decoding, image counts, ``Q * K``, finite pixels), so the limits hold
under TF Serving too; the ``limits`` signature and ``assets.extra/limits.json`` tell clients
what they are (docs/serving.md, "Limits"). A model with non-finite weights or scores is not
exported, and staging folders left by interrupted exports are removed (:func:`stale_staging`).

Every version carries TF Serving's warm-up file, ``assets.extra/tf_serving_warmup_requests``
(:func:`warmup_requests`): one representative request per signature, which TF Serving (and the
local server) replays when it loads the version, so that the first client request does not pay
for TensorFlow's lazy initialisation (docs/benchmarks.md, "Warm-up").
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

import keras_siamese  # noqa: F401  (registers the custom layer and optimiser for load_model)
from keras_siamese.augmentation import transform, tta_transforms
from keras_siamese.config import (
    TTA_SYMMETRIES, TTA_VIEWS, Bounds, add_tta_arguments, check_tta,
)
from keras_siamese.model import head_of, load_models, non_finite_weights, siamese_members, twin_of
from keras_siamese.preprocessing import (
    DEFAULT_MAX_PIXELS,
    _text,
    check_images,
    decode_images,
    to_model_input,
)

SIGNATURES = (
    "serving_default",
    "pair_encoded",
    "embed",
    "embed_encoded",
    "one_shot",
    "one_shot_encoded",
    "one_shot_tta",
    "one_shot_tta_encoded",
    "limits",
    "compare",
    "model_info",
)

# TF Serving's warm-up file, in a version's assets.extra/, and the most records it replays.
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# The decision threshold for "none of these" when none was chosen on validation classes:
# the probability at which the network's own training makes "same" and "different" equal.
DEFAULT_THRESHOLD = 0.5

# Distances (query x support row x embedding unit) that ``compare`` computes at a time.
_COMPARE_ELEMENTS = 1 << 20

# A staging folder not modified for this long is stale whoever wrote it; exports take seconds.
STALE_AFTER_SECONDS = 3600

# Staging folders are named .tmp-<pid>-<random hex>-<host>: an export can tell its own host's
# leftovers (their process is gone) from exports in progress.
_STAGING = re.compile(r"^\.tmp-(\d+)-([0-9a-f]{32})-(.+)$")


@dataclasses.dataclass(frozen=True)
class ExportLimits:
    """The most work one request may ask of the SavedModel; checked in its graph.

    Each limit holds wherever the SavedModel runs (TF Serving, the local server,
    ``tf.saved_model.load``): a request over one fails with ``InvalidArgumentError``
    (HTTP 400, gRPC INVALID_ARGUMENT) naming it, before the work is done.
    docs/serving.md, "Limits", gives the reasons for the defaults.

    Attributes:
        max_pixels: pixels (height x width) of one image: what a file's header
            declares, or the ``H * W`` of a float input.
        max_images: images in one input (``N`` of ``left``, ``right`` and ``images``;
            ``Q`` and ``K`` of ``queries`` and ``support``).
        max_pairs: ``Q * K`` of a ``one_shot`` request, the size of its
            ``(Q, K, d)`` comparison.
        max_gallery: ``K``, the support embeddings of a ``compare`` request (a gallery,
            compared in chunks, so its memory does not grow with ``Q * K``).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = 256
    max_pairs: int = 16_384
    max_gallery: int = 1_000_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _LIMIT_BOUNDS.check(field.name, getattr(self, field.name))


# Every limit is a count of at least 1.
_LIMIT_BOUNDS = Bounds(int, at_least=1)


def _images(name: str, channels: int) -> tf.TensorSpec:
    return tf.TensorSpec((None, None, None, channels), tf.float32, name=name)


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


def model_id(model: keras.Model) -> str:
    """A fingerprint of ``model``'s weights: equal for two exports of the same network.

    A gallery of embeddings records it, so that it is never compared with embeddings of
    another network (``gallery``).
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))
        digest.update(f"{variable.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _build_module(
    model: keras.Model,
    views: int = TTA_VIEWS,
    symmetries: int = TTA_SYMMETRIES,
    seed: int = 0,
    limits: ExportLimits = ExportLimits(),
    info: dict | None = None,
) -> tuple[tf.Module, dict]:
    """A ``tf.Module`` with the serving endpoints of ``model`` (a Siamese model or an ensemble),
    each refusing requests over ``limits``; ``model_info`` returns ``info`` (``model_info``)."""
    info = info if info is not None else _model_info(model, DEFAULT_THRESHOLD)
    model = serving_copy(model)
    size = model.input["left"].shape[1]
    channels = model.input["left"].shape[-1]
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

    def finite_scores_of(queries, support):
        # scores_of, refusing embeddings that give a non-finite distance: a NaN or infinite
        # value in a query or a support embedding makes its logits NaN or infinite. Checked
        # on the (Q, chunk) logits rather than on the (K, d) support: a pass over the
        # support costs more than the comparison itself when Q = 1.
        per_member = []
        for (_, head), q, s in zip(members, queries, support):
            logits = head.distance_logits(
                tf.cast(q, head.compute_dtype)[:, None, :], tf.cast(s, head.compute_dtype)[None, :, :]
            )
            logits = tf.debugging.assert_all_finite(
                logits, "query_embeddings, support_embeddings: NaN or infinite values"
            )
            per_member.append(tf.cast(head.activation(logits)[..., 0], tf.float32))
        return tf.add_n(per_member) / len(members)

    widths = [int(twin.output.shape[-1]) for twin, _ in members]
    width = sum(widths)

    def compared(queries, support):
        # The support is sliced into chunks of about _COMPARE_ELEMENTS / (Q * width) rows, so
        # the (Q, chunk, d) distances stay in a core's cache whatever Q and K; nothing is
        # padded or copied.
        q, k = tf.shape(queries)[0], tf.shape(support)[0]
        chunk = tf.clip_by_value(_COMPARE_ELEMENTS // tf.maximum(q * width, 1), 1, tf.maximum(k, 1))
        # One step at least: an empty support gives (Q, 0) scores.
        steps = tf.maximum((k + chunk - 1) // chunk, 1)

        def step(i, scores):
            rows = support[i * chunk : (i + 1) * chunk]
            chunk_scores = finite_scores_of(
                tf.split(queries, widths, axis=1), tf.split(rows, widths, axis=1)
            )
            # (rows, Q): the chunks are concatenated along the support.
            return i + 1, scores.write(i, tf.transpose(chunk_scores))

        _, scores = tf.while_loop(
            lambda i, _: i < steps,
            step,
            (0, tf.TensorArray(tf.float32, size=steps, infer_shape=False,
                               element_shape=tf.TensorShape([None, None]))),
        )  # fmt: skip
        return tf.transpose(scores.concat())

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

    # The limits are checked before the work they bound: counts before any image is
    # decoded or embedded, sizes before any pixel is decoded or resized.
    def counted(*named):
        checks = []
        for name, x in named:
            n = tf.shape(x, out_type=tf.int64)[0]
            message = _text(
                name, ": ", n, f" images, over the export limit max_images={limits.max_images}"
            )
            checks.append(tf.debugging.Assert(n <= limits.max_images, [message]))
        if len(named) == 2 and named[0][0] == "queries":
            q, k = (tf.shape(x, out_type=tf.int64)[0] for _, x in named)
            message = _text(
                q, " queries x ", k, " support images = ", q * k,
                f" pairs, over the export limit max_pairs={limits.max_pairs}",
            )  # fmt: skip
            checks.append(tf.debugging.Assert(q * k <= limits.max_pairs, [message]))
        with tf.control_dependencies(checks):
            return [tf.identity(x) for _, x in named]

    def pixels(**named):
        # Float images: counted, then no larger than max_pixels and finite, then preprocessed.
        return [
            to_model_input(check_images(x, limits.max_pixels, name), size)
            for name, x in zip(named, counted(*named.items()))
        ]

    def files(**named):
        return [
            decode_images(x, size, limits.max_pixels, name, channels)
            for name, x in zip(named, counted(*named.items()))
        ]

    def embeddings(queries, support):
        # Embeddings from a client: as many as the limits allow, of the network's width, finite.
        q, k = (tf.shape(x, out_type=tf.int64)[0] for x in (queries, support))
        checks = [
            tf.debugging.Assert(q <= limits.max_images, [_text(
                "query_embeddings: ", q, f" rows, over the export limit max_images={limits.max_images}"
            )]),
            tf.debugging.Assert(k <= limits.max_gallery, [_text(
                "support_embeddings: ", k,
                f" rows, over the export limit max_gallery={limits.max_gallery}",
            )]),
        ]  # fmt: skip
        with tf.control_dependencies(checks):
            return tf.identity(queries), tf.identity(support)

    @tf.function(input_signature=[_images("left", channels), _images("right", channels)])
    def serving_default(left, right):
        """Same-character probability of each (left, right) pair of images."""
        return pair(*pixels(left=left, right=right))

    @tf.function(input_signature=[_encoded("left"), _encoded("right")])
    def pair_encoded(left, right):
        """Same-character probability of each (left, right) pair of image files."""
        return pair(*files(left=left, right=right))

    @tf.function(input_signature=[_images("images", channels)])
    def embed(images):
        """The twin network's feature vector of each image."""
        return {"embedding": embed_inputs(*pixels(images=images))}

    @tf.function(input_signature=[_encoded("images")])
    def embed_encoded(images):
        """The twin network's feature vector of each image file."""
        return {"embedding": embed_inputs(*files(images=images))}

    @tf.function(input_signature=[_images("queries", channels), _images("support", channels)])
    def one_shot_(queries, support):
        """Scores of each query against each support image, and the best one."""
        return one_shot(*pixels(queries=queries, support=support))

    @tf.function(input_signature=[_encoded("queries"), _encoded("support")])
    def one_shot_encoded(queries, support):
        """``one_shot`` for image files."""
        return one_shot(*files(queries=queries, support=support))

    @tf.function(input_signature=[_images("queries", channels), _images("support", channels)])
    def one_shot_tta_(queries, support):
        """``one_shot`` with test-time augmentation: scores averaged over fixed views."""
        return one_shot_tta(*pixels(queries=queries, support=support))

    @tf.function(input_signature=[_encoded("queries"), _encoded("support")])
    def one_shot_tta_encoded(queries, support):
        """``one_shot_tta`` for image files."""
        return one_shot_tta(*files(queries=queries, support=support))

    @tf.function(input_signature=[])
    def limits_():
        """The limits this SavedModel holds every request to (``ExportLimits``)."""
        return {
            field.name: tf.constant(getattr(limits, field.name), tf.int64)
            for field in dataclasses.fields(limits)
        }

    @tf.function(input_signature=[
        tf.TensorSpec((None, width), tf.float32, name="query_embeddings"),
        tf.TensorSpec((None, width), tf.float32, name="support_embeddings"),
    ])  # fmt: skip
    def compare(query_embeddings, support_embeddings):
        """Scores of each query against each support embedding (from ``embed``): a gallery."""
        return {"scores": compared(*embeddings(query_embeddings, support_embeddings))}

    @tf.function(input_signature=[])
    def model_info_():
        """The network's fingerprint, its decision threshold and input (``model_info``)."""
        return {
            "model_id": tf.constant(info["model_id"]),
            "threshold": tf.constant(info["threshold"], tf.float32),
            "embedding_size": tf.constant(info["embedding_size"], tf.int64),
            "image_size": tf.constant(info["image_size"], tf.int64),
            "channels": tf.constant(info["channels"], tf.int64),
        }

    signatures = {
        "serving_default": serving_default,
        "pair_encoded": pair_encoded,
        "embed": embed,
        "embed_encoded": embed_encoded,
        "one_shot": one_shot_,
        "one_shot_encoded": one_shot_encoded,
        "one_shot_tta": one_shot_tta_,
        "one_shot_tta_encoded": one_shot_tta_encoded,
        "limits": limits_,
        "compare": compare,
        "model_info": model_info_,
    }
    for name, function in signatures.items():
        setattr(module, name, function)
    return module, signatures


# A version folder's name: ASCII digits only, as TF Serving reads them ("²".isdigit() is true,
# but int("²") fails).
VERSION_NAME = re.compile(r"[0-9]+", re.ASCII)


def versions(model_dir: str | Path) -> list[int]:
    """The version numbers exported under ``model_dir``, ascending (none if it is missing).

    Only folders named by ASCII digits count. A folder that cannot be listed raises
    ``OSError`` (a server reports it and polls again); an entry that vanishes meanwhile is
    skipped.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    numbers = []
    with os.scandir(model_dir) as entries:
        for entry in entries:
            try:
                if VERSION_NAME.fullmatch(entry.name) and entry.is_dir():
                    numbers.append(int(entry.name))
            except OSError:
                continue
    return sorted(numbers)


def next_version(model_dir: str | Path) -> int:
    """One more than the highest version under ``model_dir`` (1 if none)."""
    return (versions(model_dir) or [0])[-1] + 1


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _last_modified(folder: Path) -> float:
    """The latest modification time of ``folder`` or anything in it."""
    times = [folder.stat().st_mtime]
    for root, dirs, names in os.walk(folder):
        for entry in dirs + names:
            try:
                times.append(os.stat(os.path.join(root, entry), follow_symlinks=False).st_mtime)
            except FileNotFoundError:  # removed meanwhile
                pass
    return max(times)


def stale_staging(model_dir: str | Path, now: float | None = None) -> list[Path]:
    """The staging folders (``.tmp-*``) under ``model_dir`` that no export is writing.

    A folder written on this host is stale once the process named in it has
    ended. Any staging folder, whatever its name or host, is stale once nothing in it
    has changed for ``STALE_AFTER_SECONDS`` (a host's process ids can be reused, and
    another host's cannot be checked).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    stale = []
    for folder in sorted(model_dir.glob(".tmp-*")):
        match = _STAGING.match(folder.name)
        try:
            ended = match and match[3] == host and not _process_alive(int(match[1]))
            if ended or now - _last_modified(folder) > STALE_AFTER_SECONDS:
                stale.append(folder)
        except FileNotFoundError:  # finished or removed meanwhile
            pass
    return stale


def remove_stale_staging(model_dir: str | Path) -> list[Path]:
    """Removes the stale staging folders under ``model_dir`` (:func:`stale_staging`);
    returns them."""
    stale = stale_staging(model_dir)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _check_weights(model: keras.Model) -> None:
    """Raises ValueError naming the first weight of ``model`` that holds NaN or infinity."""
    for path, bad, size in non_finite_weights(model)[:1]:
        variable = next(v for v in model.variables if v.path == path)
        kind = "NaN" if np.isnan(np.asarray(variable.numpy(), np.float32)).any() else "infinite values"
        raise ValueError(f"refusing to export: weight {path} holds {kind} ({bad} of {size})")


def _model_info(model: keras.Model, threshold: float) -> dict:
    """What the ``model_info`` signature and ``assets.extra/model.json`` say of ``model``."""
    shape = model.input["left"].shape
    return {
        "model_id": model_id(model),
        "threshold": float(threshold),
        "embedding_size": sum(int(twin_of(m).output.shape[-1]) for m in siamese_members(model)),
        "image_size": int(shape[1]),
        "channels": int(shape[-1]),
    }


def _probe_images(image_size: int, channels: int, max_pixels: int) -> list[np.ndarray]:
    """A blank and two random images ``(1, side, side, channels)``, float32 pixel values, each
    within ``max_pixels`` and as large as the network's input (:func:`_probe`, the warm-up)."""
    side = min(image_size, math.isqrt(max_pixels))
    rng = np.random.default_rng(0)
    return [np.full((1, side, side, channels), 255.0, np.float32)] + [
        rng.integers(0, 256, (1, side, side, channels)).astype(np.float32) for _ in range(2)
    ]


def _probe(signatures: dict, image_size: int, channels: int, limits: ExportLimits) -> None:
    """Runs ``one_shot`` on blank and random images, one pair a call (within any limits);
    raises ValueError unless every score is a finite probability."""
    images = _probe_images(image_size, channels, limits.max_pixels)
    scores = [
        float(signatures["one_shot"](queries=q, support=s)["scores"].numpy()[0, 0])
        for q in images
        for s in images
    ]
    if not all(0.0 <= score <= 1.0 for score in scores):  # False for NaN
        raise ValueError(
            "refusing to export: the model's one_shot scores of blank and random images are "
            f"not probabilities in [0, 1]: {scores}"
        )


def _warmup_tensor(spec: tf.TensorSpec, image: np.ndarray) -> np.ndarray:
    """A representative value for one signature input: ``image`` for pixel inputs, the same
    image as a PNG file for string inputs, a row of zeros for embedding inputs."""
    if spec.dtype == tf.string:
        pixels = np.clip(image[0], 0, 255).astype(np.uint8)
        return np.array([tf.io.encode_png(pixels).numpy()], dtype=object)
    if spec.shape.rank == 4:
        return image.astype(spec.dtype.as_numpy_dtype)
    if spec.shape.rank == 2 and spec.shape[1] is not None:
        return np.zeros((1, spec.shape[1]), spec.dtype.as_numpy_dtype)
    raise ValueError(f"no warm-up value for input {spec.name!r} of shape {spec.shape}")


def warmup_requests(
    model_name: str, signatures: dict, image_size: int, channels: int, max_pixels: int
) -> list:
    """TF Serving's warm-up records for a SavedModel: one ``PredictionLog`` per signature.

    Each holds a ``PredictRequest`` for ``model_name`` and the signature, with one image per
    image input (a random image of the network's input size, at most ``max_pixels``; a PNG
    file for string inputs) and one row of zeros per embedding input, so it is within any
    :class:`ExportLimits`.

    Args:
        signatures: signature name to its function (``tf.function`` or concrete function).
        image_size, channels: the network's input.
        max_pixels: the export's limit on one image.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    image = _probe_images(image_size, channels, max_pixels)[1]
    logs = []
    for name, function in signatures.items():
        if not isinstance(function, tf.types.experimental.ConcreteFunction):
            function = function.get_concrete_function()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = name
        positional, named = function.structured_input_signature
        specs = named or {spec.name: spec for spec in positional}
        for key, spec in specs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(_warmup_tensor(spec, image)))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        ))
    return logs


def write_warmup_file(folder: str | Path, logs: list) -> Path:
    """Writes ``logs`` (``PredictionLog`` records) as ``folder/assets.extra/`` +
    :data:`WARMUP_FILE`, the TFRecord file TF Serving replays when it loads the version."""
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warm-up records; TF Serving takes at most {MAX_WARMUP_RECORDS}")
    path = Path(folder) / "assets.extra" / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(folder: str | Path) -> list:
    """The ``PredictionLog`` records of a version's warm-up file (none if it has none).

    Raises:
        ValueError: the file is not a TFRecord of ``PredictionLog`` records, or holds more
            than TF Serving's :data:`MAX_WARMUP_RECORDS`.
    """
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(folder) / "assets.extra" / WARMUP_FILE
    if not path.is_file():
        return []
    logs = []
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
            if len(logs) > MAX_WARMUP_RECORDS:
                raise ValueError(f"{path}: more than {MAX_WARMUP_RECORDS} warm-up records "
                                 "(TF Serving's limit)")
    except (tf.errors.OpError, DecodeError) as error:
        raise ValueError(f"{path}: not a TFRecord file of PredictionLog records: "
                         f"{type(error).__name__}: {error}") from None
    return logs


def export_saved_model(
    model: keras.Model,
    export_dir: str | Path = "saved_models",
    name: str = "siamese",
    version: int | None = None,
    views: int = TTA_VIEWS,
    symmetries: int = TTA_SYMMETRIES,
    limits: ExportLimits = ExportLimits(),
    threshold: float = DEFAULT_THRESHOLD,
) -> Path:
    """Writes ``model`` as ``<export_dir>/<name>/<version>/`` atomically.

    Before writing, the model is checked: a weight holding NaN or infinity, or
    scores of blank and random images that are not probabilities, refuse the
    export and nothing is written. Staging folders that earlier exports left
    behind (:func:`stale_staging`) are removed.

    Args:
        model: a Siamese model from ``build_siamese`` (trained or not).
        export_dir: root folder of the model server (TF Serving's base path).
        name: model name, the folder under ``export_dir``.
        version: version number; default one more than the highest present.
        views: views averaged by the ``one_shot_tta`` signatures.
        symmetries: the symmetries those views cycle through (1, 4 or 8;
            ``augmentation.view_transforms``).
        limits: the most work one request may ask (:class:`ExportLimits`); the
            ``limits`` signature and ``assets.extra/limits.json`` record them.
        threshold: the score below which a query matches none of the support images,
            chosen on validation classes; the ``model_info`` signature and
            ``assets.extra/model.json`` record it with the network's :func:`model_id`.

    Returns:
        The folder of the new version.

    Raises:
        FileExistsError: ``version`` is given and already exported.
        ValueError: ``views`` or ``symmetries`` out of range (``config.check_tta``), or
            the model has non-finite weights or scores.
    """
    check_tta(views, symmetries)
    _check_weights(model)
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    info = _model_info(model, threshold)

    def write(staging: Path) -> None:
        module, signatures = _build_module(model, views, symmetries, limits=limits, info=info)
        _probe(signatures, info["image_size"], info["channels"], limits)
        tf.saved_model.save(module, str(staging), signatures=signatures)
        # assets.extra is for the SavedModel's users; of its files TF Serving reads only
        # the warm-up requests, which it replays before it serves the version.
        (staging / "assets.extra").mkdir(exist_ok=True)
        (staging / "assets.extra" / "limits.json").write_text(
            json.dumps(dataclasses.asdict(limits), indent=2) + "\n"
        )
        (staging / "assets.extra" / "model.json").write_text(json.dumps(info, indent=2) + "\n")
        write_warmup_file(staging, warmup_requests(
            name, signatures, info["image_size"], info["channels"], limits.max_pixels
        ))

    return write_version(Path(export_dir) / name, version, write)


def write_version(
    model_dir: str | Path, version: int | None, write: Callable[[Path], None]
) -> Path:
    """Writes a new version folder under ``model_dir`` atomically.

    ``write(staging)`` fills a hidden staging folder, which is then renamed to the version's
    number: a model server never sees a half-written version. Stale staging folders of earlier
    exports are removed first (:func:`stale_staging`).

    Args:
        model_dir: the model's folder, ``<export_dir>/<name>``.
        version: the version number; None for one more than the highest present (the next free
            one if a concurrent export takes it first).
        write: writes the SavedModel into the folder it is given.

    Raises:
        FileExistsError: ``version`` is given and already exported.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(model_dir)
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} already exists")
    staging = model_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{socket.gethostname()}"
    try:
        write(staging)
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


def _run_threshold(source: str) -> float:
    """The threshold a run folder's ``metrics.json`` records, else ``DEFAULT_THRESHOLD``."""
    metrics = Path(source) / "metrics.json"
    try:
        return float(json.loads(metrics.read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_THRESHOLD


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
    parser.add_argument(
        "--threshold", type=Bounds(float, at_least=0, at_most=1).parser("threshold"), default=None,
        help="the score below which a query matches none of the support images (default: the "
        "threshold in a run folder's metrics.json, chosen on validation classes, else "
        f"{DEFAULT_THRESHOLD})",
    )  # fmt: skip
    defaults = ExportLimits()
    for field in dataclasses.fields(ExportLimits):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_LIMIT_BOUNDS.parser(field.name),
            default=getattr(defaults, field.name),
            help=f"refuse requests over this {field.name} (default: %(default)s; "
            "docs/serving.md, Limits)",
        )
    args = parser.parse_args(argv)
    try:
        limits = ExportLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportLimits)})
    except ValueError as error:
        parser.error(str(error))
    try:
        model = load_models(args.model)
    except (FileNotFoundError, ValueError) as error:  # missing, or truncated (UnreadableFileError)
        parser.error(str(error))
    threshold = args.threshold
    if threshold is None:
        threshold = _run_threshold(args.model[0]) if len(args.model) == 1 else DEFAULT_THRESHOLD
    try:
        target = export_saved_model(
            model, args.export_dir, args.name, args.version, args.tta_views,
            args.tta_symmetries, limits, threshold,
        )  # fmt: skip
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Exported {' + '.join(args.model)} to {target}")


if __name__ == "__main__":
    main()
