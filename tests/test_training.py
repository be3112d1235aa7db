"""Tests for keras_siamese.training: real `model.fit` runs of the smoke preset."""

from __future__ import annotations

import csv
import textwrap

import keras
import numpy as np
import pytest

from keras_siamese import config as config_module
from keras_siamese import training
from keras_siamese.config import TrainConfig
from keras_siamese.evaluation import SiameseScorer, accuracy, within_alphabet_tasks
from keras_siamese.model import build_siamese
from keras_siamese.pairs import pair_dataset


def _log_rows(run_dir) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_training_lowers_the_loss(trained_run):
    run_config, run_dir, model, history = trained_run
    rows = _log_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < first - 0.01, (first, last)
    # The network learns to tell pairs apart (not just shrink its weights through L2).
    assert float(rows[-1]["accuracy"]) > 0.55
    assert history["loss"] == pytest.approx([first, last])


def test_run_folder_contents(trained_run):
    run_config, run_dir, model, history = trained_run
    assert TrainConfig.load(run_dir / "config.json") == run_config
    assert (run_dir / "best.keras").is_file()
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)
    assert not (run_dir / "backup").exists()  # removed once training finished
    header = _log_rows(run_dir)[0].keys()
    for column in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", training.VAL_METRIC):
        assert column in header


def test_best_model_is_returned_and_loads_in_safe_mode(trained_run, splits):
    run_config, run_dir, model, history = trained_run
    best = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    x = {
        "left": np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32),
        "right": np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32),
    }
    np.testing.assert_allclose(model.predict(x, verbose=0), best.predict(x, verbose=0), atol=1e-6)
    # best.keras is the epoch with the best one-shot validation accuracy: recomputing
    # that accuracy on the same validation tasks gives the best value in the log.
    tasks = within_alphabet_tasks(
        splits["validation"], run_config.val_tasks, way=run_config.way, seed=run_config.seed + 2
    )
    assert accuracy(SiameseScorer(best)(tasks), tasks) == pytest.approx(
        max(history[training.VAL_METRIC])
    )


def test_one_shot_validation_adds_its_metric(splits, small_config):
    model = build_siamese(small_config(paper_init=False))
    tasks = within_alphabet_tasks(splits["validation"], 10, way=20, seed=0)
    callback = training.OneShotValidation(tasks)
    callback.set_model(model)
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {"loss", training.VAL_METRIC}
    assert logs[training.VAL_METRIC] == accuracy(SiameseScorer(model)(tasks), tasks)
    assert 0.0 <= logs[training.VAL_METRIC] <= 1.0


def test_one_shot_accuracy_is_logged_every_epoch(trained_run):
    _, run_dir, _, history = trained_run
    values = [float(row[training.VAL_METRIC]) for row in _log_rows(run_dir)]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    # 20 tasks: accuracies are multiples of 1/20.
    np.testing.assert_allclose(np.array(values) * 20, np.round(np.array(values) * 20), atol=1e-6)


def test_refuses_a_run_folder_with_another_config(splits, tmp_path):
    existing = config_module.preset("smoke").replace(seed=1)
    (tmp_path / "config.json").write_text(existing.to_json())
    with pytest.raises(ValueError, match="different configuration"):
        training.train(config_module.preset("smoke"), splits, tmp_path, verbose=0)
    assert TrainConfig.load(tmp_path / "config.json") == existing  # left untouched
    assert not (tmp_path / "log.csv").exists()


# A training process killed in the middle of its second epoch: Keras's TensorBoard callback
# (the last one train() installs, after BackupAndRestore) ends the process abruptly.
KILLED_RUN = textwrap.dedent(
    """
    import os, sys
    import keras
    from keras_siamese import config, data, training

    def on_train_batch_end(self, batch, logs=None):
        if self._kill_epoch == 1 and batch == 2:
            os._exit(17)  # no cleanup, no on_train_end: like a SIGKILL

    def on_epoch_begin(self, epoch, logs=None):
        self._kill_epoch = epoch
        return original_on_epoch_begin(self, epoch, logs)

    original_on_epoch_begin = keras.callbacks.TensorBoard.on_epoch_begin
    keras.callbacks.TensorBoard.on_epoch_begin = on_epoch_begin
    keras.callbacks.TensorBoard.on_train_batch_end = on_train_batch_end

    data_dir, tfds_dir, run_dir = sys.argv[1:]
    splits = data.paper_split(data.load_omniglot(data_dir, tfds_dir, download=False))
    run_config = config.TrainConfig.load(os.path.join(run_dir, "wanted.json"))
    training.train(run_config, splits, run_dir, verbose=0)
    """
)


def test_a_killed_run_resumes_from_its_last_epoch(
    splits, omniglot_dir, tfds_dir, omniglot, run_python, tmp_path
):
    run_config = config_module.preset("smoke").replace(epochs=3, steps_per_epoch=5, seed=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wanted.json").write_text(run_config.to_json())
    killed = run_python("-c", KILLED_RUN, omniglot_dir, tfds_dir, run_dir)
    assert killed.returncode == 17, killed.stderr[-3000:]
    # The first epoch finished: it is logged and backed up.
    assert [row["epoch"] for row in _log_rows(run_dir)] == ["0"]
    assert any(path.is_file() for path in (run_dir / "backup").rglob("*"))
    assert TrainConfig.load(run_dir / "config.json") == run_config

    model, history = training.train(run_config, splits, run_dir, verbose=0)
    # Epochs 2 and 3 ran, epoch 1 did not run again.
    assert history["epoch"] == [0, 1, 2]
    assert [row["epoch"] for row in _log_rows(run_dir)] == ["0", "1", "2"]
    assert not (run_dir / "backup").exists()
    assert (run_dir / "best.keras").is_file()
    assert model.count_params() == build_siamese(run_config.model).count_params()


@pytest.mark.parametrize("name", sorted(config_module.PRESETS))
def test_every_preset_resolves_and_trains_a_few_steps(name, splits):
    """Each preset's network, optimiser and pipeline, at a tiny batch (speed is bench/'s job)."""
    config = config_module.preset(name)
    assert config.preset == name
    assert config_module.TrainConfig.from_json(config.to_json()) == config
    model = build_siamese(config.model)
    model.compile(optimizer=training.make_optimizer(config), loss="binary_crossentropy")
    pairs = pair_dataset(
        splits["train"], image_size=config.model.image_size, batch_size=4, steps=2, seed=0,
        within_alphabet=config.within_alphabet,
    )
    history = model.fit(pairs, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_epoch_minutes_from_the_tensorboard_logs(trained_run):
    _, run_dir, _, history = trained_run
    minutes = training.epoch_minutes(run_dir)
    assert len(minutes) == len(history["loss"]) == 2
    assert 0 < minutes[0] < minutes[1] < 30
