"""The Siamese network of Koch et al. (2015).

One ``keras.Sequential`` twin CNN embeds both images of a pair; a
:class:`WeightedL1` layer compares the two embeddings and gives the paper's
prediction ``p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf
from keras import ops

from keras_siamese.config import ModelConfig

# The starting bias of a monotone head: two identical embeddings are "same" with
# probability 0.99.
MONOTONE_HEAD_BIAS = math.log(0.99 / 0.01)


def layer_names(config: ModelConfig) -> list[str]:
    """Names of the weighted layers, in order: ``conv1``.., ``dense``, ``weighted_l1``.

    The per-layer optimiser settings and L2 factors are keyed by them.
    """
    return [f"conv{i + 1}" for i in range(len(config.filters))] + ["dense", "weighted_l1"]


def _initialisers(config: ModelConfig):
    """Fresh (conv, dense, bias) initialisers for one layer.

    Called once per layer: a Keras initialiser instance returns the same
    values each time it is called, so sharing one would start every layer
    from the same random numbers.
    """
    if config.paper_init:
        conv = keras.initializers.RandomNormal(0.0, 1e-2)
        dense = keras.initializers.RandomNormal(0.0, 2e-1)
        bias = keras.initializers.RandomNormal(0.5, 1e-2)
        return conv, dense, bias
    return "glorot_uniform", "glorot_uniform", "zeros"


@keras.saving.register_keras_serializable(package="keras_siamese")
class NonPositive(keras.constraints.Constraint):
    """Keeps a weight at or below zero after each optimiser step (``keras.constraints.NonNeg``
    mirrored): the head's ``alpha`` under ``ModelConfig.monotone_head``."""

    def __call__(self, w):
        return ops.minimum(w, ops.zeros_like(w))


@keras.saving.register_keras_serializable(package="keras_siamese")
class WeightedL1(keras.layers.Layer):
    """The paper's head: a trainable weighted L1 distance and a sigmoid.

    Given two embeddings ``h1, h2`` of size ``d`` it returns
    ``activation(sum_j alpha_j |h1_j - h2_j| + bias)`` with shape ``(N, 1)``:
    the ``d + 1`` weights of a ``Dense(1, sigmoid)`` over ``|h1 - h2|``.
    The distance is symmetric, so ``p(a, b) == p(b, a)`` exactly.

    It runs in float32 under mixed precision so that the probability (and the
    loss computed from it) keeps full precision.

    ``alpha_constraint``: a ``keras.constraints`` constraint on ``alpha``, such as
    :class:`NonPositive`, which makes the probability fall as any component of the
    distance grows.
    """

    def __init__(
        self,
        activation: str | None = "sigmoid",
        alpha_initializer="glorot_uniform",
        bias_initializer="zeros",
        alpha_regularizer=None,
        alpha_constraint=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)

    def build(self, input_shape):
        left_shape, right_shape = input_shape
        if tuple(left_shape[1:]) != tuple(right_shape[1:]):
            raise ValueError(f"embeddings differ in shape: {left_shape} vs {right_shape}")
        self.alpha = self.add_weight(
            name="alpha",
            shape=(left_shape[-1], 1),
            initializer=self.alpha_initializer,
            regularizer=self.alpha_regularizer,
            constraint=self.alpha_constraint,
        )
        if self.alpha_constraint is not None:
            # Start within the constraint, as every optimiser step leaves it.
            self.alpha.assign(self.alpha_constraint(self.alpha))
        self.bias = self.add_weight(name="bias", shape=(1,), initializer=self.bias_initializer)

    def distance_logits(self, left, right):
        """The pre-activation ``sum_j alpha_j |left_j - right_j| + bias``.

        Broadcasts over leading dimensions, so a ``(Q, 1, d)`` query batch
        against ``(1, K, d)`` candidates gives ``(Q, K, 1)`` logits.
        """
        return ops.matmul(ops.abs(left - right), self.alpha) + self.bias

    def call(self, inputs):
        left, right = inputs
        return self.activation(self.distance_logits(left, right))

    def pairwise(self, queries, support):
        """Probabilities of every (query, support) pair: ``(Q, d), (K, d) -> (Q, K)``.

        The head only compares embeddings, so an N-way one-shot task needs each
        image embedded once and then ``Q * K`` cheap head evaluations.
        """
        queries = ops.cast(queries, self.compute_dtype)
        support = ops.cast(support, self.compute_dtype)
        logits = self.distance_logits(queries[:, None, :], support[None, :, :])
        return self.activation(logits)[..., 0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(
            activation=keras.activations.serialize(self.activation),
            alpha_initializer=keras.initializers.serialize(self.alpha_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            alpha_regularizer=keras.regularizers.serialize(self.alpha_regularizer),
            alpha_constraint=keras.constraints.serialize(self.alpha_constraint),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_siamese")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Keras 3 normalises with separate TensorFlow ops (moments, subtract, scale,
    shift, each with its gradient; keras-team/keras-core#225), which take a
    large share of a mixed bfloat16 ``cpu`` training step on a CPU.
    ``tf.nn.fused_batch_norm`` does the same in one oneDNN kernel, which
    grappler also fuses with the ReLU that follows (and, for inference, into
    the convolution before it), so a step is faster and more epochs fit in the
    presets' time limits (docs/benchmarks.md, "Batch normalisation";
    docs/ablations.md, "Batch normalisation").

    The layer has the same weights, config and moving statistics as Keras's
    (the biased batch variance, as Keras keeps). It takes the fused path for
    channels-last 4-D inputs without a mask, the case the twin CNN has, and
    leaves everything else (masks, renormalisation, synchronised statistics,
    float64, another backend) to Keras's layer.
    """

    def get_config(self) -> dict:
        # Synchronised statistics belong to the strategy a network trains under, not to the
        # network: a saved one normalises alike, and fused, wherever it is loaded.
        return {**super().get_config(), "synchronized": False}

    def _fusable(self, inputs, mask) -> bool:
        rank = len(inputs.shape)
        return (
            keras.backend.backend() == "tensorflow"
            and rank == 4
            and self.axis in (-1, rank - 1)
            and self.compute_dtype in ("float32", "bfloat16", "float16")
            and mask is None
            and self.center
            and self.scale
            and not self.renorm
            and not self.synchronized
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # The kernel takes float32, float16 or bfloat16 activations and
        # float32 statistics, so the activations are not upcast as Keras does.
        inputs = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased (n - 1) batch variance; Keras's moving
            # variance averages the biased one.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], "float32")
            variance = variance * (count - 1.0) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                self.gamma,
                self.beta,
                mean=self.moving_mean,
                variance=self.moving_variance,
                epsilon=self.epsilon,
                is_training=False,
            )
        return outputs


def build_twin(
    config: ModelConfig = ModelConfig(), *, synchronized_batch_norm: bool = False
) -> keras.Sequential:
    """The twin CNN: conv-relu-maxpool blocks, flatten, (dropout,) dense sigmoid.

    Paper (Fig. 4): 64@10x10, 128@7x7, 128@4x4 each followed by 2x2 max-pool,
    then 256@4x4, flatten and a 4096-unit sigmoid layer.

    ``synchronized_batch_norm``: batch statistics over the whole global batch of a
    ``tf.distribute`` strategy's replicas rather than each replica's share of it.
    """
    dtype = "mixed_bfloat16" if config.mixed_precision else "float32"
    layers: list[keras.layers.Layer] = [
        keras.Input((config.image_size, config.image_size, config.channels), name="image")
    ]
    last = len(config.filters) - 1
    for i, (filters, kernel) in enumerate(zip(config.filters, config.kernel_sizes)):
        conv_init, _, bias_init = _initialisers(config)
        layers.append(
            keras.layers.Conv2D(
                filters,
                kernel,
                padding=config.padding,
                activation=None if config.batch_norm else "relu",
                kernel_initializer=conv_init,
                bias_initializer=bias_init,
                kernel_regularizer=keras.regularizers.L2(config.l2[i]) if config.l2[i] else None,
                use_bias=not config.batch_norm,
                dtype=dtype,
                name=f"conv{i + 1}",
            )
        )
        if config.batch_norm:
            layers.append(FusedBatchNormalization(
                momentum=config.batch_norm_momentum,
                synchronized=synchronized_batch_norm,
                dtype=dtype,
                name=f"bn{i + 1}",
            ))
            layers.append(keras.layers.Activation("relu", dtype=dtype, name=f"relu{i + 1}"))
        if i != last:
            layers.append(keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i + 1}"))
    dense_l2 = config.l2[len(config.filters)]
    _, dense_init, bias_init = _initialisers(config)
    layers += [
        keras.layers.Flatten(dtype=dtype, name="flatten"),
        *([keras.layers.Dropout(config.dropout, dtype=dtype, name="dropout")]
          if config.dropout else []),
        keras.layers.Dense(
            config.dense_units,
            activation="sigmoid",
            kernel_initializer=dense_init,
            bias_initializer=bias_init,
            kernel_regularizer=keras.regularizers.L2(dense_l2) if dense_l2 else None,
            dtype=dtype,
            name="dense",
        ),
    ]
    return keras.Sequential(layers, name="twin")


def build_siamese(
    config: ModelConfig = ModelConfig(), *, synchronized_batch_norm: bool = False
) -> keras.Model:
    """The Siamese network: one shared twin applied to ``left`` and ``right``.

    Returns a functional model taking ``{"left": x1, "right": x2}`` (each
    ``(N, S, S, C)`` float32, ink = 1) and returning the float32 probability
    ``(N, 1)`` that both images show the same character. ``synchronized_batch_norm``:
    see :func:`build_twin`.
    """
    size = config.image_size
    if config.padding == "valid":
        # Each valid conv shrinks by k - 1 and each pool halves; the last conv
        # must still see at least one pixel.
        side = size
        for i, k in enumerate(config.kernel_sizes):
            side -= k - 1
            if i != len(config.kernel_sizes) - 1:
                side //= 2
        if side < 1:
            raise ValueError(f"image_size {size} is too small for 'valid' padding")
    twin = build_twin(config, synchronized_batch_norm=synchronized_batch_norm)
    left = keras.Input((size, size, config.channels), name="left")
    right = keras.Input((size, size, config.channels), name="right")
    head_l2 = config.l2[-1]
    _, dense_init, bias_init = _initialisers(config)
    if config.monotone_head:
        # The bias is then the logit of two identical embeddings; starting it at
        # MONOTONE_HEAD_BIAS spares training the long climb to it at the optimiser's
        # pace, a step of about the learning rate.
        bias_init = keras.initializers.Constant(MONOTONE_HEAD_BIAS)
    head = WeightedL1(
        alpha_initializer=dense_init,
        bias_initializer=bias_init,
        alpha_regularizer=keras.regularizers.L2(head_l2) if head_l2 else None,
        alpha_constraint=NonPositive() if config.monotone_head else None,
        name="weighted_l1",
    )
    probability = head([twin(left), twin(right)])
    return keras.Model({"left": left, "right": right}, probability, name="siamese")


class AllPairs(keras.layers.Layer):
    """The probability of every pair within groups of embeddings: ``(B, d) -> (G, B/G, B/G)``.

    The batch is cut into ``groups`` equal consecutive groups and every pair
    within a group is scored (one group: every pair of the batch). It holds no
    weights of its own: it applies a :class:`WeightedL1` head, with its weights.
    """

    def __init__(self, head: WeightedL1, groups: int = 1, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.head = head
        self.groups = groups
        # The G x n x n x d distances are the costly part; XLA fuses the broadcast,
        # abs and weighted sum (and their gradients) into one pass, faster on a CPU
        # than the separate TensorFlow ops (docs/ablations.md, "Pair sampling").
        self._pairwise = tf.function(self._group_pairs, jit_compile=True)

    def _group_pairs(self, embeddings):
        grouped = ops.reshape(embeddings, (self.groups, -1, ops.shape(embeddings)[-1]))
        logits = self.head.distance_logits(grouped[:, :, None, :], grouped[:, None, :, :])
        return self.head.activation(logits)[..., 0]

    def call(self, embeddings):
        return self._pairwise(ops.cast(embeddings, self.head.compute_dtype))

    def compute_output_shape(self, input_shape):
        n = None if input_shape[0] is None else input_shape[0] // self.groups
        return (self.groups, n, n)


def build_all_pairs_trainer(siamese: keras.Model, groups: int = 1) -> keras.Model:
    """A training view of ``siamese`` that scores every pair of a batch of images.

    Takes ``(B, S, S, C)`` images and returns the ``(G, n, n)`` probabilities
    that images ``i`` and ``j`` of group ``g`` (images ``g n .. g n + n - 1``,
    ``n = B / G``) show the same character; ``groups=1`` pairs the whole batch.
    It shares the twin and the head of ``siamese``, so fitting it trains
    ``siamese``: each batch costs ``B`` twin passes for ``G n (n - 1) / 2``
    distinct pairs, where the paper's pair batches cost two passes per pair.
    """
    images = keras.Input(siamese.input["left"].shape[1:], name="images")
    pairs = AllPairs(head_of(siamese), groups, name="all_pairs")
    return keras.Model(images, pairs(twin_of(siamese)(images)), name="siamese_all_pairs")


def build_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """An ensemble of trained Siamese models: the mean of their probabilities.

    A functional model with the same ``{"left", "right"}`` inputs as each member
    and a ``keras.layers.Average`` of the members' outputs. The members are
    renamed ``member1``, ``member2``, ... (a Keras model needs unique layer
    names); their weights are shared, not copied. A one-shot task is scored as
    the mean of the members' scores (``siamese_members``), each member
    embedding every image once.

    An ensemble among ``members`` contributes its own members: ensembles nest flat.

    Raises:
        ValueError: no members, or members with different input shapes.
    """
    members = [member for model in members for member in siamese_members(model)]
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(member.input["left"].shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different image shapes: {sorted(shapes)}")
    shape = shapes.pop()
    left = keras.Input(shape, name="left")
    right = keras.Input(shape, name="right")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member{i + 1}"
        outputs.append(member({"left": left, "right": right}))
    probability = keras.layers.Average(dtype="float32", name="average")(outputs)
    return keras.Model({"left": left, "right": right}, probability, name="ensemble")


def siamese_members(model: keras.Model) -> list[keras.Model]:
    """The Siamese models that make up ``model``: itself, or an ensemble's members."""
    if any(layer.name == "twin" for layer in model.layers):
        return [model]
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not members:
        raise ValueError(f"{model.name!r} is neither a Siamese model nor an ensemble of them")
    return members


def load_trained(path: str | Path) -> keras.Model:
    """The model in a ``.keras`` file, or in a run folder's ``best.keras``.

    Raises:
        FileNotFoundError: there is no such file.
        files.UnreadableFileError: the file is truncated or corrupt.
    """
    from keras_siamese import files

    path = Path(path)
    if path.is_dir():
        path = path / "best.keras"
    return files.load_keras_model(path)


def load_models(paths: Sequence[str | Path]) -> keras.Model:
    """The model at one path (``load_trained``), or the ensemble of the models at several.

    Raises:
        FileNotFoundError: a path holds no model.
    """
    models = [load_trained(path) for path in paths]
    return models[0] if len(models) == 1 else build_ensemble(models)


def non_finite_weights(model: keras.Model) -> list[tuple[str, int, int]]:
    """The floating-point variables of ``model`` holding NaN or infinity: for each, its path,
    how many of its values are not finite, and how many values it has."""
    import numpy as np

    found = []
    for variable in model.variables:
        if not np.issubdtype(np.dtype(variable.dtype), np.floating):
            continue
        values = np.asarray(variable.numpy(), np.float32)
        bad = int(values.size - np.isfinite(values).sum())
        if bad:
            found.append((variable.path, bad, values.size))
    return found


def twin_of(model: keras.Model) -> keras.Sequential:
    """The shared twin CNN inside a Siamese model."""
    return model.get_layer("twin")


def head_of(model: keras.Model) -> WeightedL1:
    """The weighted-L1 head inside a Siamese model."""
    return model.get_layer("weighted_l1")
