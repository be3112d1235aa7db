"""Tests for keras_siamese.export: SavedModels for TensorFlow Serving, loaded back without Keras."""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import evaluation, export
from keras_siamese.model import (
    build_ensemble, build_siamese, head_of, load_models, siamese_members, twin_of,
)
from keras_siamese.preprocessing import to_model_input

# Loads a SavedModel the way a model server does: TensorFlow only. `import tensorflow` itself
# tries to import Keras when it is installed, so Keras (and this project) are made
# unimportable first, as on a server that has neither.
SERVE = textwrap.dedent(
    """
    import json, sys

    BLOCKED = ("keras", "keras_siamese", "tf_keras")
    for name in BLOCKED:
        sys.modules[name] = None  # `import keras` now fails as if it were not installed

    import numpy as np
    import tensorflow as tf

    model_dir, inputs, outputs = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    serving = loaded.signatures["serving_default"]
    x = np.load(inputs)
    result = serving(left=tf.constant(x["left"]), right=tf.constant(x["right"]))
    np.save(outputs, result["probability"].numpy())
    keras_modules = sorted(
        name for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in BLOCKED
    )
    try:
        import keras
        keras_blocked = False
    except ModuleNotFoundError:
        keras_blocked = True
    print(json.dumps({
        "keras_modules": keras_modules,
        "keras_blocked": keras_blocked,
        "outputs": sorted(result),
        "inputs": sorted(serving.structured_input_signature[1]),
    }))
    """
)


@pytest.fixture(scope="module")
def model(small_config) -> keras.Model:
    return build_siamese(small_config(paper_init=False))


@pytest.fixture(scope="module")
def pairs(omniglot) -> dict[str, np.ndarray]:
    """Five real pairs of 105x105 Omniglot images, pixel values as stored (255 = paper)."""
    images = omniglot["evaluation"].images
    return {"left": images[:5].astype(np.float32), "right": images[100:105].astype(np.float32)}


def _offline(model, pairs) -> np.ndarray:
    """What the Keras model gives for the same pixels, preprocessed as in training."""
    size = model.input["left"].shape[1]
    x = {side: to_model_input(images, size) for side, images in pairs.items()}
    return model.predict(x, verbose=0)[:, 0]


def _served(run_python, model_dir, pairs, tmp_path) -> tuple[np.ndarray, dict]:
    np.savez(tmp_path / "inputs.npz", **pairs)
    result = run_python("-c", SERVE, model_dir, tmp_path / "inputs.npz", tmp_path / "outputs.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return np.load(tmp_path / "outputs.npy"), info


def test_versions_are_numbered_up_and_written_whole(model, tmp_path):
    first = export.export_saved_model(model, tmp_path, "siamese")
    second = export.export_saved_model(model, tmp_path, "siamese")
    assert first == tmp_path / "siamese" / "1"
    assert second == tmp_path / "siamese" / "2"
    assert export.versions(tmp_path / "siamese") == [1, 2]
    assert export.next_version(tmp_path / "siamese") == 3
    assert sorted(p.name for p in (tmp_path / "siamese").iterdir()) == ["1", "2"]  # no .tmp-*
    for folder in (first, second):
        assert (folder / "saved_model.pb").is_file()
        assert list((folder / "variables").glob("variables.data-*"))


def test_explicit_version_and_existing_version(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "m", version=7)
    assert target == tmp_path / "m" / "7"
    with pytest.raises(FileExistsError, match="7"):
        export.export_saved_model(model, tmp_path, "m", version=7)
    assert export.versions(tmp_path / "m") == [7]
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["7"]
    assert export.export_saved_model(model, tmp_path, "m") == tmp_path / "m" / "8"


def test_saved_model_serves_the_same_probabilities_without_keras(
    model, pairs, run_python, tmp_path
):
    target = export.export_saved_model(model, tmp_path / "export", "siamese")
    served, info = _served(run_python, target, pairs, tmp_path)
    assert info["keras_blocked"]
    assert info["keras_modules"] == []  # neither keras nor keras_siamese was imported
    assert info["inputs"] == ["left", "right"]
    assert info["outputs"] == ["probability"]
    assert served.shape == (5,) and served.dtype == np.float32
    np.testing.assert_allclose(served, _offline(model, pairs), rtol=1e-5, atol=1e-6)


def test_saved_model_holds_one_copy_of_the_weights(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    saved_bytes = sum(p.stat().st_size for p in (target / "variables").glob("variables.data-*"))
    assert weight_bytes <= saved_bytes < 1.3 * weight_bytes


def test_saved_model_loads_in_process_and_accepts_any_batch_and_size(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    serving = tf.saved_model.load(str(target)).signatures["serving_default"]
    for n, size in ((1, 28), (3, 105), (2, 64)):
        x = tf.random.uniform((n, size, size, 1), maxval=255.0, seed=n)
        out = serving(left=x, right=x[::-1])["probability"]
        assert tuple(out.shape) == (n,)
        np.testing.assert_allclose(
            out.numpy(), _offline(model, {"left": x, "right": x[::-1]}), atol=1e-6
        )


def test_export_command_on_a_run_folder(trained_run, lake_runs, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python(
        "-m", "keras_siamese.export", run_dir, "--export-dir", tmp_path, "--name", "omniglot",
        "--tta-views", "2", "--tta-symmetries", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    target = tmp_path / "omniglot" / "1"
    assert str(target) in result.stdout
    assert export.versions(tmp_path / "omniglot") == [1]
    best = keras.models.load_model(run_dir / "best.keras")
    rng = np.random.default_rng(1)
    x = {side: rng.integers(0, 256, (3, 105, 105, 1)).astype(np.float32) for side in ("left", "right")}
    signatures = tf.saved_model.load(str(target)).signatures
    served = signatures["serving_default"](
        left=tf.constant(x["left"]), right=tf.constant(x["right"])
    )["probability"]
    np.testing.assert_allclose(served.numpy(), _offline(best, x), atol=1e-6)
    # one_shot_tta averages the views asked for: 2, without turning or mirroring.
    tasks = evaluation.lake_tasks(lake_runs)
    tta = signatures["one_shot_tta"](
        queries=lake_runs.test[0].astype(np.float32),
        support=lake_runs.training[0].astype(np.float32),
    )["scores"].numpy()
    np.testing.assert_allclose(
        tta, evaluation.SiameseScorer(best, views=2, symmetries=1)(tasks)[:20], atol=1e-5
    )
    assert not np.allclose(tta, evaluation.SiameseScorer(best, views=2)(tasks)[:20], atol=1e-3)


def test_export_command_refuses_too_few_views(trained_run, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python(
        "-m", "keras_siamese.export", run_dir, "--export-dir", tmp_path / "out", "--tta-views", "1"
    )
    assert result.returncode != 0
    assert "tta_views must be at least 2, got 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_export_command_without_a_model(run_python, tmp_path):
    result = run_python("-m", "keras_siamese.export", tmp_path, "--export-dir", tmp_path / "out")
    assert result.returncode != 0
    assert f"no model at {tmp_path / 'best.keras'}" in result.stderr
    assert not (tmp_path / "out").exists()


# --- The serving signatures --------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def test_signatures_and_their_named_inputs_and_outputs(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    signatures = tf.saved_model.load(str(target)).signatures
    assert sorted(signatures) == sorted(export.SIGNATURES)
    expected = {
        "serving_default": ({"left": tf.float32, "right": tf.float32}, ["probability"]),
        "pair_encoded": ({"left": tf.string, "right": tf.string}, ["probability"]),
        "embed": ({"images": tf.float32}, ["embedding"]),
        "embed_encoded": ({"images": tf.string}, ["embedding"]),
        "one_shot": ({"queries": tf.float32, "support": tf.float32}, ["best", "scores"]),
        "one_shot_encoded": ({"queries": tf.string, "support": tf.string}, ["best", "scores"]),
        "one_shot_tta": ({"queries": tf.float32, "support": tf.float32}, ["best", "scores"]),
        "one_shot_tta_encoded": ({"queries": tf.string, "support": tf.string}, ["best", "scores"]),
    }
    for name, (inputs, outputs) in expected.items():
        specs = signatures[name].structured_input_signature[1]
        assert {key: spec.dtype for key, spec in specs.items()} == inputs, name
        assert sorted(signatures[name].structured_outputs) == outputs, name


def test_saved_model_cli_shows_the_signatures(model, run_python, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"  # installed with TensorFlow
    result = run_python(cli, "show", "--dir", target, "--all")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in result.stdout
    for tensor in ("left", "right", "images", "queries", "support"):
        assert f"inputs['{tensor}']" in result.stdout
    for tensor in ("probability", "embedding", "scores", "best"):
        assert f"outputs['{tensor}']" in result.stdout


def test_embed_and_one_shot_agree_with_the_pair_signature(model, omniglot, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    signatures = tf.saved_model.load(str(target)).signatures
    images = omniglot["evaluation"].images[:7].astype(np.float32)
    queries, support = images[:3], images[3:]
    embedding = signatures["embed"](images=images)["embedding"].numpy()
    twin = twin_of(model)
    np.testing.assert_allclose(embedding, twin(to_model_input(images, 28)).numpy(), atol=1e-6)
    result = signatures["one_shot"](queries=queries, support=support)
    scores, best = result["scores"].numpy(), result["best"].numpy()
    assert scores.shape == (3, 4) and best.shape == (3,)
    left = np.repeat(queries, 4, axis=0)
    right = np.tile(support, (3, 1, 1, 1))
    pairs = signatures["serving_default"](left=left, right=right)["probability"].numpy()
    np.testing.assert_allclose(scores, pairs.reshape(3, 4), atol=1e-6)
    np.testing.assert_array_equal(best, scores.argmax(axis=1))


def test_encoded_signatures_decode_png_and_jpeg_like_the_training_data(model, omniglot, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    signatures = tf.saved_model.load(str(target)).signatures
    images = omniglot["evaluation"].images[:4]
    pngs = tf.constant([_png(image) for image in images])
    from_files = signatures["embed_encoded"](images=pngs)["embedding"].numpy()
    from_pixels = signatures["embed"](images=images.astype(np.float32))["embedding"].numpy()
    np.testing.assert_array_equal(from_files, from_pixels)  # PNG is lossless: same pixels
    # A colour JPEG of another size is decoded to grey, resized, and scored.
    rgb = np.repeat(np.pad(images[0], ((10, 10), (0, 0), (0, 0)), constant_values=255), 3, -1)
    jpeg = tf.io.encode_jpeg(tf.constant(rgb), quality=95).numpy()
    probability = signatures["pair_encoded"](
        left=tf.constant([jpeg]), right=tf.constant([_png(images[0])])
    )["probability"].numpy()
    assert probability.shape == (1,) and 0.0 <= probability[0] <= 1.0


def test_encoded_signature_rejects_what_is_not_an_image(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    embed = tf.saved_model.load(str(target)).signatures["embed_encoded"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        embed(images=tf.constant([b"this is not an image"]))


def test_lake_runs_through_the_png_signature_match_the_offline_evaluation(
    trained_run, lake_runs, tmp_path
):
    """Lake's 400 trials sent as the zip's own PNG files score exactly as offline."""
    _, _, model, _ = trained_run
    target = export.export_saved_model(model, tmp_path, "siamese")
    tasks = evaluation.lake_tasks(lake_runs)
    offline = evaluation.SiameseScorer(model)(tasks)
    served = evaluation.saved_model_lake_scores(target, lake_runs)
    np.testing.assert_allclose(served, offline, atol=1e-5)
    assert evaluation.accuracy(served, tasks) == evaluation.accuracy(offline, tasks)


def test_test_time_augmentation_signature_matches_the_offline_scorer(
    trained_run, lake_runs, tmp_path
):
    """``one_shot_tta`` averages the same fixed views as ``SiameseScorer(views=...)``."""
    _, _, model, _ = trained_run
    target = export.export_saved_model(model, tmp_path, "siamese", views=4)
    tasks = evaluation.lake_tasks(lake_runs)
    offline = evaluation.SiameseScorer(model, views=4)(tasks)
    served = evaluation.saved_model_lake_scores(target, lake_runs, augmented=True)
    np.testing.assert_allclose(served, offline, atol=1e-5)
    assert not np.allclose(served, evaluation.SiameseScorer(model)(tasks), atol=1e-3)
    # Pixel arrays through one_shot_tta score as the files do.
    signatures = tf.saved_model.load(str(target)).signatures
    pixels = signatures["one_shot_tta"](
        queries=lake_runs.test[0].astype(np.float32),
        support=lake_runs.training[0].astype(np.float32),
    )
    np.testing.assert_allclose(pixels["scores"].numpy(), offline[:20], atol=1e-5)
    np.testing.assert_array_equal(pixels["best"].numpy(), np.argmax(offline[:20], axis=1))


def test_mixed_precision_export_serves_float32(small_config, omniglot, tmp_path):
    model = build_siamese(small_config(mixed_precision=True))
    target = export.export_saved_model(model, tmp_path, "siamese")
    signatures = tf.saved_model.load(str(target)).signatures
    images = omniglot["evaluation"].images[:2].astype(np.float32)
    assert signatures["serving_default"](left=images, right=images)["probability"].dtype == tf.float32
    assert signatures["embed"](images=images)["embedding"].dtype == tf.float32
    assert signatures["one_shot"](queries=images, support=images)["scores"].dtype == tf.float32
    assert signatures["one_shot_tta"](queries=images, support=images)["scores"].dtype == tf.float32


@pytest.mark.parametrize("members", [1, 2, "2 and 1, loaded"])
def test_serving_copy_holds_bfloat16_weights_and_computes_the_same(
    small_config, pairs, tmp_path, members
):
    config = small_config(mixed_precision=True, batch_norm=True)
    if members == 1:
        model = build_siamese(config)
    elif members == 2:
        model = build_ensemble([build_siamese(config), build_siamese(config)])
    else:  # an ensemble of an ensemble and a network, as `ensemble` combines run folders
        build_ensemble([build_siamese(config), build_siamese(config)]).save(tmp_path / "a.keras")
        build_siamese(config).save(tmp_path / "b.keras")
        model = load_models([tmp_path / "a.keras", tmp_path / "b.keras"])
    copy = export.serving_copy(model)
    dtypes = {(layer.name, v.name): v.dtype for layer in _twin_layers(copy) for v in layer.weights}
    assert dtypes["conv1", "kernel"] == "bfloat16"
    assert dtypes["dense", "kernel"] == dtypes["dense", "bias"] == "bfloat16"
    # Batch normalisation and the head keep float32.
    assert dtypes["bn1", "gamma"] == dtypes["bn1", "moving_variance"] == "float32"
    assert all(head_of(m).alpha.dtype == "float32" for m in siamese_members(copy))
    assert all(v.dtype == "float32" for v in model.variables)  # the model itself is untouched
    x = {side: to_model_input(images, config.image_size) for side, images in pairs.items()}
    np.testing.assert_array_equal(
        copy.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def _twin_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for m in siamese_members(model) for layer in twin_of(m).layers]


def test_mixed_precision_export_holds_the_bfloat16_weights_once(small_config, pairs, tmp_path):
    model = build_siamese(small_config(mixed_precision=True, batch_norm=True))
    target = export.export_saved_model(model, tmp_path, "siamese")
    weight_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in export.serving_copy(model).variables
    )
    assert weight_bytes < 0.6 * sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    saved_bytes = sum(p.stat().st_size for p in (target / "variables").glob("variables.data-*"))
    assert weight_bytes <= saved_bytes < 1.3 * weight_bytes
    served = tf.saved_model.load(str(target)).signatures["serving_default"](**pairs)
    np.testing.assert_allclose(served["probability"], _offline(model, pairs), rtol=1e-5, atol=1e-6)
    # A float32 model has nothing to cast: it is exported as it is.
    float32_model = build_siamese(small_config())
    assert export.serving_copy(float32_model) is float32_model


def test_an_ensemble_exports_with_the_same_signatures(small_config, lake_runs, tmp_path):
    """An ensemble's SavedModel serves the mean of its members, as the offline scorer does."""
    members = [build_siamese(small_config(paper_init=False)) for _ in range(2)]
    rng = np.random.default_rng(2)
    x = {side: rng.integers(0, 256, (3, 105, 105, 1)).astype(np.float32) for side in ("left", "right")}
    expected = np.mean([_offline(m, x) for m in members], axis=0)
    ensemble = build_ensemble(members)
    target = export.export_saved_model(ensemble, tmp_path, "siamese", views=3)
    signatures = tf.saved_model.load(str(target)).signatures
    assert sorted(signatures) == sorted(export.SIGNATURES)
    served = signatures["serving_default"](left=tf.constant(x["left"]), right=tf.constant(x["right"]))
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-6)
    embedding = signatures["embed"](images=tf.constant(x["left"]))["embedding"]
    assert embedding.shape == (3, 2 * small_config().dense_units)
    tasks = evaluation.lake_tasks(lake_runs)
    for augmented, views in ((False, 1), (True, 3)):
        offline = evaluation.SiameseScorer(ensemble, views=views)(tasks)
        online = evaluation.saved_model_lake_scores(target, lake_runs, augmented=augmented)
        np.testing.assert_allclose(online, offline, atol=1e-5)
        assert evaluation.accuracy(online, tasks) == evaluation.accuracy(offline, tasks)
