"""Tests for keras_siamese.data on the real Omniglot zips, plus small broken zips built here."""

from __future__ import annotations

import io
import os
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from keras_siamese import data
from keras_siamese.data import mnist, omniglot

EXPECTED_COUNTS = {"background": (30, 964), "evaluation": (20, 659)}  # alphabets, characters


def _png(size: tuple[int, int] = (105, 105)) -> bytes:
    """A blank 1-bit PNG, the format of every Omniglot image."""
    buffer = io.BytesIO()
    Image.new("1", size, color=1).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split_zip(
    path: pathlib.Path,
    num_alphabets: int,
    num_characters: int,
    root: str = "images_background",
    first_member: bytes | None = None,
) -> None:
    """Writes a zip with Omniglot's layout; `first_member` replaces the first PNG's content."""
    png = _png()
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


# --- The paper's split ---------------------------------------------------------------------


def test_paper_split_sizes(omniglot):
    splits = data.paper_split(omniglot)
    evaluation = omniglot["evaluation"]

    def num_characters(alphabets):
        return len(np.unique(evaluation.character[np.isin(evaluation.alphabet, alphabets)]))

    assert len(splits["train"]) == 964 * 12
    assert len(splits["validation"]) == num_characters(data.VALIDATION_ALPHABETS) * 4
    assert len(splits["test"]) == num_characters(data.LAKE_TEST_ALPHABETS) * 4
    assert (
        num_characters(data.VALIDATION_ALPHABETS) + num_characters(data.LAKE_TEST_ALPHABETS) == 659
    )
    assert set(splits["train"].drawer) == set(range(1, 13))
    assert set(splits["validation"].drawer) == set(range(13, 17))
    assert set(splits["test"].drawer) == set(range(17, 21))
    assert set(splits["train"].alphabet) == set(omniglot["background"].alphabet)


def test_paper_split_can_train_on_every_background_drawer(omniglot):
    paper, whole = data.paper_split(omniglot), data.paper_split(omniglot, train_drawers=20)
    assert len(whole["train"]) == len(omniglot["background"]) == 964 * 20
    assert set(whole["train"].drawer) == set(range(1, 21))
    # Only training changes: validation and test alphabets are not background alphabets.
    for name in ("validation", "test"):
        np.testing.assert_array_equal(whole[name].images, paper[name].images)
    assert not set(whole["train"].alphabet) & set(whole["validation"].alphabet)
    assert not set(whole["train"].alphabet) & set(whole["test"].alphabet)


@pytest.mark.parametrize("drawers", [0, 21])
def test_paper_split_rejects_a_drawer_count_out_of_range(omniglot, drawers):
    with pytest.raises(ValueError, match="train_drawers must be between 1 and 20"):
        data.paper_split(omniglot, train_drawers=drawers)


def test_paper_split_is_disjoint(omniglot):
    splits = data.paper_split(omniglot)
    alphabets = {name: set(split.alphabet) for name, split in splits.items()}
    drawers = {name: set(split.drawer) for name, split in splits.items()}
    assert alphabets["test"] == set(data.LAKE_TEST_ALPHABETS)
    assert alphabets["validation"] == set(data.VALIDATION_ALPHABETS)
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not alphabets[a] & alphabets[b]
        assert not drawers[a] & drawers[b]


def test_lake_alphabets_file_matches_the_runs(omniglot_dir, omniglot):
    assert data.find_lake_alphabets(omniglot_dir) == list(data.LAKE_TEST_ALPHABETS)
    assert len(data.LAKE_TEST_ALPHABETS) == len(data.VALIDATION_ALPHABETS) == 10
    assert set(data.LAKE_TEST_ALPHABETS) | set(data.VALIDATION_ALPHABETS) == set(
        omniglot["evaluation"].alphabet
    )


# --- Lake's runs ---------------------------------------------------------------------------


def test_lake_runs_shapes_and_answers(lake_runs):
    assert lake_runs.training.shape == lake_runs.test.shape == (20, 20, 105, 105, 1)
    assert lake_runs.training.dtype == lake_runs.test.dtype == np.uint8
    assert lake_runs.answers.shape == (20, 20) and lake_runs.answers.dtype == np.int32
    for answers in lake_runs.answers:
        np.testing.assert_array_equal(np.sort(answers), np.arange(20))


def test_lake_runs_are_evaluation_images(lake_runs, omniglot):
    """Run images (decoded by PIL) equal the prepared evaluation images (decoded by TF)."""
    evaluation = omniglot["evaluation"]
    index = {image.tobytes(): i for i, image in enumerate(evaluation.images)}
    training = np.vectorize(lambda r, k: index[lake_runs.training[r, k].tobytes()])(
        *np.indices((20, 20))
    )
    test = np.vectorize(lambda r, q: index[lake_runs.test[r, q].tobytes()])(*np.indices((20, 20)))
    # The answer to each query is the candidate of the same character.
    answered = np.take_along_axis(training, lake_runs.answers, axis=1)
    np.testing.assert_array_equal(evaluation.character[answered], evaluation.character[test])
    assert set(evaluation.alphabet[training.ravel()]) == set(data.LAKE_TEST_ALPHABETS)


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
        (_png((52, 52)), "expected a 105x105 1-bit PNG"),
    ],
    ids=["not-png", "wrong-size"],
)
def test_zip_with_a_bad_image(bad_data_dir, tmp_path, content, problem):
    path = bad_data_dir / "images_background.zip"
    _write_split_zip(path, num_alphabets=30, num_characters=964, first_member=content)
    member = "images_background/Alphabet_01/character01/0001_01.png"
    _assert_rejected(bad_data_dir, tmp_path / "tfds", str(path), member, problem)


def test_runs_zip_that_is_not_a_zip(tmp_path):
    (tmp_path / "all_runs.zip").write_bytes(b"not a zip")
    with pytest.raises(data.OmniglotDataError, match="all_runs.zip"):
        data.load_lake_runs(tmp_path)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    """No local zip and no network (a refused port): an error naming the zip and --data-dir."""
    cached = pathlib.Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets/omniglot"
    if (cached / "all_runs.zip").exists():
        pytest.skip("an earlier download is cached, so nothing is downloaded")
    monkeypatch.setitem(data.OFFICIAL_URLS, "all_runs", "http://127.0.0.1:9/all_runs.zip")
    with pytest.raises(data.OmniglotDataError, match=f"all_runs.zip: not in {tmp_path}.*--data-dir"):
        data.load_lake_runs(tmp_path)
    assert not (cached / "all_runs.zip").exists()  # nothing half-downloaded left as the zip


def test_runs_zip_with_missing_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        archive.writestr("run01/training/class01.png", _png())
    with pytest.raises(data.OmniglotDataError, match="missing"):
        data.load_lake_runs(tmp_path)


def test_lake_run_files_are_the_zip_pngs(lake_runs):
    assert lake_runs.training_files.shape == lake_runs.test_files.shape == (20, 20)
    for files, images in ((lake_runs.training_files, lake_runs.training), (lake_runs.test_files, lake_runs.test)):
        for run, index in ((0, 0), (7, 13), (19, 19)):
            with Image.open(io.BytesIO(files[run, index])) as image:
                assert image.format == "PNG"
                np.testing.assert_array_equal(np.asarray(image.convert("L"))[..., None], images[run, index])


# --- MNIST -------------------------------------------------------------------------------

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


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
