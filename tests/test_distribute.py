"""The strategy choice, TF_CONFIG, replica groups and the chief-only backup, in one process.

Two workers training together are in tests/end_to_end/test_multi_worker.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_siamese import config as configs
from keras_siamese import distribute, fit, training
from keras_siamese.model import build_siamese, twin_of


def test_one_device_is_keras_default(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    distribution = distribute.make_strategy("one")
    assert distribution.strategy is None and distribution.replicas == 1
    assert distribution.chief and not distribution.multi_worker
    distribution.barrier()  # nothing to wait for
    assert distribute.make_strategy("auto").name in ("one", "mirrored")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributionError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi-worker")
    with pytest.raises(distribute.DistributionError, match="unknown strategy"):
        distribute.make_strategy("tpu")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"cluster": {"worker": ["a:1"]}}),
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}),
        json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}),
    ],
)
def test_a_malformed_tf_config_is_named(monkeypatch, text):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(distribute.DistributionError, match="TF_CONFIG"):
        distribute.tf_config()


def test_tf_config_as_tensorflow_defines_it(monkeypatch):
    cluster = {"worker": ["w0:2222", "w1:2222"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert distribute.tf_config()["cluster"] == cluster
    monkeypatch.setenv("TF_CONFIG", "")
    assert distribute.tf_config() is None


def test_several_workers_need_one_run_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SystemExit, match="needs --run-dir"):
        fit.main(["--strategy", "multi-worker", "--preset", "smoke"])
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(SystemExit, match="needs --run-dir"):
        fit.main(["--preset", "smoke"])  # auto: a cluster
    # A cluster of one task is one process: auto needs no shared run folder for it.
    one_task = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(one_task))
    assert fit._distribution(fit.build_parser().parse_args(["--preset", "smoke"])).name == "one"
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(SystemExit, match="choose one"):
        fit.main(["--run-dir", str(tmp_path / "a"), "--resume", str(tmp_path / "b")])


def test_run_dir_names_the_run_folder(tmp_path):
    args = fit.build_parser().parse_args(["--preset", "smoke", "--run-dir", str(tmp_path / "run")])
    config, run_dir = fit.resolve_config(args)
    assert run_dir == tmp_path / "run" and config.preset == "smoke"


@pytest.mark.parametrize(
    ("sampling", "alphabets", "characters", "replicas", "groups"),
    [
        ("all", 4, 8, 1, 1),
        ("all", 4, 8, 2, 1),
        ("all", 1, 16, 4, 1),
        ("alphabet", 4, 8, 1, 4),
        ("alphabet", 4, 8, 2, 2),
        ("alphabet", 4, 8, 4, 1),
    ],
)
def test_each_replica_pairs_whole_groups(sampling, alphabets, characters, replicas, groups):
    config = configs.preset("cpu").replace(
        pair_sampling=sampling, batch_alphabets=alphabets, batch_characters=characters
    )
    assert training.replica_groups(config, replicas) == groups


@pytest.mark.parametrize(("sampling", "replicas"), [("alphabet", 3), ("all", 3)])
def test_a_batch_the_replicas_cannot_share_is_refused(sampling, replicas):
    config = configs.preset("cpu").replace(
        pair_sampling=sampling, batch_alphabets=4, batch_characters=8
    )
    with pytest.raises(ValueError, match=f"{replicas} replicas cannot share"):
        training.replica_groups(config, replicas)


def test_synchronised_batch_norm_is_not_saved(small_config, tmp_path):
    model = build_siamese(small_config(batch_norm=True), synchronized_batch_norm=True)
    norms = [layer for layer in twin_of(model).layers if "bn" in layer.name]
    assert norms and all(layer.synchronized for layer in norms)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    loaded_norms = [layer for layer in twin_of(loaded).layers if "bn" in layer.name]
    assert loaded_norms and not any(layer.synchronized for layer in loaded_norms)
    x = {"left": np.zeros((2, 28, 28, 1), "float32"), "right": np.ones((2, 28, 28, 1), "float32")}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


def test_a_worker_that_does_not_write_restores_the_chiefs_backup(small_config, tmp_path):
    """The chief backs up; another worker restores the same weights and epoch, writing nothing,
    also when only the previous backup can be read."""
    chief_model = build_siamese(small_config())
    chief_model.compile(optimizer="adam", loss="binary_crossentropy")
    chief_model.optimizer.build(chief_model.trainable_variables)
    chief = training.EpochBackup(tmp_path / "backup")
    chief.set_model(chief_model)
    chief.commit(0)
    first = chief_model.get_weights()
    chief_model.set_weights([w + 1.0 for w in first])
    chief.commit(1)
    listing = sorted(p.name for p in (tmp_path / "backup").iterdir())

    worker_model = build_siamese(small_config())
    worker_model.compile(optimizer="adam", loss="binary_crossentropy")
    worker = training.EpochBackup(tmp_path / "backup", writes=False)
    worker.set_model(worker_model)
    worker.on_train_begin()
    assert worker_model._initial_epoch == 2
    for a, b in zip(worker_model.get_weights(), chief_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    worker.commit(2)
    worker.on_train_end()
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == listing

    # The latest backup torn: the previous one is read where it is.
    (tmp_path / "backup" / "latest" / "latest.weights.h5").write_bytes(b"torn")
    worker.on_train_begin()
    assert worker_model._initial_epoch == 1
    for a, b in zip(worker_model.get_weights(), first):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "backup" / "latest" / "latest.weights.h5").read_bytes() == b"torn"
