"""A gallery: images enrolled under labels once, new images identified against it.

    python -m keras_siamese.gallery enrol --model saved_models/siamese/1 --images faces/ --gallery g/
    python -m keras_siamese.gallery identify --model saved_models/siamese/1 --gallery g/ new.jpg
    python -m keras_siamese.gallery export --model saved_models/siamese/1 --gallery g/ \\
        --export-dir saved_models --model-name faces

:func:`enrol` embeds each image once with an exported SavedModel's ``embed_encoded`` signature
and keeps the embeddings with their labels (:class:`Gallery`; :func:`save` and :func:`load` keep
it in a folder). :func:`identify` embeds new images and compares them with every enrolled
embedding with the SavedModel's ``compare`` signature, the network's own head: the score of a
label is the best score over its enrolled images, and a query whose best label scores below
the threshold is "unknown". Everything runs on the SavedModel alone (plain TensorFlow, no
Keras model), and a gallery records the ``model_id`` of the network that embedded it, so it is
never compared with embeddings of another network (:class:`GalleryMismatchError`).

:func:`export_gallery` writes a new SavedModel version that holds the gallery's embeddings and
labels together with the base SavedModel's functions; its ``identify_encoded`` and ``identify``
signatures answer with the label, score, known flag and best enrolled image of each query
without embedding the gallery again. Both paths compare in the same way
(:func:`best_matches`): the gallery a chunk at a time through ``compare``, keeping only each
query's best score and image, so the memory of a request does not grow with the gallery
(docs/benchmarks.md, "Gallery identification").

Images are sent to the SavedModel as encoded files: PNG, JPEG, GIF, BMP and (still) WebP as
they are; other formats Pillow reads (PGM and the other Netpbm formats, TIFF, animated WebP)
are decoded as ``data.folder`` decodes them for training and re-encoded as 8-bit grey or RGB
PNG first.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_siamese import export
from keras_siamese.data import folder as image_folder
from keras_siamese.files import replace_atomically, write_text_atomically

PathLike = str | os.PathLike

# The formats TensorFlow's decoder (and so every exported SavedModel) takes as they are.
TF_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})

# The files of a saved gallery.
EMBEDDINGS_FILE, GALLERY_FILE = "embeddings.npy", "gallery.json"
GALLERY_FORMAT = "keras_siamese.gallery/1"

# The signatures a SavedModel needs for galleries (export.py writes them all).
REQUIRED_SIGNATURES = ("embed_encoded", "compare", "model_info", "limits")

# The signatures of an exported gallery.
GALLERY_SIGNATURES = (
    "serving_default", "identify_encoded", "identify", "model_info", "gallery_info", "limits",
)  # fmt: skip

# Scores (query x enrolled image) one ``compare`` call returns at most (16 MiB of float32):
# a request's memory does not grow with the gallery, and calls are few (``compare`` bounds
# its own (Q, chunk, d) distances).
SCORE_ELEMENTS = 1 << 22


class GalleryError(ValueError):
    """A gallery, an image or a SavedModel that cannot be used; the message says why."""


class GalleryMismatchError(GalleryError):
    """A gallery compared with a SavedModel of another network than the one that embedded it."""


# ---------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Gallery:
    """Enrolled images: one embedding and one label per image.

    Attributes:
        labels: the label of each enrolled image.
        embeddings: float32 ``(K, D)``, row ``k`` the embedding of ``files[k]`` (read-only).
        files: the enrolled image files, as given (or found in the folder).
        model_id: the ``model_id`` of the SavedModel that embedded them.
        threshold: a query whose best label scores below this is unknown.
        saved_model: the SavedModel version folder they were embedded with.
    """

    labels: tuple[str, ...]
    embeddings: np.ndarray
    files: tuple[str, ...]
    model_id: str
    threshold: float
    saved_model: str

    def __post_init__(self) -> None:
        embeddings = np.array(self.embeddings, np.float32, order="C")
        embeddings.setflags(write=False)
        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        object.__setattr__(self, "threshold", float(self.threshold))
        if embeddings.ndim != 2 or not len(embeddings):
            raise GalleryError(f"a gallery needs (K, D) embeddings, K >= 1; got {embeddings.shape}")
        if not len(self.labels) == len(self.files) == len(embeddings):
            raise GalleryError(
                f"a gallery needs one label and one file per embedding: {len(self.labels)} "
                f"labels, {len(self.files)} files, {len(embeddings)} embeddings"
            )
        for label in self.labels:
            _check_label(label)
        if not np.isfinite(embeddings).all():
            raise GalleryError("a gallery's embeddings must be finite")
        _check_threshold(self.threshold)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Each label once, in the order first enrolled."""
        return tuple(dict.fromkeys(self.labels))


@dataclasses.dataclass(frozen=True)
class Identification:
    """What a gallery says of one query image.

    Attributes:
        label: the best label, or None (printed "unknown") when its score is below the
            threshold.
        score: the best label's score: the network's same-class probability of the query and
            that label's closest enrolled image.
        known: ``score >= threshold``.
        index: the enrolled image that scored best (``gallery.files[index]``).
    """

    label: str | None
    score: float
    known: bool
    index: int


def _check_label(label: Any) -> None:
    # An exported gallery answers "" for an unknown query, so "" is not a label.
    if not isinstance(label, str) or not label.strip():
        raise GalleryError(f"labels must be non-empty strings, got {label!r}")


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise GalleryError(f"the threshold must be a probability in [0, 1], got {threshold}")


# ---------------------------------------------------------------------------------------------
# The SavedModel
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SavedModel:
    """An exported SavedModel version, loaded with plain TensorFlow, and what it says of itself.

    Attributes:
        path: the version folder.
        module: what ``tf.saved_model.load`` returned.
        model_id: the fingerprint of the network's weights (``model_info``).
        threshold: the decision threshold chosen at training time (``model_info``).
        embedding_size: ``D``.
        channels: the image channels the network takes.
        max_images: the most images (and query embeddings) one call may take.
        max_pixels: the most pixels one image may have.
        max_gallery: the most support embeddings one ``compare`` call may take.
    """

    path: Path
    module: Any
    model_id: str
    threshold: float
    embedding_size: int
    channels: int
    max_images: int
    max_pixels: int
    max_gallery: int

    def signature(self, name: str) -> Callable[..., dict[str, tf.Tensor]]:
        """The SavedModel's signature ``name`` (a concrete function taking keyword arguments)."""
        return self.module.signatures[name]


def open_saved_model(path: PathLike | SavedModel) -> SavedModel:
    """Loads an exported SavedModel: a version folder, or a model folder (its highest version).

    Raises:
        GalleryError: there is no SavedModel there, or it lacks the signatures galleries need
            (exported before they existed).
    """
    if isinstance(path, SavedModel):
        return path
    path = Path(path).expanduser().absolute()
    if not (path / "saved_model.pb").is_file() and export.versions(path):
        path = path / str(export.versions(path)[-1])
    if not (path / "saved_model.pb").is_file():
        raise GalleryError(
            f"{path}: not a SavedModel (no saved_model.pb); give a version folder such as "
            "saved_models/siamese/1, written by python -m keras_siamese.export"
        )
    try:
        module = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise GalleryError(f"{path}: cannot load the SavedModel ({error})") from error
    missing = [name for name in REQUIRED_SIGNATURES if name not in module.signatures]
    if missing:
        raise GalleryError(
            f"{path}: the SavedModel has no {', '.join(missing)} signature; it was exported "
            "before galleries existed: export the model again (python -m keras_siamese.export)"
        )
    info = {k: v.numpy() for k, v in module.signatures["model_info"]().items()}
    limits = {k: int(v.numpy()) for k, v in module.signatures["limits"]().items()}
    return SavedModel(
        path=path.resolve(),
        module=module,
        model_id=info["model_id"].decode(),
        threshold=float(info["threshold"]),
        embedding_size=int(info["embedding_size"]),
        channels=int(info["channels"]),
        max_images=limits["max_images"],
        max_pixels=limits["max_pixels"],
        max_gallery=limits["max_gallery"],
    )


def check_same_network(model: SavedModel, gallery: Gallery) -> None:
    """Raises GalleryMismatchError unless ``gallery`` was embedded by ``model``'s network."""
    if gallery.model_id != model.model_id or gallery.embeddings.shape[1] != model.embedding_size:
        raise GalleryMismatchError(
            f"the gallery was enrolled with model {gallery.model_id} ({gallery.saved_model}, "
            f"{gallery.embeddings.shape[1]}-wide embeddings), but {model.path} is model "
            f"{model.model_id} ({model.embedding_size}-wide): embeddings of different networks "
            "cannot be compared. Enrol the images again with this model: python -m "
            f"keras_siamese.gallery enrol --model {model.path} --images DIR --gallery NEW_DIR"
        )


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


class _NamedBytes(io.BytesIO):
    """An image file's bytes that print as its name (in ``data.folder``'s error messages)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def encoded_image(image: PathLike | bytes, channels: int = 1, max_pixels: int | None = None,
                  name: str | None = None) -> bytes:  # fmt: skip
    """An image file's bytes in a format every exported SavedModel decodes.

    PNG, JPEG, GIF, BMP and still WebP files are returned as they are, exactly what a client
    of a served model sends. Any other image Pillow reads (PGM, TIFF, animated WebP, ...) is
    decoded as ``data.folder`` decodes images for training (first frame, transparency over
    white, deep images scaled to 8 bits, converted to ``channels``), rounded to 8 bits and
    re-encoded as a grey (``channels=1``) or RGB PNG.

    Args:
        image: a path, or the file's bytes.
        channels: the channels the network takes.
        max_pixels: refuse re-encoding a larger image (the SavedModel refuses large files
            itself); default ``preprocessing.DEFAULT_MAX_PIXELS``.
        name: what error messages call the image (default: its path).

    Raises:
        GalleryError: the file is missing, not an image, truncated or too large.
    """
    if isinstance(image, (bytes, bytearray)):
        data, name = bytes(image), name or "image"
    else:
        name = name or str(image)
        try:
            data = Path(image).read_bytes()
        except OSError as error:
            raise GalleryError(f"{name}: cannot read the image ({error.strerror or error})") from error
    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind, animated = opened.format, getattr(opened, "is_animated", False)
    except Image.UnidentifiedImageError as error:
        raise GalleryError(f"{name}: not an image file (no format Pillow or TensorFlow reads)") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise GalleryError(f"{name}: unreadable image ({error})") from error
    if kind in TF_FORMATS and not (kind == "WEBP" and animated):
        return data
    try:
        pixels = image_folder._decode(
            _NamedBytes(data, name), channels,
            max_pixels if max_pixels is not None else image_folder.DEFAULT_MAX_PIXELS, set(),
        )  # fmt: skip
    except image_folder.ImageFolderError as error:
        raise GalleryError(str(error)) from error
    pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB").save(
        png, format="PNG"
    )
    return png.getvalue()


@dataclasses.dataclass(frozen=True)
class ClassFolder:
    """The image files of a folder of labels.

    Attributes:
        images: each label (a subfolder's name; "group/label" two levels deep) and its image
            files, sorted by name.
        skipped: files and folders left out, counted by reason (hidden, not an image by its
            name, ...).
    """

    images: dict[str, list[Path]]
    skipped: dict[str, int]

    def summary(self) -> str:
        """One line: how many images of how many labels, and what was skipped."""
        count = sum(len(files) for files in self.images.values())
        text = f"{count} images of {len(self.images)} labels"
        if self.skipped:
            skipped = sum(self.skipped.values())
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            text += f"; skipped {skipped}: {reasons}"
        return text


def read_class_folder(path: PathLike) -> ClassFolder:
    """The labels and image files of a folder laid out as ``read_image_folder`` reads one:
    ``root/<label>/<images>`` (or ``root/<group>/<label>/<images>``). Hidden files and folders
    and names that are not an image's are skipped and counted.

    Raises:
        GalleryError: the folder is missing or not laid out so.
    """
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise GalleryError(f"{root}: no such folder of labels (expected {root}/<label>/<images>)")
    skipped: collections.Counter = collections.Counter()
    try:
        classes = image_folder._find_classes(root, skipped)
    except image_folder.ImageFolderError as error:
        raise GalleryError(str(error)) from error
    images = {label: [root / file for file in classes[label]] for label in sorted(classes)}
    return ClassFolder(images, dict(sorted(skipped.items())))


# ---------------------------------------------------------------------------------------------
# Embedding and comparing
# ---------------------------------------------------------------------------------------------


def embed_images(
    model: PathLike | SavedModel, images: Sequence[PathLike | bytes],
    names: Sequence[str] | None = None,
) -> np.ndarray:  # fmt: skip
    """The embeddings (float32 ``(N, D)``) of image files, through ``embed_encoded`` in batches
    of the SavedModel's ``max_images``.

    Raises:
        GalleryError: an image cannot be read or decoded; the message names it.
    """
    model = open_saved_model(model)
    if names is None:
        names = [f"images[{i}]" if isinstance(x, (bytes, bytearray)) else str(x)
                 for i, x in enumerate(images)]  # fmt: skip
    embed = model.signature("embed_encoded")
    batches = []
    for start in range(0, len(images), model.max_images):
        stop = min(start + model.max_images, len(images))
        data = [
            encoded_image(images[i], model.channels, model.max_pixels, names[i])
            for i in range(start, stop)
        ]
        try:
            batches.append(embed(images=tf.constant(data))["embedding"].numpy())
        except tf.errors.InvalidArgumentError:
            # Find the file the SavedModel refuses, one at a time.
            for i, one in zip(range(start, stop), data):
                try:
                    embed(images=tf.constant([one]))
                except tf.errors.InvalidArgumentError as error:
                    raise GalleryError(f"{names[i]}: {_tf_message(error)}") from None
            raise
    if not batches:
        return np.zeros((0, model.embedding_size), np.float32)
    return np.concatenate(batches).astype(np.float32, copy=False)


def _tf_message(error: tf.errors.OpError) -> str:
    """What a TensorFlow error says, without the graph, node and stack details around it."""
    skip = ("Graph execution error", "Detected at node", "Node:", "<stack traces", "[[")
    for line in error.message.splitlines():
        # Stack frames are indented; the message itself is not.
        if line.strip() and not line[0].isspace() and not line.startswith(skip):
            return re.sub(r"\s*\[Op:[^\]]*\]$", "", line.strip())
    return type(error).__name__


def best_matches(
    compare: Callable[..., dict[str, tf.Tensor]], queries: tf.Tensor, gallery: tf.Tensor,
    max_rows: int,
) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """Each query's best score against a gallery, and the gallery row that gives it.

    ``compare`` (a SavedModel's ``compare`` signature, the network's head) scores the queries
    against the gallery ``SCORE_ELEMENTS / Q`` rows at a time (at most ``max_rows``), and only
    the best score and row of each query are kept from call to call (the first row on a tie),
    so the memory of a request does not grow with the gallery.

    Args:
        compare: ``compare(query_embeddings=(Q, D), support_embeddings=(C, D))["scores"]``.
        queries: float32 ``(Q, D)``.
        gallery: float32 ``(K, D)``, ``K >= 1``.
        max_rows: the most support embeddings ``compare`` takes (its ``max_gallery``).

    Returns:
        float32 ``(Q,)`` best scores and int32 ``(Q,)`` gallery rows.
    """
    count, rows = tf.shape(queries)[0], tf.shape(gallery)[0]
    chunk = tf.clip_by_value(SCORE_ELEMENTS // tf.maximum(count, 1), 1, tf.minimum(rows, max_rows))

    def step(start, best, index):
        scores = compare(
            query_embeddings=queries, support_embeddings=gallery[start : start + chunk]
        )["scores"]
        # One score per query, however much of its shape ``compare`` declares.
        top = tf.ensure_shape(tf.reduce_max(scores, axis=1), queries.shape[:1])
        at = tf.ensure_shape(tf.argmax(scores, axis=1, output_type=tf.int32), queries.shape[:1])
        better = top > best
        return start + chunk, tf.where(better, top, best), tf.where(better, at + start, index)

    _, best, index = tf.while_loop(
        lambda start, *_: start < rows,
        step,
        (tf.constant(0), tf.fill([count], -np.inf), tf.zeros([count], tf.int32)),
        parallel_iterations=1,
    )
    return best, index


def _label_indices(gallery: Gallery) -> np.ndarray:
    """int32 ``(K,)``: each enrolled image's label as an index into ``gallery.label_names``."""
    position = {name: i for i, name in enumerate(gallery.label_names)}
    return np.array([position[label] for label in gallery.labels], np.int32)


class Identifier:
    """Identifies images against one gallery with one SavedModel.

    It keeps the gallery's embeddings as a tensor and the comparison traced between calls, so
    each call pays for the queries only. ``identify`` makes one for a single call.

    Raises:
        GalleryMismatchError: the gallery was embedded by another network.
    """

    def __init__(self, saved_model: PathLike | SavedModel, gallery: Gallery):
        self.model = open_saved_model(saved_model)
        check_same_network(self.model, gallery)
        self.gallery = gallery
        self._embeddings = tf.constant(gallery.embeddings)
        compare = self.model.signature("compare")
        self._best = tf.function(
            lambda queries: best_matches(
                compare, queries, self._embeddings, self.model.max_gallery
            ),
            input_signature=[tf.TensorSpec((None, self.model.embedding_size), tf.float32)],
        )

    def scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best score (float32 ``(Q,)``) and enrolled image (int32 ``(Q,)``) of each query
        embedding, ``max_images`` queries per comparison."""
        embeddings = np.asarray(embeddings, np.float32)
        best, index = [], []
        for start in range(0, len(embeddings), self.model.max_images):
            b, i = self._best(embeddings[start : start + self.model.max_images])
            best.append(b.numpy())
            index.append(i.numpy())
        if not best:
            return np.zeros(0, np.float32), np.zeros(0, np.int32)
        return np.concatenate(best), np.concatenate(index)

    def __call__(
        self, images: Sequence[PathLike | bytes], threshold: float | None = None
    ) -> list[Identification]:
        """Identifies each image (a path or a file's bytes); see :func:`identify`."""
        threshold = self.gallery.threshold if threshold is None else float(threshold)
        _check_threshold(threshold)
        best, index = self.scores(embed_images(self.model, images))
        # Compared in float32, as an exported gallery compares them.
        known = best >= np.float32(threshold)
        return [
            Identification(self.gallery.labels[i] if k else None, score, bool(k), i)
            for score, i, k in zip(best.tolist(), index.tolist(), known.tolist())
        ]


# ---------------------------------------------------------------------------------------------
# Enrol, identify, save, load
# ---------------------------------------------------------------------------------------------


def enrol(
    saved_model: PathLike | SavedModel,
    images: Mapping[str, Sequence[PathLike]] | PathLike,
) -> Gallery:
    """Embeds images once under their labels.

    Args:
        saved_model: an exported SavedModel (version folder, or a model folder for its highest
            version, or one already opened with :func:`open_saved_model`).
        images: each label and its image files; or a folder of labels, one subfolder per label
            holding its images (:func:`read_class_folder`: hidden files and names that are
            not an image's are skipped).

    Returns:
        The gallery, labels in the mapping's (or the folder's sorted) order; its threshold is
        the SavedModel's.

    Raises:
        GalleryError: no images, a label that is empty or not a string, or an image that
            cannot be read; the message names it.
    """
    model = open_saved_model(saved_model)
    if not isinstance(images, Mapping):
        images = read_class_folder(images).images
    labels, files = [], []
    for label, paths in images.items():
        _check_label(label)
        if isinstance(paths, (str, os.PathLike)) or not len(paths):
            raise GalleryError(f"label {label!r}: expected a list of image files, got {paths!r}")
        labels += [label] * len(paths)
        files += [str(path) for path in paths]
    if not files:
        raise GalleryError("nothing to enrol: no labels with images")
    return Gallery(
        labels=tuple(labels),
        embeddings=embed_images(model, files),
        files=tuple(files),
        model_id=model.model_id,
        threshold=model.threshold,
        saved_model=str(model.path),
    )


def identify(
    saved_model: PathLike | SavedModel,
    gallery: Gallery,
    images: Sequence[PathLike | bytes],
    threshold: float | None = None,
) -> list[Identification]:
    """The label of each image among the gallery's, or unknown.

    A label's score is the best (highest) score over that label's enrolled images; the
    best label is the one with the highest score, and it is known when that score is
    ``>= threshold``.

    Args:
        saved_model: the SavedModel the gallery was enrolled with (or another export of the
            same network).
        gallery: the enrolled images.
        images: paths or files' bytes.
        threshold: default the gallery's.

    Raises:
        GalleryMismatchError: the SavedModel's network is not the gallery's (``model_id``).
        GalleryError: an image cannot be read, or the threshold is not in [0, 1].
    """
    return Identifier(saved_model, gallery)(images, threshold)


def _embeddings_digest(embeddings: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(embeddings, np.float32).tobytes()).hexdigest()


def _description(gallery: Gallery) -> dict:
    """What ``gallery.json`` (and an exported gallery's ``assets.extra/gallery.json``) holds."""
    return {
        "format": GALLERY_FORMAT,
        "model_id": gallery.model_id,
        "threshold": gallery.threshold,
        "saved_model": gallery.saved_model,
        "count": len(gallery),
        "embedding_size": int(gallery.embeddings.shape[1]),
        "embeddings_sha256": _embeddings_digest(gallery.embeddings),
        "labels": list(gallery.labels),
        "files": list(gallery.files),
    }


def save(gallery: Gallery, folder: PathLike) -> Path:
    """Writes ``gallery`` to ``folder`` (created if needed): ``embeddings.npy`` and
    ``gallery.json``.

    Each file is written to a temporary name and renamed into place, ``gallery.json`` last;
    it records the count, size and a sha256 of the embeddings, so a folder whose
    ``gallery.json`` is missing or belongs to other embeddings (a save interrupted half-way)
    is refused by :func:`load`.

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    replace_atomically(
        folder / EMBEDDINGS_FILE, lambda partial: np.save(partial, gallery.embeddings)
    )
    write_text_atomically(folder / GALLERY_FILE, json.dumps(_description(gallery), indent=1) + "\n")
    return folder


def load(folder: PathLike) -> Gallery:
    """The gallery :func:`save` wrote to ``folder``.

    Raises:
        GalleryError: no gallery there, or a half-written, damaged or modified one; the
            message says what is wrong.
    """
    folder = Path(folder)
    description_path, embeddings_path = folder / GALLERY_FILE, folder / EMBEDDINGS_FILE
    if not folder.is_dir():
        raise GalleryError(f"{folder}: no such gallery folder")
    if not description_path.is_file():
        raise GalleryError(
            f"{folder}: not a gallery (no {GALLERY_FILE}): not written by gallery.save, or its "
            "save was interrupted; enrol the images again"
        )
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
        if description.get("format") != GALLERY_FORMAT:
            raise ValueError(f"format {description.get('format')!r}, expected {GALLERY_FORMAT!r}")
        count, width = int(description["count"]), int(description["embedding_size"])
        embeddings = np.load(embeddings_path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise GalleryError(f"{folder}: unreadable gallery ({type(error).__name__}: {error})") from error
    if (
        embeddings.dtype != np.float32
        or embeddings.shape != (count, width)
        or _embeddings_digest(embeddings) != description.get("embeddings_sha256")
    ):
        raise GalleryError(
            f"{folder}: {EMBEDDINGS_FILE} ({embeddings.dtype}, {embeddings.shape}) is not the "
            f"one {GALLERY_FILE} describes ({count} x {width} float32, sha256 "
            f"{str(description.get('embeddings_sha256'))[:12]}...): a save was interrupted or the "
            "files were changed; save or enrol the gallery again"
        )
    try:
        gallery = Gallery(
            labels=tuple(description["labels"]),
            embeddings=embeddings,
            files=tuple(description["files"]),
            model_id=str(description["model_id"]),
            threshold=float(description["threshold"]),
            saved_model=str(description["saved_model"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise GalleryError(f"{folder}: unreadable gallery ({error})") from error
    return gallery


# ---------------------------------------------------------------------------------------------
# The served gallery
# ---------------------------------------------------------------------------------------------


def _gallery_module(model: SavedModel, gallery: Gallery) -> tuple[tf.Module, dict]:
    """A ``tf.Module`` holding the base SavedModel, the gallery, and the gallery's signatures."""
    module = tf.Module()
    # The base SavedModel's variables and functions, saved again with the new version.
    module.base = model.module
    module.embeddings = tf.Variable(gallery.embeddings, trainable=False, name="gallery_embeddings")
    module.label_indices = tf.Variable(_label_indices(gallery), trainable=False, name="label_indices")
    module.label_names = tf.Variable(
        np.array(gallery.label_names, dtype=object), dtype=tf.string, trainable=False,
        name="label_names",
    )  # fmt: skip
    threshold = gallery.threshold
    signatures = model.module.signatures
    embed, embed_encoded = signatures["embed"], signatures["embed_encoded"]
    compare, model_info, limits = signatures["compare"], signatures["model_info"], signatures["limits"]

    def identified(embeddings):
        best, index = best_matches(
            compare, embeddings, tf.convert_to_tensor(module.embeddings), model.max_gallery
        )
        known = best >= threshold
        names = tf.gather(module.label_names, tf.gather(module.label_indices, index))
        return {
            "label": tf.where(known, names, ""),
            "score": best,
            "known": known,
            "index": index,
        }

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name="images")])
    def identify_encoded(images):
        """The best label (\"\" when unknown), its score, whether it is known and the best
        enrolled image of each image file."""
        return identified(embed_encoded(images=images)["embedding"])

    pixels = embed.structured_input_signature[1]["images"]

    @tf.function(input_signature=[tf.TensorSpec(pixels.shape, pixels.dtype, name="images")])
    def identify_(images):
        """``identify_encoded`` for pixel arrays, as ``embed`` takes them."""
        return identified(embed(images=images)["embedding"])

    @tf.function(input_signature=[])
    def model_info_():
        """The base network's ``model_info``."""
        return model_info()

    @tf.function(input_signature=[])
    def limits_():
        """The base network's ``limits``."""
        return limits()

    @tf.function(input_signature=[])
    def gallery_info():
        """The enrolled images: their count, the labels (each once), the threshold and the
        ``model_id`` of the network that embedded them."""
        return {
            "count": tf.constant(len(gallery), tf.int64),
            "labels": tf.convert_to_tensor(module.label_names),
            "threshold": tf.constant(threshold, tf.float32),
            "model_id": tf.constant(gallery.model_id),
        }

    functions = {
        "serving_default": identify_encoded,
        "identify_encoded": identify_encoded,
        "identify": identify_,
        "model_info": model_info_,
        "gallery_info": gallery_info,
        "limits": limits_,
    }
    for name, function in functions.items():
        setattr(module, name, function)
    return module, functions


def export_gallery(
    saved_model: PathLike | SavedModel,
    gallery: Gallery,
    export_dir: PathLike,
    model_name: str,
    version: int | None = None,
) -> Path:
    """Writes a SavedModel that identifies images against ``gallery`` as
    ``<export_dir>/<model_name>/<version>/``, atomically (written to a staging folder and
    renamed into place, as ``export.export_saved_model`` does).

    The new SavedModel holds the gallery's embeddings and labels and the base SavedModel's
    functions, so a served gallery embeds only the queries. Its signatures:

    - ``identify_encoded(images: string (Q,))`` (also ``serving_default``) and
      ``identify(images: float32 (Q, H, W, C))``: ``label`` string ``(Q,)`` ("" when unknown),
      ``score`` float32 ``(Q,)``, ``known`` bool ``(Q,)`` and ``index`` int32 ``(Q,)``, the best
      enrolled image; as :func:`identify` computes them, with the gallery's threshold;
    - ``model_info`` and ``limits``: the base SavedModel's;
    - ``gallery_info``: ``count`` (int64), ``labels`` (string, each once), ``threshold``,
      ``model_id``.

    ``assets.extra/`` holds the base's ``model.json`` and ``limits.json`` and the gallery's
    ``gallery.json`` (labels and files of every enrolled image), and TF Serving's warm-up
    requests (``export.warmup_requests``), one per signature.

    Raises:
        GalleryMismatchError: the gallery was embedded by another network.
        FileExistsError: ``version`` is given and already exported.
    """
    model = open_saved_model(saved_model)
    check_same_network(model, gallery)
    module, signatures = _gallery_module(model, gallery)

    def write(staging: Path) -> None:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        extra = staging / "assets.extra"
        extra.mkdir(exist_ok=True)
        for name in ("model.json", "limits.json"):
            if (model.path / "assets.extra" / name).is_file():
                shutil.copyfile(model.path / "assets.extra" / name, extra / name)
        description = _description(gallery)
        del description["embeddings_sha256"]
        (extra / GALLERY_FILE).write_text(json.dumps(description, indent=1) + "\n")
        image_size = int(model.signature("model_info")()["image_size"].numpy())
        export.write_warmup_file(staging, export.warmup_requests(
            model_name, signatures, image_size, model.channels, model.max_pixels
        ))

    return export.write_version(Path(export_dir) / model_name, version, write)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _threshold_argument(text: str) -> float:
    try:
        value = float(text)
        _check_threshold(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m keras_siamese.gallery``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.gallery",
        description="Enrol images under labels once with an exported SavedModel, then identify "
        "new images against them (label, score, or unknown below the threshold), or export "
        "the gallery as a SavedModel to serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = "SavedModel version folder (e.g. saved_models/siamese/1; a model folder: its highest version)"
    enrol_parser = commands.add_parser("enrol", help="embed a folder of labels into a gallery")
    enrol_parser.add_argument("--model", required=True, help=model_help)
    enrol_parser.add_argument(
        "--images", required=True, help="folder with one subfolder of images per label"
    )
    enrol_parser.add_argument("--gallery", required=True, help="folder to write the gallery to")
    identify_parser = commands.add_parser("identify", help="identify image files against a gallery")
    identify_parser.add_argument("--model", required=True, help=model_help)
    identify_parser.add_argument("--gallery", required=True, help="a folder written by enrol")
    identify_parser.add_argument(
        "--threshold", type=_threshold_argument, default=None,
        help="below this score a file is unknown (default: the gallery's)",
    )  # fmt: skip
    identify_parser.add_argument("files", nargs="+", metavar="FILE", help="image files")
    export_parser = commands.add_parser("export", help="export a gallery as a SavedModel to serve")
    export_parser.add_argument("--model", required=True, help=model_help)
    export_parser.add_argument("--gallery", required=True, help="a folder written by enrol")
    export_parser.add_argument("--export-dir", default="saved_models", help="base folder (default: %(default)s)")
    export_parser.add_argument("--model-name", required=True, help="model name, the folder under --export-dir")
    export_parser.add_argument("--version", type=int, default=None, help="version (default: next)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m keras_siamese.gallery enrol|identify|export``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "enrol":
            found = read_class_folder(args.images)
            gallery = enrol(args.model, found.images)
            folder = save(gallery, args.gallery)
            print(f"Enrolled {found.summary()} from {args.images} into {folder} (model "
                  f"{gallery.model_id}, threshold {gallery.threshold:g})")  # fmt: skip
        elif args.command == "identify":
            gallery = load(args.gallery)
            for file, found in zip(args.files, identify(args.model, gallery, args.files, args.threshold)):
                print(f"{file}\t{found.label if found.known else 'unknown'}\t{found.score:.4f}")
        else:
            gallery = load(args.gallery)
            target = export_gallery(args.model, gallery, args.export_dir, args.model_name, args.version)
            print(f"Exported the gallery {args.gallery} ({len(gallery)} images of "
                  f"{len(gallery.label_names)} labels) to {target}")  # fmt: skip
    except (GalleryError, FileExistsError) as error:
        parser.exit(1, f"{parser.prog} {args.command}: error: {error}\n")
    except tf.errors.OpError as error:
        parser.exit(1, f"{parser.prog} {args.command}: error: {_tf_message(error)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
