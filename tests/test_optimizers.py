"""Tests for keras_siamese.optimizers.LayerwiseSGD and training.make_optimizer."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest

from keras_siamese import config as config_module
from keras_siamese.optimizers import LayerwiseSGD
from keras_siamese.training import make_optimizer


def _layers(*names: str) -> list[keras.layers.Dense]:
    """Built Dense layers whose kernels have paths `<name>/kernel`."""
    layers = []
    for i, name in enumerate(names):
        layer = keras.layers.Dense(3, name=name, kernel_initializer=keras.initializers.Constant(i + 1.0))
        layer.build((None, 2))
        layers.append(layer)
    return layers


GRADIENTS = [
    np.array([[0.5, -1.0, 2.0], [0.25, 0.0, -3.0]], np.float32),
    np.array([[1.5, 1.0, -2.0], [-0.75, 4.0, 0.5]], np.float32),
]


def test_first_step_uses_each_layers_learning_rate():
    a, b, c = _layers("a", "b", "c")
    variables = [a.kernel, b.kernel, c.kernel]
    before = [v.numpy().copy() for v in variables]
    lr = 0.1
    optimizer = LayerwiseSGD(lr, layer_multipliers={"a": 0.0, "b": 3.0}, layer_momenta={"a": 0.9})
    grads = [GRADIENTS[0], GRADIENTS[1], GRADIENTS[0]]
    optimizer.apply(grads, variables)
    # Zero initial velocity: v = -(lr * factor) * g and w += v, exactly (in float32).
    def step(w, factor, g):
        return w + -(g * (np.float32(lr) * np.float32(factor)))

    np.testing.assert_array_equal(a.kernel.numpy(), before[0])
    np.testing.assert_array_equal(b.kernel.numpy(), step(before[1], 3.0, grads[1]))
    np.testing.assert_array_equal(c.kernel.numpy(), step(before[2], 1.0, grads[2]))  # default 1
    assert not np.array_equal(b.kernel.numpy(), before[1])
    assert int(optimizer.iterations.numpy()) == 1


def test_second_step_uses_each_layers_ramped_momentum():
    a, b = _layers("a", "b")
    variables = [a.kernel, b.kernel]
    lr, ramp = 0.05, 4
    momenta = {"a": 0.9, "b": 0.7}
    optimizer = LayerwiseSGD(
        lr, layer_momenta=momenta, initial_momentum=0.5, momentum_ramp_steps=ramp
    )
    start = [v.numpy().copy() for v in variables]
    optimizer.apply([GRADIENTS[0]] * 2, variables)
    optimizer.apply([GRADIENTS[1]] * 2, variables)
    for variable, w0, name in zip(variables, start, ("a", "b")):
        mu = 0.5 + (momenta[name] - 0.5) * 1 / ramp  # momentum after one update
        v1 = -lr * GRADIENTS[0]
        v2 = mu * v1 - lr * GRADIENTS[1]
        np.testing.assert_allclose(variable.numpy(), w0 + v1 + v2, rtol=1e-5, atol=1e-7)


def test_momentum_can_ramp_up_from_zero():
    """initial_momentum=0 is plain SGD at step 0, rising to each layer's final momentum."""
    (a,) = _layers("a")
    w0 = a.kernel.numpy().copy()
    lr = 0.1
    optimizer = LayerwiseSGD(lr, layer_momenta={"a": 0.9}, initial_momentum=0.0, momentum_ramp_steps=2)
    optimizer.apply([GRADIENTS[0]], [a.kernel])
    optimizer.apply([GRADIENTS[1]], [a.kernel])
    v1 = -lr * GRADIENTS[0]
    v2 = 0.45 * v1 - lr * GRADIENTS[1]  # momentum 0 + (0.9 - 0) * 1/2 after one update
    np.testing.assert_allclose(a.kernel.numpy(), w0 + v1 + v2, rtol=1e-5, atol=1e-7)


def test_momentum_ramps_linearly():
    optimizer = LayerwiseSGD(0.01, initial_momentum=0.5, momentum_ramp_steps=10)
    for step, expected in [(0, 0.5), (1, 0.54), (5, 0.7), (10, 0.9), (11, 0.9), (1000, 0.9)]:
        assert float(optimizer.momentum_at(step, 0.9)) == pytest.approx(expected, abs=1e-6)
    assert float(optimizer.momentum_at(5, 0.5)) == pytest.approx(0.5)
    no_ramp = LayerwiseSGD(0.01, momentum_ramp_steps=0)
    assert float(no_ramp.momentum_at(0, 0.95)) == pytest.approx(0.95)


def test_config_round_trip():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.99, staircase=True)
    optimizer = LayerwiseSGD(
        schedule,
        layer_multipliers={"conv1": 0.5, "dense": 2.0},
        layer_momenta={"conv1": 0.8, "dense": 0.95},
        initial_momentum=0.4,
        momentum_ramp_steps=30,
    )
    config = optimizer.get_config()
    original = copy.deepcopy(config)
    assert "momentum" not in config and "nesterov" not in config
    for restored in (
        LayerwiseSGD.from_config(copy.deepcopy(config)),
        keras.optimizers.deserialize(keras.optimizers.serialize(optimizer)),
    ):
        assert isinstance(restored, LayerwiseSGD)
        assert restored.layer_multipliers == {"conv1": 0.5, "dense": 2.0}
        assert restored.layer_momenta == {"conv1": 0.8, "dense": 0.95}
        assert restored.initial_momentum == 0.4
        assert restored.momentum_ramp_steps == 30
        assert restored.get_config() == original
        restored.iterations.assign(250)
        assert float(restored.learning_rate) == pytest.approx(0.01 * 0.99**2)


def test_koch2015_decays_one_percent_per_epoch():
    config = config_module.preset("koch2015")
    optimizer = make_optimizer(config)
    assert isinstance(optimizer, LayerwiseSGD)
    steps = config.steps_per_epoch
    assert steps == 1172
    for step, epochs in [(0, 0), (steps - 1, 0), (steps, 1), (2 * steps - 1, 1), (10 * steps, 10)]:
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(0.01 * 0.99**epochs, rel=1e-6)
    assert optimizer.momentum_ramp_steps == 20 * steps
    names = ["conv1", "conv2", "conv3", "conv4", "dense", "weighted_l1"]
    assert optimizer.layer_multipliers == dict(zip(names, config.layer_lr_multipliers))
    assert optimizer.layer_momenta == dict(zip(names, config.final_momenta))


def test_make_optimizer_adam_and_unknown():
    config = config_module.preset("cpu")
    assert isinstance(make_optimizer(config), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(config.replace(optimizer="rmsprop"))


def test_layerwise_settings_reach_a_siamese_models_variables(small_config):
    """In a real model, the paths twin/conv1/kernel etc. select the per-layer factors."""
    from keras_siamese.model import build_siamese, layer_names

    model_config = small_config(paper_init=False)
    model = build_siamese(model_config)
    names = layer_names(model_config)
    factors = dict(zip(names, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))  # only the head learns
    optimizer = LayerwiseSGD(0.1, layer_multipliers=factors)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    grads = [np.ones(v.shape, np.float32) for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    for v in model.trainable_variables:
        moved = not np.array_equal(v.numpy(), before[v.path])
        assert moved == v.path.startswith("weighted_l1/"), v.path
