"""Shared pytest fixtures: the real Omniglot data, prepared once per test session."""

from __future__ import annotations

import os
import pathlib

import pytest

from keras_siamese import data

# The zips live outside the repository (they must never be copied into it).
OMNIGLOT_DIR = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"

# Set this to a folder to keep the prepared TFDS dataset between test runs.
TFDS_DIR_ENV = "KERAS_SIAMESE_TEST_TFDS_DIR"


@pytest.fixture(scope="session")
def omniglot_dir() -> pathlib.Path:
    """Folder holding the real Omniglot zips; a missing folder is an error, not a skip."""
    path = OMNIGLOT_DIR.resolve()
    if not path.is_dir():
        pytest.fail(
            f"Omniglot data not found at {path}: the tests need images_background.zip, "
            "images_evaluation.zip and all_runs.zip there.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Where `koch_omniglot` is prepared: $KERAS_SIAMESE_TEST_TFDS_DIR or a session tmp dir."""
    if os.environ.get(TFDS_DIR_ENV):
        return pathlib.Path(os.environ[TFDS_DIR_ENV])
    return tmp_path_factory.mktemp("tensorflow_datasets")


@pytest.fixture(scope="session")
def omniglot(omniglot_dir: pathlib.Path, tfds_dir: pathlib.Path) -> dict[str, data.OmniglotImages]:
    """Both Omniglot splits in memory (prepared at most once per session, never downloaded)."""
    return data.load_omniglot(omniglot_dir, tfds_dir, download=False)


@pytest.fixture(scope="session")
def lake_runs(omniglot_dir: pathlib.Path) -> data.LakeRuns:
    """Lake et al.'s 20 one-shot runs."""
    return data.load_lake_runs(omniglot_dir)
