"""Whole training runs: resumed after a kill, ensembles, weight averaging, every preset."""

from __future__ import annotations

import textwrap

import keras
import numpy as np
import pytest
from conftest import log_rows

from keras_siamese import config as config_module
from keras_siamese import training
from keras_siamese.config import TrainConfig
from keras_siamese.evaluation import SiameseScorer, accuracy, within_alphabet_tasks
from keras_siamese.model import build_siamese

pytestmark = pytest.mark.slow


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
    assert [row["epoch"] for row in log_rows(run_dir)] == ["0"]
    assert any(path.is_file() for path in (run_dir / "backup").rglob("*"))
    assert TrainConfig.load(run_dir / "config.json") == run_config

    model, history = training.train(run_config, splits, run_dir, verbose=0)
    # Epochs 2 and 3 ran, epoch 1 did not run again.
    assert history["epoch"] == [0, 1, 2]
    # ... on the batches an uninterrupted run trains on, not on the first epoch's again.
    _, uninterrupted = training.train(run_config, splits, tmp_path / "uninterrupted", verbose=0)
    np.testing.assert_allclose(history["loss"], uninterrupted["loss"], rtol=1e-4)
    assert [row["epoch"] for row in log_rows(run_dir)] == ["0", "1", "2"]
    assert not (run_dir / "backup").exists()
    assert (run_dir / "best.keras").is_file()
    assert model.count_params() == build_siamese(run_config.model).count_params()

    # Resuming the finished run (say, killed during its export) trains nothing more.
    log_before = (run_dir / "log.csv").read_text()
    again, history_again = training.train(run_config, splits, run_dir, verbose=0)
    assert history_again == history
    assert (run_dir / "log.csv").read_text() == log_before
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    pair = {"left": x, "right": x[::-1]}
    np.testing.assert_array_equal(again.predict(pair, verbose=0), model.predict(pair, verbose=0))


def test_members_train_one_after_another_each_as_its_own_run(splits, tmp_path):
    run_config = config_module.preset("smoke").replace(members=2, epochs=1, steps_per_epoch=3, seed=5)
    members = training.train_members(run_config, splits, tmp_path / "ensemble", verbose=0)
    assert [member_dir.name for member_dir, _, _ in members] == ["member1-seed5", "member2-seed6"]
    assert TrainConfig.load(tmp_path / "ensemble" / "config.json") == run_config
    for seed, (member_dir, model, history) in enumerate(members, start=5):
        assert TrainConfig.load(member_dir / "config.json") == run_config.replace(members=1, seed=seed)
        assert (member_dir / "best.keras").is_file() and history["epoch"] == [0]
    # A member is the run that training one network with its seed gives.
    _, alone = training.train(
        run_config.replace(members=1, seed=6), splits, tmp_path / "alone", verbose=0
    )
    np.testing.assert_allclose(members[1][2]["loss"], alone["loss"], rtol=1e-4)
    # Resumed once all members finished (say, killed during evaluation): nothing trains again.
    logs = [(member_dir / "log.csv").read_text() for member_dir, _, _ in members]
    again = training.train_members(run_config, splits, tmp_path / "ensemble", verbose=0)
    assert [(member_dir / "log.csv").read_text() for member_dir, _, _ in again] == logs


def test_extra_callbacks_see_the_one_shot_accuracy(splits, tmp_path):
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(dict(logs)))
    run_config = config_module.preset("smoke").replace(epochs=2, steps_per_epoch=2)
    _, history = training.train(run_config, splits, tmp_path / "run", verbose=0, extra_callbacks=[record])
    assert [logs[training.VAL_METRIC] for logs in seen] == pytest.approx(history[training.VAL_METRIC])


@pytest.mark.parametrize(
    "name, mixed_precision",
    [(name, False) for name in sorted(config_module.PRESETS)]
    + [(name, True) for name in sorted(config_module.BFLOAT16_RECIPES)],
)
def test_every_preset_resolves_and_trains_a_few_steps(name, mixed_precision, splits):
    """Each preset's network, optimiser, loss and pipeline, at a tiny batch (speed is bench/'s job)."""
    config = config_module.preset(name, mixed_precision)
    assert config.preset == name and config.model.mixed_precision == mixed_precision
    assert config_module.TrainConfig.from_json(config.to_json()) == config
    config = config.replace(
        batch_size=4, batch_alphabets=2, batch_characters=2, batch_drawers=2,
        steps_per_epoch=2, val_pair_steps=1,
    )
    model, fitted = training.compiled_models(config)
    assert (fitted is model) == (config.pair_sampling == "random")
    train_batches, val_batches = training.datasets(config, splits)
    history = fitted.fit(
        train_batches, validation_data=val_batches, epochs=1,
        steps_per_epoch=config.steps_per_epoch, verbose=0,
    )
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["val_loss"]).all()


@pytest.mark.parametrize("pair_sampling", ["all", "alphabet"])
def test_all_pairs_training_trains_and_saves_the_siamese_model(splits, tmp_path, pair_sampling):
    config = config_module.preset("smoke").replace(
        pair_sampling=pair_sampling, batch_alphabets=2, batch_characters=4, batch_drawers=3,
        epochs=2, steps_per_epoch=15,
    )
    model, history = training.train(config, splits, tmp_path / "run", verbose=0)
    assert set(model.input) == {"left", "right"}
    assert history["loss"][-1] < history["loss"][0]
    for column in ("accuracy", "val_loss", "val_accuracy", training.VAL_METRIC):
        assert len(history[column]) == 2
    best = keras.models.load_model(tmp_path / "run" / "best.keras")
    assert best.name == "siamese" and set(best.input) == {"left", "right"}
    tasks = within_alphabet_tasks(splits["validation"], config.val_tasks, seed=config.seed + 2)
    assert accuracy(SiameseScorer(best)(tasks), tasks) == pytest.approx(
        max(history[training.VAL_METRIC])
    )


def _trainable_values(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.trainable_weights]


def test_weight_averaging_checkpoints_the_averaged_weights(splits, tmp_path):
    # Keras's moving average starts from the weights after the first step, so with a
    # momentum of almost 1 the averaged model is that of a one-step run, not the trained one.
    smoke = config_module.preset("smoke").replace(epochs=1, val_tasks=5, val_pair_steps=1)
    one_step, _ = training.train(smoke.replace(steps_per_epoch=1), splits, tmp_path / "a", verbose=0)
    trained, _ = training.train(smoke.replace(steps_per_epoch=8), splits, tmp_path / "b", verbose=0)
    averaged, history = training.train(
        smoke.replace(steps_per_epoch=8, ema_momentum=1 - 1e-7), splits, tmp_path / "c", verbose=0
    )
    assert history["loss"] and (tmp_path / "c" / "best.keras").exists()
    for first, raw, average in zip(
        _trainable_values(one_step), _trainable_values(trained), _trainable_values(averaged)
    ):
        np.testing.assert_allclose(average, first, atol=1e-4)
    assert max(
        np.abs(raw - first).max()
        for first, raw in zip(_trainable_values(one_step), _trainable_values(trained))
    ) > 1e-2
