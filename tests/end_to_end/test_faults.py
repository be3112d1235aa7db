"""Fault injection: `python -m keras_siamese.fit` killed with SIGKILL at each phase of a run.

One run is killed again and again, each time resumed with `--resume` and killed at another
phase: while writing the best checkpoint, mid-epoch, during the one-shot validation, while
publishing an epoch's backup, and while writing the SavedModel. After every kill nothing
half-written is visible, and the run, resumed once more, ends with the weights, the figures
and the single SavedModel version of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import zipfile

import numpy as np
import pytest

from conftest import log_rows
from keras_siamese import export, files
from keras_siamese.config import TrainConfig

pytestmark = pytest.mark.slow

# Runs `fit` with a SIGKILL planted in one phase: `python -c KILL_AT PHASE -- FIT_ARGS...`.
KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    import keras
    import tensorflow as tf
    from keras_siamese import files, fit, training

    phase, nth = sys.argv[1].split(":")
    fit_args, calls = sys.argv[3:], []

    def die():
        calls.append(1)  # the nth time this phase comes round in this process
        if len(calls) == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)

    if phase == "checkpoint":  # best.keras half written, not yet renamed into place
        publish = files.publish
        def cut(partial, path):
            if str(path).endswith("best.keras"):
                with open(partial, "r+b") as f:
                    f.truncate(os.path.getsize(partial) // 2)
                die()
            return publish(partial, path)
        files.publish = cut
    elif phase == "mid-epoch":  # at the third batch of an epoch
        end = keras.callbacks.TensorBoard.on_train_batch_end
        def batch_end(self, batch, logs=None):
            if batch == 2:
                die()
            return end(self, batch, logs)
        keras.callbacks.TensorBoard.on_train_batch_end = batch_end
    elif phase == "validation":
        validate = training.OneShotValidation.on_epoch_end
        def die_validating(self, epoch, logs=None):
            die()
            return validate(self, epoch, logs)
        training.OneShotValidation.on_epoch_end = die_validating
    elif phase == "backup":  # the epoch's folder written, the `latest` link not yet moved
        point = files.point_symlink
        def point_then_die(link, target):
            if str(link).endswith("latest"):
                die()
            return point(link, target)
        files.point_symlink = point_then_die
    elif phase == "export":  # the SavedModel written to its staging folder, not yet renamed
        save = tf.saved_model.save
        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            die()
        tf.saved_model.save = save_then_die
    fit.main(fit_args)
    """
)

# Each phase with the time it comes round in the process that is killed: the first run dies
# in epoch 1's checkpoint, its resumption while backing epoch 1 up; the next one backs epoch 1
# up and dies in epoch 2, the next backs epoch 2 up and dies validating epoch 3; the last
# trains to the end and dies writing the SavedModel.
PHASES = ("checkpoint:1", "backup:1", "mid-epoch:2", "validation:2", "export:1")


def _assert_nothing_half_written(run_dir, model_dir):
    """What a later step reads is whole, and only whole SavedModels look like versions."""
    if (run_dir / "config.json").exists():
        TrainConfig.load(run_dir / "config.json")
    if (run_dir / "best.keras").exists():
        assert zipfile.is_zipfile(run_dir / "best.keras")
        with zipfile.ZipFile(run_dir / "best.keras") as archive:
            assert archive.testzip() is None
    latest = run_dir / "backup" / "latest"
    if latest.exists():
        assert {p.name for p in latest.iterdir()} == {"latest.weights.h5", "training_metadata.json"}
        json.loads((latest / "training_metadata.json").read_text())
    for version in export.versions(model_dir) if model_dir.exists() else []:
        assert (model_dir / str(version) / "saved_model.pb").is_file()


def test_a_run_killed_at_every_phase_ends_as_an_uninterrupted_one(
    omniglot, omniglot_dir, tfds_dir, run_python, tmp_path
):
    common = ["--data-dir", omniglot_dir, "--tfds-dir", tfds_dir]
    new_run = ["--preset", "smoke", "--epochs", "3", "--seed", "1", *common]

    # The uninterrupted run to compare with: its weights, log and figures (not its export).
    whole = run_python("-m", "keras_siamese.fit", *new_run, "--runs-dir", tmp_path / "whole",
                       "--no-export", timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    (whole_dir,) = (tmp_path / "whole").iterdir()

    model_dir = tmp_path / "models" / "siamese"
    args = [*new_run, "--runs-dir", tmp_path / "runs", "--export-dir", tmp_path / "models"]
    for phase in PHASES:
        killed = run_python("-c", KILL_AT, phase, "--", *args, timeout=600)
        assert killed.returncode == -signal.SIGKILL, (phase, killed.stderr[-3000:])
        (run_dir,) = (tmp_path / "runs").iterdir()
        _assert_nothing_half_written(run_dir, model_dir)
        args = ["--resume", run_dir, *common, "--export-dir", tmp_path / "models"]
    resumed = run_python("-m", "keras_siamese.fit", *args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_nothing_half_written(run_dir, model_dir)
    # The last kill came after training: the resumed run exports without training again.
    assert "Epoch " not in resumed.stdout

    # One SavedModel version, however often the export was interrupted or repeated, and no
    # staging folder or temporary file left behind.
    assert export.versions(model_dir) == [1]
    assert [p.name for p in model_dir.iterdir()] == ["1"]
    assert not [p for p in run_dir.rglob(".*partial*")]
    # The same training, epoch for epoch, and the same model and figures.
    logs = [log_rows(d) for d in (whole_dir, run_dir)]
    assert [row["epoch"] for row in logs[1]] == [row["epoch"] for row in logs[0]] == ["0", "1", "2"]
    for column in ("loss", "val_one_shot_accuracy"):
        np.testing.assert_allclose(
            [float(row[column]) for row in logs[1]], [float(row[column]) for row in logs[0]],
            rtol=1e-3, atol=1e-4, err_msg=column,
        )  # fmt: skip
    whole_model = files.load_keras_model(whole_dir / "best.keras")
    resumed_model = files.load_keras_model(run_dir / "best.keras")
    for a, b in zip(whole_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole_dir, run_dir)]
    for key in ("best_val_one_shot_accuracy", "epochs", "lake_runs_accuracy"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=0.0026), key

    # Resuming the finished run again reports it and exports nothing new.
    again = run_python("-m", "keras_siamese.fit", *args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Already exported as" in again.stdout
    assert "Epoch " not in again.stdout
    assert export.versions(model_dir) == [1]
    assert os.path.exists(run_dir / "export.json")
