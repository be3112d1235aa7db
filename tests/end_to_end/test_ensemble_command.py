"""Tests for `python -m keras_siamese.ensemble`, run as a user runs it: in a fresh process."""

from __future__ import annotations

import json

import keras
import pytest

from keras_siamese import export
from keras_siamese.config import preset
from keras_siamese.model import build_siamese, load_trained, siamese_members

pytestmark = pytest.mark.slow


def test_ensemble_command_evaluates_and_exports_the_runs(
    trained_run, omniglot, omniglot_dir, tfds_dir, run_python, tmp_path
):
    _, run_dir, _, _ = trained_run
    # A second member: the smoke network with other initial weights, saved as a run saves it.
    other = tmp_path / "other-run"
    other.mkdir()
    keras.utils.set_random_seed(1)
    build_siamese(preset("smoke").model).save(other / "best.keras")
    out = tmp_path / "ensemble"
    result = run_python(
        "-m", "keras_siamese.ensemble", run_dir, other,
        "--data-dir", omniglot_dir, "--tfds-dir", tfds_dir,
        "--output", out, "--export-dir", tmp_path / "saved_models", "--val-tasks", "40",
        "--tta-views", "4", "--tta-symmetries", "4", timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Validation one-shot (40 tasks): ensemble" in result.stdout
    assert "Through the SavedModel:" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["member_val_one_shot_accuracy"]) == 2
    for key in ("val_one_shot_accuracy", "lake_runs_accuracy", "lake_runs_accuracy_tta",
                "koch_test_accuracy", "verification_accuracy", "mnist_10way_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (metrics["tta_views"], metrics["tta_symmetries"]) == (4, 4)
    # Served as a TF Serving client gets it, the ensemble scores Lake's runs as offline,
    # with the same test-time augmentation.
    assert metrics["lake_runs_accuracy_saved_model"] == metrics["lake_runs_accuracy"]
    assert metrics["lake_runs_accuracy_tta_saved_model"] == metrics["lake_runs_accuracy_tta"]
    assert export.versions(tmp_path / "saved_models" / "siamese") == [1]
    assert len(siamese_members(load_trained(out))) == 2
    assert json.loads((out / "members.json").read_text()) == [str(run_dir.resolve()), str(other.resolve())]
    assert (out / "one_shot_tasks.png").is_file()


def test_ensemble_command_names_a_missing_member(trained_run, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python(
        "-m", "keras_siamese.ensemble", run_dir, tmp_path, "--output", tmp_path / "ensemble"
    )
    assert result.returncode != 0
    assert f"error: no model at {tmp_path / 'best.keras'}" in result.stderr
    assert not (tmp_path / "ensemble").exists()
