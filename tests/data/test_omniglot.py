"""Tests for keras_siamese.data.omniglot on the real Omniglot zips, plus small broken zips built here."""

from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np
import pytest
from conftest import blank_png

from keras_siamese import data
from keras_siamese.data import omniglot

EXPECTED_COUNTS = {"background": (30, 964), "evaluation": (20, 659)}  # alphabets, characters


def _write_split_zip(
    path: pathlib.Path,
    num_alphabets: int,
    num_characters: int,
    root: str = "images_background",
    first_member: bytes | None = None,
) -> None:
    """Writes a zip with Omniglot's layout; `first_member` replaces the first PNG's content."""
    png = blank_png()
    with zipfile.ZipFile(path, "w") as archive:
        for character in range(1, num_characters + 1):
            alphabet = f"Alphabet_{character % num_alphabets:02d}"
            folder = f"character{(character - 1) // num_alphabets + 1:02d}"
            for drawer in range(1, 21):
                name = f"{root}/{alphabet}/{folder}/{character:04d}_{drawer:02d}.png"
                first = first_member is not None and character == drawer == 1
                archive.writestr(name, first_member if first else png)


@pytest.fixture
def bad_data_dir(tmp_path: pathlib.Path, omniglot_dir: pathlib.Path) -> pathlib.Path:
    """A data folder with the real evaluation zip; each test writes its own background zip."""
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "images_evaluation.zip").symlink_to(omniglot_dir / "images_evaluation.zip")
    return folder


def _assert_rejected(folder: pathlib.Path, tfds_dir: pathlib.Path, *fragments: str) -> None:
    """load_omniglot must fail with every fragment in the message and prepare nothing."""
    with pytest.raises(data.OmniglotDataError) as error:
        data.load_omniglot(folder, tfds_dir, download=False)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not data.KochOmniglot(data_dir=str(tfds_dir)).is_prepared()


# --- The prepared dataset ------------------------------------------------------------------


@pytest.mark.parametrize("split", ["background", "evaluation"])
def test_split_has_the_published_counts(omniglot, split):
    images = omniglot[split]
    num_alphabets, num_characters = EXPECTED_COUNTS[split]
    assert len(np.unique(images.alphabet)) == num_alphabets
    assert len(np.unique(images.character)) == num_characters
    assert len(images) == num_characters * 20
    assert images.images.shape == (num_characters * 20, 105, 105, 1)
    assert images.images.dtype == np.uint8
    assert images.character.dtype == images.drawer.dtype == np.int32
    # Every character was drawn once by each of the 20 drawers.
    per_character = images.drawer.reshape(num_characters, 20)
    np.testing.assert_array_equal(per_character, np.tile(np.arange(1, 21), (num_characters, 1)))


@pytest.mark.parametrize("split", ["background", "evaluation"])
def test_images_are_black_ink_on_white(omniglot, split):
    images = omniglot[split].images
    assert np.all((images == 0) | (images == 255))
    ink = np.mean(images == 0, axis=(1, 2, 3))
    assert 0 < ink.min() and ink.max() < 0.5


def test_character_ids_cover_1_to_1623_once(omniglot):
    ids = np.concatenate([np.unique(images.character) for images in omniglot.values()])
    np.testing.assert_array_equal(np.sort(ids), np.arange(1, 1624))


def test_select_checks_the_mask(omniglot):
    images = omniglot["evaluation"]
    assert len(images.select(images.drawer == 1)) == 659
    with pytest.raises(ValueError, match="boolean mask"):
        images.select(np.ones(3, dtype=bool))


# --- Finding the data ----------------------------------------------------------------------


def test_find_data_dir_order(omniglot_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.find_data_dir() == omniglot_dir  # ../shared/data/omniglot beside the checkout
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.find_data_dir() == tmp_path.resolve()
    assert data.find_data_dir(omniglot_dir) == omniglot_dir


def test_missing_folder_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    for call in (data.find_data_dir, data.load_omniglot, data.load_lake_runs):
        with pytest.raises(data.OmniglotDataError, match=f"{missing}.*does not exist"):
            call(missing)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(missing))
    with pytest.raises(data.OmniglotDataError, match=data.DATA_DIR_ENV):
        data.find_data_dir()


def test_no_zips_and_no_download_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(data.OmniglotDataError, match="images_background.zip"):
        data.load_omniglot(tmp_path, tmp_path / "tfds", download=False)
    monkeypatch.setattr(omniglot, "find_data_dir", lambda data_dir=None: None)
    with pytest.raises(data.OmniglotDataError, match="download=False"):
        data.load_omniglot(tfds_dir=tmp_path / "tfds", download=False)


# --- Broken zips ---------------------------------------------------------------------------


def test_truncated_zip(bad_data_dir, omniglot_dir, tmp_path):
    path = bad_data_dir / "images_background.zip"
    path.write_bytes((omniglot_dir / "images_background.zip").read_bytes()[:100_000])
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), "not a readable zip")


def test_file_that_is_not_a_zip(bad_data_dir, tmp_path):
    path = bad_data_dir / "images_background.zip"
    path.write_text("<html>404: Not Found</html>")
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), "not a readable zip")


def test_corrupt_member_data(bad_data_dir, omniglot_dir, tmp_path):
    path = bad_data_dir / "images_background.zip"
    content = bytearray((omniglot_dir / "images_background.zip").read_bytes())
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        first = next(info for info in archive.infolist() if not info.is_dir())
    # Local header: 30 bytes, then the name and extra field, then the compressed data.
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    content[start : start + 8] = bytes(255 - b for b in content[start : start + 8])
    path.write_bytes(bytes(content))
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), "not a readable zip")


def test_zip_with_wrong_layout(bad_data_dir, tmp_path):
    path = bad_data_dir / "images_background.zip"
    _write_split_zip(path, num_alphabets=30, num_characters=964, root="omniglot")
    expected_layout = "images_background/<Alphabet>/characterNN/NNNN_DD.png"
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), expected_layout)


def test_zip_with_wrong_counts(bad_data_dir, tmp_path):
    path = bad_data_dir / "images_background.zip"
    _write_split_zip(path, num_alphabets=2, num_characters=4)
    _assert_rejected(
        bad_data_dir,
        tmp_path / "tfds",
        str(path),
        "found 2 alphabets, 4 characters and 80 images",
        "expected 30 alphabets, 964 characters and 19280 images",
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"GIF89a not a png", "not a decodable PNG"),
        (blank_png((52, 52)), "expected a 105x105 1-bit PNG"),
    ],
    ids=["not-png", "wrong-size"],
)
def test_zip_with_a_bad_image(bad_data_dir, tmp_path, content, problem):
    path = bad_data_dir / "images_background.zip"
    _write_split_zip(path, num_alphabets=30, num_characters=964, first_member=content)
    member = "images_background/Alphabet_01/character01/0001_01.png"
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), member, problem)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    """No local zip and no network (a refused port): an error naming the zip and --data-dir."""
    cached = pathlib.Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets/omniglot"
    if (cached / "all_runs.zip").exists():
        pytest.skip("an earlier download is cached, so nothing is downloaded")
    monkeypatch.setitem(data.OFFICIAL_URLS, "all_runs", "http://127.0.0.1:9/all_runs.zip")
    with pytest.raises(data.OmniglotDataError, match=f"all_runs.zip: not in {tmp_path}.*--data-dir"):
        data.load_lake_runs(tmp_path)
    assert not (cached / "all_runs.zip").exists()  # nothing half-downloaded left as the zip
