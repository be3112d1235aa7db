"""Tests for keras_siamese.data.lake_runs: Lake's 20 runs, and broken runs zips built here."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from conftest import blank_png
from PIL import Image

from keras_siamese import data

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


def test_runs_zip_that_is_not_a_zip(tmp_path):
    (tmp_path / "all_runs.zip").write_bytes(b"not a zip")
    with pytest.raises(data.OmniglotDataError, match="all_runs.zip"):
        data.load_lake_runs(tmp_path)


def test_runs_zip_with_missing_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        archive.writestr("run01/training/class01.png", blank_png())
    with pytest.raises(data.OmniglotDataError, match="missing"):
        data.load_lake_runs(tmp_path)


def test_lake_run_files_are_the_zip_pngs(lake_runs):
    assert lake_runs.training_files.shape == lake_runs.test_files.shape == (20, 20)
    for files, images in ((lake_runs.training_files, lake_runs.training), (lake_runs.test_files, lake_runs.test)):
        for run, index in ((0, 0), (7, 13), (19, 19)):
            with Image.open(io.BytesIO(files[run, index])) as image:
                assert image.format == "PNG"
                np.testing.assert_array_equal(np.asarray(image.convert("L"))[..., None], images[run, index])
