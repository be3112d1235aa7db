"""The paper's optimiser: SGD with a learning rate and momentum per layer."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_siamese")
class LayerwiseSGD(keras.optimizers.SGD):
    """SGD with momentum, with a learning rate and momentum for each layer.

    Koch et al. give every layer ``j`` its own learning rate ``eta_j`` and
    momentum ``mu_j``; momentum starts at ``initial_momentum`` and rises
    linearly to ``mu_j`` over ``momentum_ramp_steps``. Keras optimisers have one
    rate for all variables, so this subclass keeps a per-variable learning-rate
    multiplier and final momentum, matched by the layer name in the
    variable's path (``twin/conv1/kernel`` belongs to ``conv1``). The base
    ``learning_rate`` (a float or a schedule, e.g. the paper's 1% decay per
    epoch) is multiplied by the layer's factor.

    Args:
        learning_rate: base learning rate or schedule.
        layer_multipliers: layer name -> learning-rate factor (default 1).
        layer_momenta: layer name -> final momentum (default ``initial_momentum``).
        initial_momentum: momentum of every layer at step 0.
        momentum_ramp_steps: steps to reach the final momenta (0: at once).
    """

    def __init__(
        self,
        learning_rate=0.01,
        layer_multipliers: dict[str, float] | None = None,
        layer_momenta: dict[str, float] | None = None,
        initial_momentum: float = 0.5,
        momentum_ramp_steps: int = 0,
        name: str = "layerwise_sgd",
        **kwargs,
    ):
        kwargs.pop("momentum", None)
        kwargs.pop("nesterov", None)
        super().__init__(learning_rate=learning_rate, momentum=initial_momentum, name=name, **kwargs)
        self.layer_multipliers = dict(layer_multipliers or {})
        self.layer_momenta = dict(layer_momenta or {})
        self.initial_momentum = initial_momentum
        self.momentum_ramp_steps = momentum_ramp_steps

    def _layer_of(self, variable) -> str | None:
        parts = variable.path.split("/")
        for name in set(self.layer_multipliers) | set(self.layer_momenta):
            if name in parts:
                return name
        return None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if not self.momentums:  # SGD skips its slots when its momentum is 0
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        layers = [self._layer_of(v) for v in variables]
        self._lr_factors = [self.layer_multipliers.get(l, 1.0) for l in layers]
        self._final_momenta = [self.layer_momenta.get(l, self.initial_momentum) for l in layers]

    def momentum_at(self, step, final_momentum: float):
        """Momentum after ``step`` updates for a layer ending at ``final_momentum``."""
        if self.momentum_ramp_steps <= 0:
            return ops.convert_to_tensor(final_momentum, "float32")
        progress = ops.minimum(ops.cast(step, "float32") / self.momentum_ramp_steps, 1.0)
        return self.initial_momentum + (final_momentum - self.initial_momentum) * progress

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype) * self._lr_factors[index]
        momentum = ops.cast(self.momentum_at(self.iterations, self._final_momenta[index]), dtype)
        velocity = self.momentums[index]
        # v <- mu v - lr g ; w <- w + v   (the paper's update, sec. 3.3)
        self.assign(velocity, ops.subtract(ops.multiply(velocity, momentum), ops.multiply(gradient, lr)))
        self.assign_add(variable, velocity)

    def get_config(self):
        config = super().get_config()
        config.pop("momentum", None)
        config.pop("nesterov", None)
        config.update(
            layer_multipliers=self.layer_multipliers,
            layer_momenta=self.layer_momenta,
            initial_momentum=self.initial_momentum,
            momentum_ramp_steps=self.momentum_ramp_steps,
        )
        return config
