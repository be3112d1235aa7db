"""Tests for keras_siamese.files: writes that a crash never leaves half done."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_siamese import files


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_text_atomically(path, '{"old": 1}')

    def half_then_fail(partial):
        partial.write_text('{"new": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.replace_atomically(path, half_then_fail)
    assert path.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    # A process that has exited: its pid is free (or reused by a process we do not own).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".best.partial-{dead.stdout.strip()}.keras"
    live = tmp_path / f".best.partial-{os.getppid()}.keras"  # our parent is alive
    for partial in (stale, live):
        partial.write_bytes(b"half a model")
    files.remove_stale_partials(tmp_path / "best.keras")
    assert not stale.exists() and live.exists()


def test_partial_names_keep_the_suffixes_keras_needs(tmp_path):
    assert files.partial_path(tmp_path / "best.keras").name == f".best.partial-{os.getpid()}.keras"
    assert files.partial_path(tmp_path / "latest.weights.h5").name.endswith(".weights.h5")


def test_a_model_is_saved_whole_and_a_truncated_one_is_named(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = files.save_model_atomically(model, tmp_path / "best.keras")
    loaded = files.load_keras_model(path)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(files.UnreadableFileError, match=f"{path} is not a readable .keras file"):
        files.load_keras_model(path)
    with pytest.raises(FileNotFoundError, match="no model at"):
        files.load_keras_model(tmp_path / "missing.keras")


def test_a_symlink_is_repointed_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files.point_symlink(tmp_path / "latest", "a")
    files.point_symlink(tmp_path / "latest", "b")
    assert os.readlink(tmp_path / "latest") == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "latest"]
