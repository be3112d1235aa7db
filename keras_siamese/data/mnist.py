"""The MNIST test digits, for the paper's transfer experiment (10-way one-shot, no retraining)."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from keras_siamese.data.omniglot import beside_checkout

MNIST_DIR_ENV = "KERAS_SIAMESE_MNIST_DIR"
_SHARED_MNIST = pathlib.Path("..", "shared", "data", "mnist")
_MNIST_FILES = {"images": ("t10k-images-idx3-ubyte.gz", 2051), "labels": ("t10k-labels-idx1-ubyte.gz", 2049)}


class MnistDataError(ValueError):
    """The MNIST files are missing, unreadable, or not in the IDX format."""


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """One gzipped IDX file (the format MNIST is published in) as a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise MnistDataError(f"{path}: not a readable gzip file ({error}).") from error
    header = 4 * (1 + (magic & 0xFF))  # the magic number, then one int32 per dimension
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise MnistDataError(f"{path}: not an IDX file with magic number {magic}.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    if len(raw) != header + int(np.prod(dims)):
        raise MnistDataError(f"{path}: {len(raw) - header} data bytes; the header says {dims}.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_mnist_test(mnist_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test digits, in Omniglot's polarity, and their labels.

    The files (`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) are read from
    `mnist_dir`, else `$KERAS_SIAMESE_MNIST_DIR`, else `../shared/data/mnist` beside the
    repository or the working directory; without a local copy `keras.datasets.mnist` downloads
    the set.

    Returns:
        uint8 images `(10000, 28, 28, 1)` with 255 = background (MNIST's white-on-black
        inverted, so the network sees ink as it does on Omniglot) and int64 labels `(10000,)`.

    Raises:
        MnistDataError: a named folder or a file is missing or malformed, or with no
            local copy, the download failed.
    """
    if mnist_dir is not None or os.environ.get(MNIST_DIR_ENV):
        folder = pathlib.Path(mnist_dir if mnist_dir is not None else os.environ[MNIST_DIR_ENV])
        if not folder.is_dir():
            raise MnistDataError(f"{folder}: MNIST folder not found.")
    else:
        folder = beside_checkout(_SHARED_MNIST)
    if folder is None:
        import keras

        try:
            _, (images, labels) = keras.datasets.mnist.load_data()
        except Exception as error:  # get_file raises a bare Exception for a failed download
            raise MnistDataError(
                f"no local MNIST test set (${MNIST_DIR_ENV} or {_SHARED_MNIST} beside the "
                f"checkout), and downloading it failed ({error})."
            ) from error
    else:
        arrays = {}
        for key, (name, magic) in _MNIST_FILES.items():
            path = folder / name
            if not path.is_file():
                raise MnistDataError(f"{path}: file not found; expected the MNIST test set there.")
            arrays[key] = _read_idx(path, magic)
        images, labels = arrays["images"], arrays["labels"]
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max() > 9:
            raise MnistDataError(
                f"{folder}: {images.shape} images and {labels.shape} labels; expected "
                "(N, 28, 28) digits with one label 0-9 each."
            )
    return (255 - images)[..., np.newaxis], labels.astype(np.int64)
