"""`python -m keras_siamese.fit`, run as a user runs it: in a fresh process."""

from __future__ import annotations

import json
import re

import pytest
import tensorflow as tf
from PIL import Image

from keras_siamese import export, fit, plots
from keras_siamese.model import load_trained, siamese_members

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_help_lists_every_option(run_python):
    result = run_python("-m", "keras_siamese.fit", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: python -m keras_siamese.fit")
    options = [o for a in fit.build_parser()._actions for o in a.option_strings if o.startswith("--")]
    for option in options:
        assert re.search(rf"{re.escape(option)}\b", result.stdout), option
    for preset in ("cpu", "cpu-long", "koch2015", "smoke"):
        assert preset in result.stdout


@pytest.fixture(scope="module")
def fit_run(omniglot, omniglot_dir, tfds_dir, run_python, tmp_path_factory):
    """One end-to-end run of the command with the smoke preset (data prepared by `omniglot`)."""
    root = tmp_path_factory.mktemp("fit")
    result = run_python(
        "-m", "keras_siamese.fit",
        "--preset", "smoke",
        "--epochs", "1",
        "--steps-per-epoch", "5",
        "--data-dir", omniglot_dir,
        "--tfds-dir", tfds_dir,
        "--runs-dir", root / "runs",
        "--export-dir", root / "saved_models",
        timeout=400,
    )  # fmt: skip
    return result, root


def test_fit_command_end_to_end(fit_run):
    result, root = fit_run
    assert result.returncode == 0, result.stderr[-5000:]
    match = re.search(
        r"Lake's 20 runs, 20-way one-shot: ([\d.]+)%; with test-time augmentation: [\d.]+% "
        r"\(pixel 1-NN baseline: ([\d.]+)%\)",
        result.stdout,
    )
    assert match, result.stdout[-3000:]

    runs = list((root / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-smoke-seed0")
    run_dir = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "lake_runs_accuracy", "lake_runs_accuracy_tta", "lake_runs_1nn", "koch_test_accuracy",
        "koch_test_accuracy_tta", "verification_accuracy", "mnist_10way_accuracy", "mnist_10way_1nn",
        "mnist_10way_accuracy_tta",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0 < metrics["peak_memory_mib"] < 4096
    # The machine the figures were measured on is recorded beside them.
    machine = metrics["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["tensorflow"] == tf.__version__
    assert "MNIST 10-way one-shot, no retraining:" in result.stdout
    assert float(match.group(1)) == pytest.approx(100 * metrics["lake_runs_accuracy"], abs=0.051)
    assert float(match.group(2)) == pytest.approx(100 * metrics["lake_runs_1nn"], abs=0.051)
    assert 0.15 <= metrics["lake_runs_1nn"] <= 0.30
    assert metrics["epochs"] == 1
    # Through the exported SavedModel, Lake's runs score as they do offline.
    assert metrics["lake_runs_accuracy_saved_model"] == metrics["lake_runs_accuracy"]
    assert metrics["lake_runs_accuracy_tta_saved_model"] == metrics["lake_runs_accuracy_tta"]
    assert "Through the SavedModel:" in result.stdout

    for name in ("config.json", "log.csv", "best.keras"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == "smoke" and config["epochs"] == 1 and config["steps_per_epoch"] == 5

    for name in ("learning_curves.png", "one_shot_tasks.png"):
        plot = run_dir / name
        assert plot.stat().st_size > 1000, name
        assert plot.read_bytes()[:8] == PNG_SIGNATURE, name
    # The task sheet: a heading and six of Lake's trials.
    panel_width, panel_height = plots.TASK_PANEL_SIZE
    with Image.open(run_dir / "one_shot_tasks.png") as sheet:
        width, height = sheet.size
    assert abs(width - plots.DPI * panel_width) <= 1
    assert abs(height - plots.DPI * (plots.SHEET_HEADING + 6 * panel_height)) <= 1


def test_fit_command_exports_a_servable_model(fit_run):
    result, root = fit_run
    assert result.returncode == 0, result.stderr[-5000:]
    model_dir = root / "saved_models" / "siamese"
    assert export.versions(model_dir) == [1]
    assert f"SavedModel: {model_dir / '1'}" in result.stdout
    run_dir = next((root / "runs").iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["saved_model"] == str(model_dir / "1")
    serving = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    x = tf.zeros((2, 28, 28, 1))
    p = serving(left=x, right=x)["probability"].numpy()
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()


def test_fit_command_trains_and_exports_an_ensemble(
    omniglot, omniglot_dir, tfds_dir, run_python, tmp_path
):
    result = run_python(
        "-m", "keras_siamese.fit",
        "--preset", "smoke",
        "--members", "2",
        "--epochs", "1",
        "--steps-per-epoch", "3",
        "--seed", "4",
        "--data-dir", omniglot_dir,
        "--tfds-dir", tfds_dir,
        "--runs-dir", tmp_path / "runs",
        "--export-dir", tmp_path / "saved_models",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    members = [run_dir / "member1-seed4", run_dir / "member2-seed5"]
    assert json.loads((run_dir / "members.json").read_text()) == [str(m.resolve()) for m in members]
    for member in members:
        for name in ("config.json", "log.csv", "best.keras", "learning_curves.png"):
            assert (member / name).is_file(), member / name
    assert len(siamese_members(load_trained(run_dir))) == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["member_epochs"] == [1, 1]
    assert len(metrics["member_val_one_shot_accuracy"]) == 2
    for key in ("val_one_shot_accuracy", "lake_runs_accuracy", "koch_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # The ensemble is what the SavedModel serves.
    assert metrics["lake_runs_accuracy_saved_model"] == metrics["lake_runs_accuracy"]
    assert metrics["lake_runs_accuracy_tta_saved_model"] == metrics["lake_runs_accuracy_tta"]
    assert "Validation one-shot (20 tasks): ensemble" in result.stdout
    assert "Trained 1 + 1 epochs" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [(("--members", "0"), "members must be at least 1, got 0"),
     (("--tta-views", "1"), "tta_views must be at least 2, got 1")],
)  # fmt: skip
def test_an_override_out_of_range_is_a_clear_error(override, message, run_python, tmp_path):
    result = run_python(
        "-m", "keras_siamese.fit", *override, "--runs-dir", tmp_path / "runs", timeout=120
    )
    assert result.returncode != 0
    assert "error: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_data_dir_is_a_clear_error(run_python, tmp_path):
    missing = tmp_path / "no-omniglot-here"
    result = run_python(
        "-m", "keras_siamese.fit",
        "--preset", "smoke",
        "--data-dir", missing,
        "--tfds-dir", tmp_path / "tfds",
        "--runs-dir", tmp_path / "runs",
        "--export-dir", tmp_path / "saved_models",
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was written.
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "saved_models").exists()


def test_resume_without_a_run_folder_is_a_clear_error(run_python, tmp_path):
    result = run_python("-m", "keras_siamese.fit", "--resume", tmp_path / "nothing", timeout=120)
    assert result.returncode != 0
    assert f"no config.json in {tmp_path / 'nothing'}" in result.stderr
    assert "Traceback" not in result.stderr
