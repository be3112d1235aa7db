"""Tests for keras_siamese.export: SavedModels for TensorFlow Serving, loaded back without Keras."""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import keras_probabilities

from keras_siamese import export
from keras_siamese.model import (
    build_ensemble,
    build_siamese,
    head_of,
    load_models,
    siamese_members,
    twin_of,
)
from keras_siamese.preprocessing import to_model_input


@pytest.fixture(scope="module")
def model(small_config) -> keras.Model:
    return build_siamese(small_config(paper_init=False))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> pathlib.Path:
    """``model`` exported once, for the tests that only read the SavedModel."""
    return export.export_saved_model(model, tmp_path_factory.mktemp("exported"), "siamese")


# The tests of version numbers export with the fewest test-time views, the quickest to trace.


def test_versions_are_numbered_up_and_written_whole(model, tmp_path):
    first = export.export_saved_model(model, tmp_path, "siamese", views=2)
    second = export.export_saved_model(model, tmp_path, "siamese", views=2)
    assert first == tmp_path / "siamese" / "1"
    assert second == tmp_path / "siamese" / "2"
    assert export.versions(tmp_path / "siamese") == [1, 2]
    assert export.next_version(tmp_path / "siamese") == 3
    assert sorted(p.name for p in (tmp_path / "siamese").iterdir()) == ["1", "2"]  # no .tmp-*
    for folder in (first, second):
        assert (folder / "saved_model.pb").is_file()
        assert list((folder / "variables").glob("variables.data-*"))


def test_saved_model_holds_one_copy_of_the_weights(model, exported):
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    saved_bytes = sum(p.stat().st_size for p in (exported / "variables").glob("variables.data-*"))
    assert weight_bytes <= saved_bytes < 1.3 * weight_bytes


def test_saved_model_loads_in_process_and_accepts_any_batch_and_size(model, exported):
    serving = tf.saved_model.load(str(exported)).signatures["serving_default"]
    for n, size in ((1, 28), (3, 105), (2, 64)):
        x = tf.random.uniform((n, size, size, 1), maxval=255.0, seed=n)
        out = serving(left=x, right=x[::-1])["probability"]
        assert tuple(out.shape) == (n,)
        np.testing.assert_allclose(
            out.numpy(), keras_probabilities(model, {"left": x, "right": x[::-1]}), atol=1e-6
        )


# --- The serving signatures --------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def test_signatures_and_their_named_inputs_and_outputs(model, exported):
    signatures = tf.saved_model.load(str(exported)).signatures
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
        "limits": ({}, ["max_gallery", "max_images", "max_pairs", "max_pixels"]),
        "compare": (
            {"query_embeddings": tf.float32, "support_embeddings": tf.float32}, ["scores"]
        ),
        "model_info": ({}, ["channels", "embedding_size", "image_size", "model_id", "threshold"]),
    }
    for name, (inputs, outputs) in expected.items():
        specs = signatures[name].structured_input_signature[1]
        assert {key: spec.dtype for key, spec in specs.items()} == inputs, name
        assert sorted(signatures[name].structured_outputs) == outputs, name


def test_embed_and_one_shot_agree_with_the_pair_signature(model, exported, omniglot):
    signatures = tf.saved_model.load(str(exported)).signatures
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


def test_encoded_signatures_decode_png_and_jpeg_like_the_training_data(model, exported, omniglot):
    signatures = tf.saved_model.load(str(exported)).signatures
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


def test_encoded_signature_rejects_what_is_not_an_image(model, exported):
    embed = tf.saved_model.load(str(exported)).signatures["embed_encoded"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        embed(images=tf.constant([b"this is not an image"]))


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


# --- Limits, refusals and staging folders ---------------------------------------------------

LIMITS = export.ExportLimits(max_pixels=64 * 64, max_images=4, max_pairs=6)


@pytest.fixture(scope="module")
def limited(model, tmp_path_factory) -> pathlib.Path:
    """``model`` exported with small limits, for the tests that only read the SavedModel."""
    return export.export_saved_model(
        model, tmp_path_factory.mktemp("limited"), "siamese", views=2, limits=LIMITS
    )


def _warmup_records(version: pathlib.Path) -> list:
    """A version's warm-up file read as TF Serving reads it: TFRecords of PredictionLog."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = version / "assets.extra" / "tf_serving_warmup_requests"
    records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    return [prediction_log_pb2.PredictionLog.FromString(record) for record in records]


def test_warmup_file_holds_one_request_per_signature_that_the_saved_model_answers(exported):
    records = _warmup_records(exported)
    assert [record.WhichOneof("log_type") for record in records] == ["predict_log"] * len(records)
    predicts = [record.predict_log.request for record in records]
    assert sorted(p.model_spec.signature_name for p in predicts) == sorted(export.SIGNATURES)
    assert {p.model_spec.name for p in predicts} == {"siamese"}
    # Replayed through plain TensorFlow, as TF Serving replays them before serving the version:
    # each request fits its signature and its limits, and is answered with finite values.
    signatures = tf.saved_model.load(str(exported)).signatures
    for predict in predicts:
        name = predict.model_spec.signature_name
        specs = signatures[name].structured_input_signature[1]
        assert set(predict.inputs) == set(specs), name
        inputs = {key: tf.make_ndarray(proto) for key, proto in predict.inputs.items()}
        for key, value in inputs.items():
            assert value.dtype == specs[key].dtype.as_numpy_dtype, (name, key)
            if specs[key].dtype == tf.string:  # a real PNG file of the network's input size
                assert tuple(tf.io.decode_png(value[0]).shape) == (28, 28, 1), (name, key)
        outputs = signatures[name](**{key: tf.constant(value) for key, value in inputs.items()})
        for key, value in outputs.items():
            if value.dtype.is_floating:
                assert np.isfinite(value.numpy()).all(), (name, key)


def test_default_limits_and_their_signature(exported):
    assert export.ExportLimits() == export.ExportLimits(2048 * 2048, 256, 16_384, 1_000_000)
    served = tf.saved_model.load(str(exported)).signatures["limits"]()
    assert {k: int(v.numpy()) for k, v in served.items()} == {
        "max_pixels": 2048 * 2048, "max_images": 256, "max_pairs": 16_384,
        "max_gallery": 1_000_000,
    }  # fmt: skip
    with pytest.raises(ValueError, match="max_images must be at least 1, got 0"):
        export.ExportLimits(max_images=0)


def test_limits_round_trip_through_the_export(limited):
    served = tf.saved_model.load(str(limited)).signatures["limits"]()
    assert {k: (v.dtype, int(v.numpy())) for k, v in served.items()} == {
        "max_pixels": (tf.int64, 4096), "max_images": (tf.int64, 4), "max_pairs": (tf.int64, 6),
        "max_gallery": (tf.int64, 1_000_000),
    }  # fmt: skip
    recorded = json.loads((limited / "assets.extra" / "limits.json").read_text())
    assert recorded == {"max_pixels": 4096, "max_images": 4, "max_pairs": 6, "max_gallery": 1_000_000}


def test_requests_over_the_limits_are_refused_with_the_limit_named(limited):
    signatures = tf.saved_model.load(str(limited)).signatures
    blank = np.full((5, 64, 64, 1), 255.0, np.float32)
    png = _png(np.full((64, 64, 1), 255, np.uint8))

    def refused(match, name, **inputs):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})

    refused(r"images: 5 images, over the export limit max_images=4", "embed", images=blank)
    refused(r"images: 5 images, over the export limit max_images=4", "embed_encoded", images=[png] * 5)
    refused(r"right: 5 images, over the export limit max_images=4", "serving_default", left=blank[:4], right=blank)
    refused(r"left: 5 images", "pair_encoded", left=[png] * 5, right=[png] * 5)
    for name, q, s in (("one_shot", blank[:3], blank[:3]), ("one_shot_tta_encoded", [png] * 3, [png] * 3)):
        refused(r"3 queries x 3 support images = 9 pairs, over the export limit max_pairs=6", name, queries=q, support=s)
    # Images larger than max_pixels, as pixels or as a file, and pixels that are not finite.
    big = np.full((1, 65, 64, 1), 255.0, np.float32)
    refused(r"left: images of 65x64 = 4160 pixels, over the export limit max_pixels=4096", "serving_default", left=big, right=big)
    big_png = _png(np.full((65, 64, 1), 255, np.uint8))
    refused(r"support\[1\] \(PNG\) declares 64x65 = 4160 pixels", "one_shot_encoded", queries=[png], support=[png, big_png])
    nan = blank[:2].copy()
    nan[1, 0, 0, 0] = np.nan
    refused("queries: pixel values must be finite", "one_shot", queries=nan, support=blank[:2])
    # At the limits, requests are served.
    assert signatures["one_shot"](queries=blank[:2], support=blank[:3])["scores"].shape == (2, 3)
    assert signatures["embed_encoded"](images=tf.constant([png] * 4))["embedding"].shape[0] == 4


def test_a_model_with_nan_weights_is_not_exported(small_config, tmp_path):
    model = build_siamese(small_config(paper_init=False))
    kernel = twin_of(model).get_layer("dense").kernel
    values = kernel.numpy()
    values[0, 0] = np.nan
    kernel.assign(values)
    with pytest.raises(ValueError, match=r"refusing to export: weight .*dense/kernel holds NaN \(1 of"):
        export.export_saved_model(model, tmp_path, "siamese", views=2)
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "siamese"])  # no version, no .tmp-*


def test_a_model_whose_scores_are_not_probabilities_is_not_exported(small_config, tmp_path):
    # Finite weights so large that the first convolution overflows to inf on any ink, and the
    # second's mixed signs then give inf - inf: NaN.
    model = build_siamese(small_config(paper_init=False))
    twin = twin_of(model)
    first, second = twin.get_layer("conv1").kernel, twin.get_layer("conv2").kernel
    first.assign(np.full(first.shape, 3e38, np.float32))
    second.assign(np.resize([1.0, -1.0], second.shape).astype(np.float32))
    with pytest.raises(ValueError, match="refusing to export: the model's one_shot scores"):
        export.export_saved_model(model, tmp_path, "siamese", views=2)
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "siamese"])  # no version, no .tmp-*


def test_model_info_names_the_network_its_threshold_and_input(model, exported, small_config):
    served = tf.saved_model.load(str(exported)).signatures["model_info"]()
    info = {key: value.numpy() for key, value in served.items()}
    assert info["model_id"].decode() == export.model_id(model)
    assert info["threshold"] == np.float32(export.DEFAULT_THRESHOLD)
    assert (info["embedding_size"], info["image_size"], info["channels"]) == (64, 28, 1)
    recorded = json.loads((exported / "assets.extra" / "model.json").read_text())
    assert recorded == {
        "model_id": export.model_id(model), "threshold": export.DEFAULT_THRESHOLD,
        "embedding_size": 64, "image_size": 28, "channels": 1,
    }  # fmt: skip
    # The fingerprint follows the weights, not the object.
    other = build_siamese(small_config(paper_init=False))
    assert export.model_id(other) != export.model_id(model)
    other.set_weights(model.get_weights())
    assert export.model_id(other) == export.model_id(model)


def test_compare_scores_embeddings_as_one_shot_scores_images(model, exported):
    signatures = tf.saved_model.load(str(exported)).signatures
    rng = np.random.default_rng(3)
    # Queries of another aspect ratio: fitted to squares the same way by every signature.
    queries = rng.integers(0, 256, (3, 40, 30, 1)).astype(np.float32)
    support = rng.integers(0, 256, (5, 28, 28, 1)).astype(np.float32)
    one_shot = signatures["one_shot"](queries=queries, support=support)["scores"].numpy()
    embed = signatures["embed"]
    compared = signatures["compare"](
        query_embeddings=embed(images=queries)["embedding"],
        support_embeddings=embed(images=support)["embedding"],
    )["scores"].numpy()
    np.testing.assert_allclose(compared, one_shot, rtol=1e-5, atol=1e-6)
    # A gallery larger than one chunk: every column scored, the padding dropped.
    gallery = rng.random((export._COMPARE_ELEMENTS // (2 * 64) + 7, 64)).astype(np.float32)
    scores = signatures["compare"](
        query_embeddings=gallery[:2], support_embeddings=gallery
    )["scores"].numpy()
    assert scores.shape == (2, len(gallery))
    last = head_of(model).pairwise(gallery[:2], gallery[-7:])
    np.testing.assert_allclose(scores[:, -7:], np.asarray(last).reshape(2, 7), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or infinite"):
        signatures["compare"](
            query_embeddings=np.full((1, 64), np.nan, np.float32), support_embeddings=gallery[:3]
        )


def test_a_colour_network_exports_with_its_threshold_and_gallery_limit(small_config, tmp_path):
    colour = build_siamese(small_config(paper_init=False, channels=3))
    target = export.export_saved_model(
        colour, tmp_path, "colour", views=2, threshold=0.75,
        limits=export.ExportLimits(max_gallery=10),
    )  # fmt: skip
    signatures = tf.saved_model.load(str(target)).signatures
    info = signatures["model_info"]()
    assert (float(info["threshold"]), int(info["channels"])) == (0.75, 3)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (2, 28, 28, 3)).astype(np.float32)
    served = signatures["serving_default"](left=images, right=images[::-1])["probability"]
    expected = colour.predict(
        {"left": to_model_input(images, 28), "right": to_model_input(images[::-1], 28)}, verbose=0
    )
    np.testing.assert_allclose(served.numpy(), expected[:, 0], rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_gallery=10"):
        signatures["compare"](
            query_embeddings=np.zeros((1, 64), np.float32),
            support_embeddings=np.zeros((11, 64), np.float32),
        )
    with pytest.raises(ValueError, match="threshold must be a probability"):
        export.export_saved_model(colour, tmp_path, "colour", threshold=1.5)


def test_the_export_command_takes_a_run_folders_threshold(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": 0.25}))
    assert export._run_threshold(str(tmp_path)) == 0.25
    (tmp_path / "metrics.json").write_text(json.dumps({"lake_runs_accuracy": 0.9}))
    assert export._run_threshold(str(tmp_path)) == export.DEFAULT_THRESHOLD
    assert export._run_threshold(str(tmp_path / "model.keras")) == export.DEFAULT_THRESHOLD
