"""The model, distortions, pairs, optimiser, evaluation and export on real Omniglot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import data
from keras_siamese.augmentation import Distortion, affine_transforms, distort, random_affine_parameters
from keras_siamese.config import TrainConfig, preset
from keras_siamese.evaluation import (
    SiameseScorer,
    accuracy,
    lake_tasks,
    pixel_scorer,
    within_alphabet_tasks,
)
from keras_siamese.export import export_saved_model, versions
from keras_siamese.model import ModelConfig, WeightedL1, build_siamese, build_twin, head_of, twin_of
from keras_siamese.optimizers import LayerwiseSGD
from keras_siamese.pairs import PairIndex, pair_dataset, sample_pair_indices
from keras_siamese.training import make_optimizer

SMALL = preset("smoke").model


@pytest.fixture(scope="module")
def splits(omniglot):
    return data.paper_split(omniglot)


# -- model ---------------------------------------------------------------------------------


def test_paper_model_shapes_and_parameter_count():
    model = build_siamese(ModelConfig())
    assert model.count_params() == 38_951_745
    assert [i.name for i in model.inputs] == ["left", "right"]
    x = np.zeros((2, 105, 105, 1), np.float32)
    assert model({"left": x, "right": x}).shape == (2, 1)
    assert twin_of(model)(x).shape == (2, 4096)
    # One Sequential twin, applied to both inputs: its weights are shared.
    assert isinstance(twin_of(model), keras.Sequential)
    assert sum(isinstance(layer, keras.Sequential) for layer in model.layers) == 1


def test_paper_initialisers():
    twin = build_twin(ModelConfig())
    conv = twin.get_layer("conv2")
    dense = twin.get_layer("dense")
    assert np.std(conv.kernel.numpy()) == pytest.approx(1e-2, rel=0.05)
    assert np.mean(conv.bias.numpy()) == pytest.approx(0.5, abs=0.01)
    assert np.std(dense.kernel.numpy()) == pytest.approx(0.2, rel=0.02)


def test_valid_padding_rejects_small_inputs():
    with pytest.raises(ValueError, match="too small"):
        build_siamese(ModelConfig(image_size=52))


def test_head_is_symmetric_and_model_round_trips_through_keras_file(tmp_path):
    model = build_siamese(SMALL)
    rng = np.random.default_rng(0)
    a, b = (rng.random((4, 28, 28, 1), dtype=np.float32) for _ in range(2))
    ab = model({"left": a, "right": b}).numpy()
    ba = model({"left": b, "right": a}).numpy()
    np.testing.assert_allclose(ab, ba, rtol=1e-6)
    assert isinstance(head_of(model), WeightedL1)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded({"left": a, "right": b}).numpy(), ab, rtol=1e-6)


def test_mixed_precision_keeps_head_output_float32():
    model = build_siamese(ModelConfig(**{**SMALL.__dict__, "mixed_precision": True}))
    x = np.zeros((2, 28, 28, 1), np.float32)
    assert twin_of(model).get_layer("conv1").compute_dtype == "bfloat16"
    assert model({"left": x, "right": x}).dtype == "float32"


# -- distortions ---------------------------------------------------------------------------


def test_distortion_parameters_stay_in_the_papers_ranges():
    params = random_affine_parameters(4000, tf.constant([1, 2]), Distortion(), 105)
    p = {k: v.numpy() for k, v in params.items()}
    assert np.abs(p["theta"]).max() <= math.radians(10) + 1e-6
    assert np.abs(p["shear_x"]).max() <= 0.3 + 1e-6
    assert p["scale_x"].min() >= 0.8 - 1e-6 and p["scale_y"].max() <= 1.2 + 1e-6
    assert np.abs(p["tx"]).max() <= 2 + 1e-6
    for key, identity in (("theta", 0), ("shear_x", 0), ("scale_x", 1), ("tx", 0)):
        active = np.mean(p[key] != identity)
        assert 0.45 < active < 0.55, key  # each part applied with probability 0.5


def test_translation_moves_a_pixel_and_identity_is_identity():
    params = {k: tf.constant([v]) for k, v in dict(
        theta=0.0, shear_x=0.0, shear_y=0.0, scale_x=1.0, scale_y=1.0, tx=2.0, ty=-1.0).items()}
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 4, 4, 0] = 1.0  # row 4, column 4
    moved = keras.ops.image.affine_transform(image, affine_transforms(params, 9)).numpy()
    assert moved[0, 3, 6, 0] == pytest.approx(1.0)  # x (column) +2, y (row) -1
    identity = {**params, "tx": tf.constant([0.0]), "ty": tf.constant([0.0])}
    np.testing.assert_allclose(affine_transforms(identity, 9).numpy()[0], [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6)


def test_distort_is_deterministic_under_a_seed(splits):
    from keras_siamese.preprocessing import to_model_input

    x = to_model_input(splits["train"].images[:8], 52)
    one = distort(x, tf.constant([3, 4]), Distortion()).numpy()
    again = distort(x, tf.constant([3, 4]), Distortion()).numpy()
    other = distort(x, tf.constant([5, 6]), Distortion()).numpy()
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)


# -- pairs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("within", [0.0, 1.0])
def test_pairs_are_balanced_and_labelled_right(splits, within):
    split = splits["train"]
    index = PairIndex.from_split(split)
    left, right, label = (t.numpy() for t in sample_pair_indices(index, 512, tf.constant([7, 8]), within))
    assert label.sum() == 256
    char = split.character[index.order]
    drawer = split.drawer[index.order]
    alphabet = split.alphabet[index.order]
    same = label == 1
    assert np.all(char[left[same]] == char[right[same]])
    assert np.all(drawer[left[same]] != drawer[right[same]])
    assert np.all(char[left[~same]] != char[right[~same]])
    if within == 1.0:
        assert np.all(alphabet[left[~same]] == alphabet[right[~same]])
    else:  # drawn from all 964 characters: most different pairs cross alphabets
        assert np.mean(alphabet[left[~same]] != alphabet[right[~same]]) > 0.8


def test_pair_dataset_is_deterministic_and_fresh_each_epoch(splits):
    def build():
        return pair_dataset(splits["train"], image_size=28, batch_size=16, steps=2, seed=5)

    ds = build()
    first = [x["left"].numpy() for x, _ in ds]
    second_epoch = [x["left"].numpy() for x, _ in ds]
    again = [x["left"].numpy() for x, _ in build()]
    x, y = next(iter(ds))
    assert x["left"].shape == (16, 28, 28, 1) and x["right"].dtype == tf.float32
    assert y.shape == (16, 1)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], second_epoch[0])


# -- optimiser -----------------------------------------------------------------------------


def test_layerwise_sgd_rates_and_momentum_ramp():
    frozen = keras.Variable(np.ones(3, np.float32), name="kernel")
    moving = keras.Variable(np.ones(3, np.float32), name="kernel")
    # Variables are matched to layers by their path.
    frozen._path, moving._path = "twin/conv1/kernel", "twin/dense/kernel"
    opt = LayerwiseSGD(
        0.1,
        layer_multipliers={"conv1": 0.0, "dense": 2.0},
        layer_momenta={"conv1": 0.5, "dense": 0.9},
        momentum_ramp_steps=10,
    )
    grads = [tf.ones(3), tf.ones(3)]
    opt.apply_gradients(zip(grads, [frozen, moving]))
    np.testing.assert_allclose(frozen.numpy(), 1.0)
    np.testing.assert_allclose(moving.numpy(), 1.0 - 0.2)  # lr 0.1 x factor 2, no velocity yet
    assert float(opt.momentum_at(0, 0.9)) == pytest.approx(0.5)
    assert float(opt.momentum_at(5, 0.9)) == pytest.approx(0.7)
    assert float(opt.momentum_at(50, 0.9)) == pytest.approx(0.9)
    restored = LayerwiseSGD.from_config(opt.get_config())
    assert restored.layer_multipliers == {"conv1": 0.0, "dense": 2.0}


def test_koch2015_learning_rate_decays_one_percent_per_epoch():
    config = preset("koch2015")
    opt = make_optimizer(config)
    schedule = opt._learning_rate
    steps = config.steps_per_epoch
    assert float(schedule(steps - 1)) == pytest.approx(0.01)
    assert float(schedule(steps)) == pytest.approx(0.0099)
    assert float(schedule(10 * steps)) == pytest.approx(0.01 * 0.99**10, rel=1e-5)


# -- evaluation ----------------------------------------------------------------------------


def test_lake_runs_and_pixel_baseline(lake_runs):
    tasks = lake_tasks(lake_runs)
    assert len(tasks) == 400 and tasks.way == 20
    # Lake et al. (2015) report 21.7% for 1-NN on raw pixels.
    assert 0.15 < accuracy(pixel_scorer(tasks), tasks) < 0.30


def test_within_alphabet_tasks(splits):
    split = splits["test"]
    tasks = within_alphabet_tasks(split, 40, way=20, seed=1)
    for q, cands, answer in zip(tasks.queries, tasks.candidates, tasks.answers):
        assert len(set(split.alphabet[cands])) == 1
        assert len(set(split.drawer[cands])) == 1
        assert len(set(split.character[cands])) == 20
        assert split.character[q] == split.character[cands[answer]]
        assert split.drawer[q] != split.drawer[cands[0]]


def test_scorer_matches_full_pair_passes(lake_runs):
    model = build_siamese(SMALL)
    tasks = lake_tasks(lake_runs)
    scores = SiameseScorer(model)(tasks)
    from keras_siamese.preprocessing import to_model_input

    q = to_model_input(tasks.images[np.repeat(tasks.queries[:3], 20)], 28)
    c = to_model_input(tasks.images[tasks.candidates[:3].ravel()], 28)
    direct = model({"left": q, "right": c}).numpy().reshape(3, 20)
    np.testing.assert_allclose(scores[:3], direct, atol=1e-5)


# -- export and the command ---------------------------------------------------------------

_PLAIN_TF = """
import sys, numpy as np, tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
p = m.signatures["serving_default"](left=tf.constant(x["left"]), right=tf.constant(x["right"]))["probability"]
assert "keras_siamese" not in sys.modules
np.save(sys.argv[3], p.numpy())
"""


def test_export_versions_reload_in_plain_tensorflow(tmp_path):
    model = build_siamese(SMALL)
    first = export_saved_model(model, tmp_path, "siamese")
    second = export_saved_model(model, tmp_path, "siamese")
    assert (first.name, second.name) == ("1", "2") and versions(tmp_path / "siamese") == [1, 2]
    assert not list((tmp_path / "siamese").glob(".tmp-*"))
    with pytest.raises(FileExistsError):
        export_saved_model(model, tmp_path, "siamese", version=2)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    stored = sum(f.stat().st_size for f in (second / "variables").iterdir())
    assert stored < 1.3 * weight_bytes  # one copy, not two (keras-team/keras#23553)

    rng = np.random.default_rng(0)
    inputs = {k: rng.random((5, 28, 28, 1), dtype=np.float32) for k in ("left", "right")}
    np.savez(tmp_path / "x.npz", **inputs)
    subprocess.run(
        [sys.executable, "-c", _PLAIN_TF, str(second), str(tmp_path / "x.npz"), str(tmp_path / "p.npy")],
        check=True,
    )
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model(inputs).numpy(), atol=1e-6)


def _fit(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "keras_siamese.fit", *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_fit_command_end_to_end(tmp_path, omniglot_dir, tfds_dir, omniglot):
    root = Path(__file__).resolve().parents[1]
    result = _fit(
        "--preset", "smoke", "--data-dir", str(omniglot_dir), "--tfds-dir", str(tfds_dir),
        "--runs-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "exports"),
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Lake's 20 runs, 20-way one-shot:" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("lake_runs_accuracy", "lake_runs_1nn", "koch_test_accuracy", "verification_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert TrainConfig.load(run_dir / "config.json") == preset("smoke")
    assert (run_dir / "best.keras").is_file() and (run_dir / "log.csv").is_file()
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "exports" / "siamese" / "1" / "saved_model.pb").is_file()


def test_fit_command_missing_data_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = _fit("--preset", "smoke", "--data-dir", str(missing), cwd=Path(__file__).resolve().parents[1])
    assert result.returncode != 0
    assert str(missing) in result.stderr and "Traceback" not in result.stderr


def test_fit_help_lists_options():
    result = _fit("--help", cwd=Path.cwd())
    assert result.returncode == 0
    for option in ("--preset", "--data-dir", "--resume", "--export-dir", "--mixed-precision"):
        assert option in result.stdout
