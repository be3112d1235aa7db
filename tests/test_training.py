"""Tests for keras_siamese.training: real `model.fit` runs of the smoke preset."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from conftest import log_rows

from keras_siamese import config as config_module
from keras_siamese import training
from keras_siamese.config import TrainConfig
from keras_siamese.evaluation import SiameseScorer, accuracy, within_alphabet_tasks
from keras_siamese.model import build_siamese


def test_training_lowers_the_loss(trained_run):
    run_config, run_dir, model, history = trained_run
    rows = log_rows(run_dir)
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
    header = log_rows(run_dir)[0].keys()
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
    values = [float(row[training.VAL_METRIC]) for row in log_rows(run_dir)]
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


def test_train_trains_one_network_only(splits, tmp_path):
    with pytest.raises(ValueError, match="train_members"):
        training.train(config_module.preset("smoke").replace(members=2), splits, tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="members must be at least 1"):
        config_module.preset("smoke").replace(members=0)


def test_all_pairs_cross_entropy_weighs_same_and_different_pairs_equally():
    labels = np.array([0, 0, 1, 2], np.int32)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, (1, 4, 4)).astype(np.float32)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(4, dtype=bool)
    different = labels[:, None] != labels[None, :]
    bce = -(np.where(same, np.log(p[0]), np.log(1 - p[0])))
    expected = 0.5 * bce[same].mean() + 0.5 * bce[different].mean()
    loss = training.AllPairsCrossEntropy()(labels, p)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # The diagonal (an image with itself) counts for nothing.
    changed = p.copy()
    np.fill_diagonal(changed[0], 0.001)
    assert float(training.AllPairsCrossEntropy()(labels, changed)) == pytest.approx(float(loss))
    # Accuracy: the same balance, with p > 0.5 as the decision.
    correct = (p[0] > 0.5) == same
    expected_accuracy = 0.5 * correct[same].mean() + 0.5 * correct[different].mean()
    assert float(training.all_pairs_accuracy(labels, p)) == pytest.approx(expected_accuracy)


def test_all_pairs_cross_entropy_pairs_within_groups_only():
    """Two groups of three images: pairs across the groups are not scored."""
    labels = np.array([0, 0, 1, 2, 3, 3], np.int32)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, (2, 3, 3)).astype(np.float32)
    same, different = [], []
    for g in range(2):
        group = labels[3 * g:3 * g + 3]
        s = (group[:, None] == group[None, :]) & ~np.eye(3, dtype=bool)
        bce = -(np.where(s, np.log(p[g]), np.log(1 - p[g])))
        same.append(bce[s])
        different.append(bce[group[:, None] != group[None, :]])
    expected = 0.5 * np.concatenate(same).mean() + 0.5 * np.concatenate(different).mean()
    assert float(training.AllPairsCrossEntropy()(labels, p)) == pytest.approx(expected, rel=1e-5)


def test_focal_all_pairs_cross_entropy_weighs_confused_pairs_up():
    labels = np.array([0, 0, 1, 2], np.int32)
    p = np.random.default_rng(2).uniform(0.05, 0.95, (1, 4, 4)).astype(np.float32)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(4, dtype=bool)
    different = labels[:, None] != labels[None, :]
    p_right = np.where(same, p[0], 1 - p[0])
    focal = -((1 - p_right) ** 2) * np.log(p_right)
    expected = 0.5 * focal[same].mean() + 0.5 * focal[different].mean()
    loss = training.AllPairsCrossEntropy(focal_gamma=2.0)
    assert float(loss(labels, p)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(labels, p)) < float(training.AllPairsCrossEntropy()(labels, p))
    # Saved with a model's compile config, and read back with its gamma.
    assert keras.losses.deserialize(keras.losses.serialize(loss)).focal_gamma == 2.0
    with pytest.raises(ValueError, match="focal_gamma"):
        TrainConfig(focal_gamma=-1.0)
    # The paper's random pairs take Keras's focal loss with the same gamma.
    smoke = config_module.preset("smoke").replace(pair_sampling="random", focal_gamma=2.0)
    random_pairs_loss = training.compiled_models(smoke)[1].loss
    assert isinstance(random_pairs_loss, keras.losses.BinaryFocalCrossentropy)
    assert random_pairs_loss.gamma == 2.0


def test_epoch_minutes_from_the_tensorboard_logs(trained_run):
    _, run_dir, _, history = trained_run
    minutes = training.epoch_minutes(run_dir)
    assert len(minutes) == len(history["loss"]) == 2
    assert 0 < minutes[0] < minutes[1] < 30


def test_ema_momentum_is_checked():
    with pytest.raises(ValueError, match="ema_momentum"):
        TrainConfig(ema_momentum=1.0)


@pytest.mark.parametrize("changes", [{"tta_views": 1}, {"tta_symmetries": 2}])
def test_test_time_augmentation_is_checked(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        TrainConfig(**changes)


def test_time_limit_starts_no_epoch_that_might_end_past_it(monkeypatch):
    clock = iter([0.0, 0.0, 100.0, 100.0, 220.0])  # train and epoch 1 begin, ends, epoch 2...
    monkeypatch.setattr(training.time, "monotonic", lambda: next(clock))
    limit = training.TimeLimit(minutes=250 / 60)
    limit.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    limit.model.stop_training = False
    limit.on_train_begin()
    limit.on_epoch_begin(0)
    limit.on_epoch_end(0)  # 100 s so far, and another 100 s epoch ends at 200 s: go on
    assert not limit.model.stop_training
    limit.on_epoch_begin(1)
    limit.on_epoch_end(1)  # 220 s, and the longest epoch (120 s) would end at 340 s: stop
    assert limit.model.stop_training


# --- Crash safety ---------------------------------------------------------------------------


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_backups_are_whole_folders_published_by_a_symlink(tmp_path):
    model = _tiny_model()
    backup = training.EpochBackup(tmp_path / "backup")
    backup.set_model(model)
    for epoch in range(3):
        model.set_weights([w + 1.0 for w in model.get_weights()])
        backup.commit(epoch)
    folder = tmp_path / "backup"
    assert os.readlink(folder / "latest") == "epoch-00003"
    assert os.readlink(folder / "previous") == "epoch-00002"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-00002", "epoch-00003", "latest", "previous"]
    assert training.EpochBackup.epochs_done(folder) == 3
    saved = model.get_weights()

    restored = _tiny_model()
    fresh = training.EpochBackup(folder)
    fresh.set_model(restored)
    fresh.on_train_begin()
    for a, b in zip(restored.get_weights(), saved):
        np.testing.assert_array_equal(a, b)
    assert training.EpochBackup.epochs_done(tmp_path / "none") == 0


def test_epochs_logged_after_the_last_backup_are_dropped(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_one_shot_accuracy\n0,0.9,0.1\n1,0.8,0.3\n2,0.7,0.2\n")
    training._keep_logged_epochs(log, 2)
    assert log.read_text() == "epoch,loss,val_one_shot_accuracy\n0,0.9,0.1\n1,0.8,0.3\n"
    training._keep_logged_epochs(log, 5)  # nothing to drop: the file is left alone
    assert log_rows(tmp_path)[-1]["epoch"] == "1"


def test_early_stopping_carries_on_from_the_logged_epochs(tmp_path):
    (tmp_path / "log.csv").write_text(
        "epoch,val_one_shot_accuracy\n0,0.1\n1,0.3\n2,0.2\n3,0.25\n"
    )
    stopping = training.ResumedEarlyStopping(
        tmp_path / "log.csv", monitor=training.VAL_METRIC, mode="max", patience=3
    )
    stopping.set_model(_tiny_model())
    stopping.on_train_begin()
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (0.3, 1, 2)
    # One more epoch without a better accuracy exhausts the patience of 3.
    stopping.on_epoch_end(4, {training.VAL_METRIC: 0.29})
    assert stopping.model.stop_training


def test_init_from_copies_a_trained_network_and_refuses_another_architecture(small_config, tmp_path):
    from keras_siamese.model import build_siamese

    source = build_siamese(small_config(paper_init=False))
    source.save(tmp_path / "source.keras")
    target = build_siamese(small_config(paper_init=False))
    training.initial_weights(target, tmp_path / "source.keras")
    for a, b in zip(source.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    colour = build_siamese(small_config(paper_init=False, channels=3))
    with pytest.raises(training.IncompatibleNetworkError, match=r"takes \(28, 28, 1\) images"):
        training.initial_weights(colour, tmp_path / "source.keras")
    with pytest.raises(FileNotFoundError):
        training.initial_weights(target, tmp_path / "missing.keras")


def test_init_from_a_free_head_gives_a_monotone_head_a_fresh_start(small_config, tmp_path):
    from keras_siamese.model import MONOTONE_HEAD_BIAS, build_siamese, head_of, twin_of

    source = build_siamese(small_config(paper_init=False))
    assert head_of(source).alpha.numpy().max() > 0
    source.save(tmp_path / "free.keras")
    target = build_siamese(small_config(paper_init=False, monotone_head=True))
    fresh = [w.numpy() for w in head_of(target).weights]
    training.initial_weights(target, tmp_path / "free.keras")
    # The twin is the trained one; the head keeps its fresh, constrained weights.
    for a, b in zip(twin_of(source).get_weights(), twin_of(target).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh, head_of(target).weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_allclose(head_of(target).bias.numpy(), [MONOTONE_HEAD_BIAS])
    # A monotone source passes its head on too.
    target.save(tmp_path / "monotone.keras")
    again = build_siamese(small_config(paper_init=False, monotone_head=True))
    head_of(again).bias.assign([0.0])
    training.initial_weights(again, tmp_path / "monotone.keras")
    for a, b in zip(target.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
