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
    """Where `koch_omniglot` is prepared: $KERAS_SIAMESE_TEST_TFDS_DIR or a folder of the
    session's temporary root, which the workers of a parallel (pytest-xdist) run share."""
    if os.environ.get(TFDS_DIR_ENV):
        return pathlib.Path(os.environ[TFDS_DIR_ENV])
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is in the shared root
        root = root.parent
    return root / "tensorflow_datasets"


@pytest.fixture(scope="session")
def omniglot(omniglot_dir: pathlib.Path, tfds_dir: pathlib.Path) -> dict[str, data.OmniglotImages]:
    """Both Omniglot splits in memory (prepared at most once per session, never downloaded).

    A file lock beside ``tfds_dir`` lets one process prepare the set while the other
    workers of a parallel run wait, then read it.
    """
    from filelock import FileLock

    tfds_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{tfds_dir}.lock"):
        return data.load_omniglot(omniglot_dir, tfds_dir, download=False)


@pytest.fixture(scope="session")
def lake_runs(omniglot_dir: pathlib.Path) -> data.LakeRuns:
    """Lake et al.'s 20 one-shot runs."""
    return data.load_lake_runs(omniglot_dir)


# --- Shared by the model, training, evaluation, export and fit tests ----------------------

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The ORL faces (40 people, 10 PGM photographs each): a user's own folder of classes.
ORL_DIR = REPO_ROOT.parent / "shared" / "data" / "orl_faces"


def small_model_config(**changes):
    """A tiny 28x28 network that builds and runs in well under a second on 2 CPU cores.

    The smoke preset's layer sizes with the paper's other choices (initialisers, no batch
    norm, per-layer L2), so the tests exercise the paper's layers at a small size.
    """
    import dataclasses

    from keras_siamese.config import ModelConfig, preset

    paper = ModelConfig()
    fields = dict(paper_init=paper.paper_init, batch_norm=paper.batch_norm, l2=paper.l2)
    fields.update(changes)
    return dataclasses.replace(preset("smoke").model, **fields)


@pytest.fixture(scope="session")
def small_config():
    """`small_config(**changes)`: the tiny 28x28 ModelConfig with `changes`."""
    return small_model_config


@pytest.fixture(scope="session")
def splits(omniglot) -> dict[str, data.OmniglotImages]:
    """The paper's train/validation/test split of the real data."""
    return data.paper_split(omniglot)


@pytest.fixture(scope="session")
def pairs(omniglot):
    """Five real pairs of 105x105 Omniglot images, pixel values as stored (255 = paper)."""
    import numpy as np

    images = omniglot["evaluation"].images
    return {"left": images[:5].astype(np.float32), "right": images[100:105].astype(np.float32)}


def keras_probabilities(model, pairs):
    """What the Keras model gives for ``pairs``' pixels, preprocessed as in training."""
    from keras_siamese.preprocessing import to_model_input

    size = model.input["left"].shape[1]
    x = {side: to_model_input(images, size) for side, images in pairs.items()}
    return model.predict(x, verbose=0)[:, 0]


def subprocess_env() -> dict[str, str]:
    """This process's environment for a fresh interpreter: the repository importable,
    TensorFlow's info logs off, matplotlib without a display."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="session")
def run_python():
    """Runs `python ARGS...` in a fresh interpreter at the repository root.

    Returns the CompletedProcess (text output captured); `timeout` seconds at most.
    """
    import subprocess
    import sys

    env = subprocess_env()

    def run(*args: str, timeout: float = 300, cwd: pathlib.Path | None = None):
        return subprocess.run(
            [sys.executable, *map(str, args)],
            cwd=cwd or REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def trained_run(splits, tmp_path_factory):
    """A real `training.train` run of the smoke preset: (config, run_dir, model, history).

    Two epochs of 20 steps with seed 0, spelled out so that the run does not change when
    the preset's length does.
    """
    from keras_siamese import config, training

    run_config = config.preset("smoke").replace(epochs=2, steps_per_epoch=20, seed=0)
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    model, history = training.train(run_config, splits, run_dir, verbose=0)
    return run_config, run_dir, model, history


def blank_png(size: tuple[int, int] = (105, 105)) -> bytes:
    """A blank 1-bit PNG, the format of every Omniglot image."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", size, color=1).save(buffer, format="PNG")
    return buffer.getvalue()


def log_rows(run_dir: pathlib.Path) -> list[dict[str, str]]:
    """The rows of a run folder's ``log.csv``, one per finished epoch."""
    import csv

    with (run_dir / "log.csv").open() as f:
        return list(csv.DictReader(f))


def execute_notebook(path: pathlib.Path, env: dict[str, str], timeout: int):
    """Runs the notebook at ``path`` top to bottom in a fresh kernel with ``env`` and returns it.

    Raises nbclient's CellExecutionError, with the cell and its traceback, on an error.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )  # fmt: skip
    client.execute(env=env)
    return nb
