"""Tests for keras_siamese.model: the paper's architecture, the shared twin and the head."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import model as siamese_model
from keras_siamese.config import ModelConfig
from keras_siamese.model import WeightedL1, build_siamese, build_twin

PAPER_PARAMS = 38_951_745  # Koch et al. (2015), Fig. 4 at 105x105 with 'valid' padding


def _pairs(config: ModelConfig, n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images in the model's input range, two different batches."""
    rng = np.random.default_rng(seed)
    shape = (n, config.image_size, config.image_size, 1)
    return {
        "left": rng.random(shape, dtype=np.float32),
        "right": rng.random(shape, dtype=np.float32),
    }


@pytest.fixture(scope="module")
def paper_model() -> keras.Model:
    return build_siamese(ModelConfig())


@pytest.fixture(scope="module")
def paper_twin() -> keras.Sequential:
    return build_twin(ModelConfig())


# --- The paper's network -------------------------------------------------------------------


def test_paper_model_has_the_published_parameter_count(paper_model):
    assert paper_model.count_params() == PAPER_PARAMS
    assert tuple(paper_model.output.shape) == (None, 1)
    assert set(paper_model.input) == {"left", "right"}
    for name in ("left", "right"):
        assert tuple(paper_model.input[name].shape) == (None, 105, 105, 1)


def test_paper_twin_embeds_into_4096_units(paper_model):
    twin = siamese_model.twin_of(paper_model)
    assert tuple(twin.output.shape) == (None, 4096)
    x = np.zeros((2, 105, 105, 1), np.float32)
    assert tuple(twin(x).shape) == (2, 4096)
    # The head adds alpha (4096) and a bias to the twin's weights.
    assert paper_model.count_params() == twin.count_params() + 4096 + 1


def test_one_twin_is_shared_by_both_inputs(small_config):
    config = small_config(paper_init=False)
    model = build_siamese(config)
    twins = [layer for layer in model.layers if isinstance(layer, keras.Sequential)]
    assert len(twins) == 1 and twins[0] is siamese_model.twin_of(model)
    twin, head = twins[0], siamese_model.head_of(model)
    # Both inputs flow through the same layer object...
    assert len(twin._inbound_nodes) == 2
    inputs = {id(node.input_tensors[0]) for node in twin._inbound_nodes}
    assert inputs == {id(model.input["left"]), id(model.input["right"])}
    # ...so the weights exist once.
    assert len(model.weights) == len(twin.weights) + len(head.weights)
    assert model.count_params() == twin.count_params() + config.dense_units + 1

    # And the prediction is the head on the twin's embeddings of each input.
    x = _pairs(config)
    expected = head([twin(x["left"]), twin(x["right"])])
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    # Changing the twin's weights changes both branches: with conv1 zeroed (and its bias
    # kept), every image embeds the same way and all pairs look identical.
    conv1 = twin.get_layer("conv1")
    conv1.kernel.assign(np.zeros(conv1.kernel.shape, np.float32))
    embeddings = twin(np.concatenate([x["left"], x["right"]]))
    np.testing.assert_allclose(embeddings, np.broadcast_to(embeddings[:1], embeddings.shape), atol=1e-6)
    same = head.activation(head.bias)  # distance 0
    np.testing.assert_allclose(model.predict(x, verbose=0), np.full((6, 1), same), atol=1e-6)


def test_dropout_acts_while_training_only(small_config):
    config = small_config(paper_init=False, dropout=0.5)
    twin = siamese_model.twin_of(build_siamese(config))
    names = [layer.name for layer in twin.layers]
    assert names.index("dropout") == names.index("flatten") + 1
    images = _pairs(config)["left"]
    np.testing.assert_array_equal(twin(images, training=False), twin(images, training=False))
    assert not np.allclose(twin(images, training=True), twin(images, training=True))
    # Without dropout the twin has no such layer, and a training pass is deterministic.
    plain = build_twin(small_config(paper_init=False))
    assert "dropout" not in [layer.name for layer in plain.layers]
    np.testing.assert_array_equal(plain(images, training=True), plain(images, training=True))


def test_weighted_l1_is_symmetric(small_config):
    config = small_config(paper_init=False)
    model = build_siamese(config)
    x = _pairs(config, n=16)
    ab = model.predict(x, verbose=0)
    ba = model.predict({"left": x["right"], "right": x["left"]}, verbose=0)
    np.testing.assert_array_equal(ab, ba)
    assert ab.shape == (16, 1)
    assert np.all((ab > 0) & (ab < 1))
    assert np.ptp(ab) > 1e-4  # the pairs get different probabilities


def test_weighted_l1_computes_the_papers_formula():
    head = WeightedL1(name="head")
    rng = np.random.default_rng(1)
    h1, h2 = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
    p = keras.ops.convert_to_numpy(head([h1, h2]))
    alpha, bias = head.alpha.numpy(), head.bias.numpy()
    expected = 1 / (1 + np.exp(-(np.abs(h1 - h2) @ alpha + bias)))
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    assert p.shape == (5, 1)


def test_monotone_head_keeps_its_weights_at_or_below_zero(small_config, tmp_path):
    # Labels that reward distance: "same" for two different images, "different" for an
    # image and itself. A free head learns positive weights for them; a monotone one
    # cannot, and still learns (its bias falls).
    def train(monotone_head: bool) -> keras.Model:
        keras.utils.set_random_seed(0)
        config = small_config(paper_init=False, monotone_head=monotone_head)
        model = build_siamese(config)
        x = _pairs(config, n=32)
        x["right"][16:] = x["left"][16:]
        y = np.r_[np.ones(16), np.zeros(16)].astype(np.float32)[:, None]
        model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
        model.fit(x, y, epochs=5, batch_size=32, verbose=0)
        return model

    free = siamese_model.head_of(train(False))
    assert free.alpha.numpy().max() > 0
    model = train(True)
    head = siamese_model.head_of(model)
    assert head.alpha.numpy().max() <= 0
    assert head.bias.numpy()[0] < siamese_model.MONOTONE_HEAD_BIAS
    # A fresh monotone head starts within its constraint, with the bias of near-certainty.
    fresh = siamese_model.head_of(build_siamese(small_config(monotone_head=True)))
    assert fresh.alpha.numpy().max() <= 0 and fresh.alpha.numpy().min() < 0
    np.testing.assert_allclose(fresh.bias.numpy(), [siamese_model.MONOTONE_HEAD_BIAS])
    # The constraint is saved with the model.
    model.save(tmp_path / "monotone.keras")
    loaded = siamese_model.head_of(keras.models.load_model(tmp_path / "monotone.keras"))
    assert isinstance(loaded.alpha_constraint, siamese_model.NonPositive)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_keras_file_round_trip_in_safe_mode(small_config, tmp_path, batch_norm):
    config = small_config(paper_init=False, batch_norm=batch_norm, batch_norm_momentum=0.9)
    model = build_siamese(config)
    x = _pairs(config, n=8)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(siamese_model.head_of(loaded), WeightedL1)
    twins = [layer for layer in loaded.layers if isinstance(layer, keras.Sequential)]
    assert len(twins) == 1
    assert loaded.count_params() == model.count_params()
    fused = [
        layer
        for layer in twins[0].layers
        if isinstance(layer, siamese_model.FusedBatchNormalization)
    ]
    assert len(fused) == (len(config.filters) if batch_norm else 0)
    assert all(layer.momentum == 0.9 for layer in fused)  # the config's, not Keras's default


@pytest.mark.parametrize("size", [52, 64])
def test_valid_padding_rejects_small_images(size):
    with pytest.raises(ValueError, match=f"image_size {size}.*'valid' padding"):
        build_siamese(ModelConfig(image_size=size))


def test_config_checks_its_lengths():
    with pytest.raises(ValueError, match="same length"):
        ModelConfig(filters=(8, 16), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="l2 needs 6"):
        ModelConfig(l2=(0.0,) * 5)


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_config_checks_the_batch_norm_momentum(momentum):
    with pytest.raises(ValueError, match="batch_norm_momentum must be"):
        ModelConfig(batch_norm_momentum=momentum)


def test_config_checks_each_l2_factor():
    with pytest.raises(ValueError, match=r"l2\[4\] must be at least 0, got -1"):
        ModelConfig(l2=(0.0,) * 4 + (-1.0, 0.0))


# --- The paper's initialisation ------------------------------------------------------------


def test_paper_initialisers(paper_twin):
    for name in ("conv1", "conv2", "conv3", "conv4"):
        kernel, bias = (w.numpy() for w in paper_twin.get_layer(name).weights)
        assert abs(kernel.std() - 1e-2) < 5e-4, name
        assert abs(kernel.mean()) < 1e-3, name
        assert abs(bias.mean() - 0.5) < 5e-3, name
        assert 5e-3 < bias.std() < 1.5e-2, name
    kernel, bias = (w.numpy() for w in paper_twin.get_layer("dense").weights)
    assert abs(kernel.std() - 0.2) < 2e-3
    assert abs(kernel.mean()) < 2e-3
    assert abs(bias.mean() - 0.5) < 2e-3
    assert abs(bias.std() - 1e-2) < 1e-3


def test_paper_initialisers_draw_each_layer_independently(paper_twin):
    """Each layer's initial weights are fresh draws, not copies of another layer's.

    A single seeded initialiser shared by all layers returns the same numbers for the
    same shape (and the same leading numbers for a bigger shape), so e.g. conv2 and conv3
    would start with identical biases.
    """
    weights = {w.path: w.numpy().ravel() for w in paper_twin.weights}
    copies = [
        f"{name_a} ~ {name_b}"
        for (name_a, a), (name_b, b) in itertools.combinations(weights.items(), 2)
        if np.allclose(a[: min(len(a), len(b))], b[: min(len(a), len(b))])
    ]
    assert not copies, f"weights starting with the same values: {copies}"


def test_keras_initialisers_when_not_paper(small_config):
    twin = build_twin(small_config(paper_init=False))
    for layer in ("conv1", "dense"):
        np.testing.assert_array_equal(twin.get_layer(layer).bias.numpy(), 0.0)


# --- Mixed precision -----------------------------------------------------------------------


def test_mixed_precision_head_stays_float32(small_config):
    config = small_config(mixed_precision=True, filters=(4, 4, 4, 4), dense_units=8)
    model = build_siamese(config)
    twin, head = siamese_model.twin_of(model), siamese_model.head_of(model)
    assert twin.get_layer("conv1").compute_dtype == "bfloat16"
    assert twin.get_layer("conv1").kernel.dtype == "float32"  # weights stay float32
    assert head.compute_dtype == "float32"
    x = _pairs(config, n=2)
    p = model(x, training=False)
    assert keras.backend.standardize_dtype(p.dtype) == "float32"
    assert tuple(p.shape) == (2, 1)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(p)))


@pytest.mark.parametrize("groups", [1, 3])
def test_all_pairs_trainer_scores_every_pair_with_the_shared_weights(small_config, groups):
    model = build_siamese(small_config(paper_init=False))
    trainer = siamese_model.build_all_pairs_trainer(model, groups)
    # One twin and one head: the trainer adds no weights of its own.
    assert {id(w) for w in trainer.weights} == {id(w) for w in model.weights}
    x = _pairs(small_config(paper_init=False))["left"]  # 6 images
    matrix = np.asarray(trainer.predict(x, verbose=0, batch_size=len(x)))
    n = len(x) // groups
    assert matrix.shape == (groups, n, n) and matrix.dtype == np.float32
    for g in range(groups):
        block = x[g * n:(g + 1) * n]
        left = np.repeat(block, n, axis=0)
        right = np.tile(block, (n, 1, 1, 1))
        pairs = model.predict({"left": left, "right": right}, verbose=0).reshape(n, n)
        np.testing.assert_allclose(matrix[g], pairs, rtol=1e-5, atol=1e-6)


# --- Ensembles -----------------------------------------------------------------------------


def test_an_ensemble_is_the_mean_of_its_members(small_config):
    config = small_config(paper_init=False)
    members = [build_siamese(config) for _ in range(3)]
    x = _pairs(config)
    expected = np.mean([np.asarray(m(x, training=False)) for m in members], axis=0)
    ensemble = siamese_model.build_ensemble(members)
    np.testing.assert_allclose(np.asarray(ensemble(x, training=False)), expected, atol=1e-6)
    # Its members keep their weights (shared, not copied) under unique names.
    assert siamese_model.siamese_members(ensemble) == members
    assert [m.name for m in members] == ["member1", "member2", "member3"]
    assert {id(w) for w in ensemble.weights} == {id(w) for m in members for w in m.weights}
    assert siamese_model.siamese_members(members[0]) == [members[0]]


def test_an_ensemble_saves_and_loads_whole(small_config, tmp_path):
    config = small_config(paper_init=False)
    ensemble = siamese_model.build_ensemble([build_siamese(config) for _ in range(2)])
    ensemble.save(tmp_path / "best.keras")
    loaded = siamese_model.load_trained(tmp_path)  # a folder means its best.keras
    x = _pairs(config)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(ensemble(x)), atol=1e-6)
    members = siamese_model.siamese_members(loaded)
    assert len(members) == 2
    assert all(isinstance(siamese_model.head_of(m), WeightedL1) for m in members)
    # An ensemble of the loaded ensemble and one more network has three members, not two.
    third = build_siamese(config)
    larger = siamese_model.build_ensemble([loaded, third])
    assert siamese_model.siamese_members(larger) == [*members, third]
    expected = (2 * np.asarray(loaded(x)) + np.asarray(third(x))) / 3
    np.testing.assert_allclose(np.asarray(larger(x)), expected, atol=1e-6)


def test_an_ensemble_needs_members_of_one_input_size(small_config):
    with pytest.raises(ValueError, match="at least one member"):
        siamese_model.build_ensemble([])
    small, large = small_config(paper_init=False), small_config(paper_init=False, image_size=32)
    with pytest.raises(ValueError, match=r"different image shapes: \[\(28, 28, 1\), \(32, 32, 1\)\]"):
        siamese_model.build_ensemble([build_siamese(small), build_siamese(large)])
    with pytest.raises(ValueError, match="neither a Siamese model nor an ensemble"):
        siamese_model.siamese_members(build_twin(small))


def test_load_trained_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no model at {tmp_path / 'best.keras'}"):
        siamese_model.load_trained(tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras_batch_norm(dtype):
    """Same outputs, gradients and moving statistics as Keras's layer, in training and inference."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 2.0, (8, 6, 6, 5)), "float32")
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, dtype=dtype)
    fused_bn = siamese_model.FusedBatchNormalization(momentum=0.9, dtype=dtype)
    keras_bn.build(x.shape)
    fused_bn.build(x.shape)
    gamma, beta = rng.uniform(0.5, 2.0, 5), rng.normal(0.0, 1.0, 5)
    for layer in (keras_bn, fused_bn):  # trained-looking weights, so a mix-up shows
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == "mixed_bfloat16" else dict(rtol=1e-4, atol=1e-4)
    upstream = tf.constant(rng.normal(0.0, 1.0, x.shape), "float32")

    def train(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    (y_keras, grads_keras), (y_fused, grads_fused) = train(keras_bn), train(fused_bn)
    assert y_fused.dtype == y_keras.dtype
    np.testing.assert_allclose(np.float32(y_fused), np.float32(y_keras), **tol)
    for fused, expected in zip(grads_fused, grads_keras):
        np.testing.assert_allclose(np.float32(fused), np.float32(expected), **tol)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            getattr(fused_bn, name).numpy(), getattr(keras_bn, name).numpy(), rtol=1e-3, atol=1e-3
        )
    assert not np.allclose(fused_bn.moving_variance.numpy(), 1.0)  # they did move
    np.testing.assert_allclose(
        np.float32(fused_bn(x, training=False)), np.float32(keras_bn(x, training=False)), **tol
    )


def test_fused_batch_norm_leaves_other_inputs_to_keras():
    """A 2-D input (no fused kernel for it) is normalised exactly as Keras's layer does."""
    x = np.random.default_rng(1).normal(3.0, 2.0, (16, 4)).astype("float32")
    fused = siamese_model.FusedBatchNormalization()
    expected = keras.layers.BatchNormalization()
    np.testing.assert_allclose(fused(x, training=True), expected(x, training=True), rtol=1e-6)
    np.testing.assert_allclose(fused.moving_mean.numpy(), expected.moving_mean.numpy(), rtol=1e-6)


def test_a_colour_network_takes_three_channels_and_others_are_refused(small_config):
    from keras_siamese.config import ModelConfig

    colour = build_siamese(small_config(channels=3))
    assert colour.input["left"].shape[1:] == (28, 28, 3)
    with pytest.raises(ValueError, match=r"channels must be one of \(1, 3\)"):
        ModelConfig(channels=2)
