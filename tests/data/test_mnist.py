"""Tests for keras_siamese.data.mnist: the MNIST test digits of the transfer experiment."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from keras_siamese import data
from keras_siamese.data import mnist

# --- MNIST -------------------------------------------------------------------------------

MNIST_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def test_mnist_test_set_in_omniglot_polarity():
    images, labels = data.load_mnist_test(MNIST_DIR)
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    # Inverted: mostly white paper (255) with dark strokes, as Omniglot.
    assert np.median(images) == 255
    assert (images[0] < 128).mean() > 0.05


def test_mnist_found_beside_the_checkout_or_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(data.MNIST_DIR_ENV, raising=False)
    assert len(data.load_mnist_test()[0]) == 10000
    monkeypatch.setenv(data.MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(data.MnistDataError, match="MNIST folder not found"):
        data.load_mnist_test()


def test_mnist_without_a_local_copy_downloads_or_says_why_not(tmp_path, monkeypatch):
    """Offline (as here) a clear MnistDataError, which `fit` reports as the transfer skipped."""
    monkeypatch.delenv(data.MNIST_DIR_ENV, raising=False)
    monkeypatch.setattr(mnist, "_SHARED_MNIST", pathlib.Path("no-mnist-here"))
    monkeypatch.chdir(tmp_path)
    try:
        images, _ = data.load_mnist_test()
    except data.MnistDataError as error:
        assert "no local MNIST test set" in str(error) and "downloading it failed" in str(error)
    else:  # online, or downloaded before
        assert images.shape == (10000, 28, 28, 1)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "file not found"),
        (b"not gzip at all", "not a readable gzip file"),
        ("wrong magic", "not an IDX file"),
        ("truncated", "data bytes"),
    ],
)
def test_bad_mnist_files(tmp_path, content, problem):
    import gzip

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        source = (MNIST_DIR / name).read_bytes()
        raw = gzip.decompress(source)
        if name.startswith("t10k-images"):
            if content is None:
                continue
            if content == "wrong magic":
                raw = (1234).to_bytes(4, "big") + raw[4:]
            elif content == "truncated":
                raw = raw[:-100]
            source = content if isinstance(content, bytes) else gzip.compress(raw)
        (tmp_path / name).write_bytes(source)
    with pytest.raises(data.MnistDataError, match=problem):
        data.load_mnist_test(tmp_path)
