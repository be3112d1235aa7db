"""Tests for keras_siamese.reporting: what is refused before a network is reported or exported."""

from __future__ import annotations

import numpy as np
import pytest

from keras_siamese import reporting
from keras_siamese.model import build_siamese


@pytest.fixture(scope="module")
def model(small_config):
    return build_siamese(small_config(paper_init=False))


def test_a_network_with_nan_weights_is_refused(model):
    weights = model.get_weights()
    broken = [w.copy() for w in weights]
    broken[0].flat[0] = np.nan
    model.set_weights(broken)
    try:
        with pytest.raises(reporting.RefusedModelError, match="1 NaN or infinite weights"):
            reporting.check_trained(model, 0.9, way=20, tasks=3200)
    finally:
        model.set_weights(weights)


@pytest.mark.parametrize(
    "best_val, tasks, refused",
    [(0.061, 3200, True), (0.07, 3200, False), (0.08, 320, True), (0.09, 320, False),
     (0.0, 20, False), (float("nan"), 20, True), (None, 3200, True)],
)  # fmt: skip
def test_a_network_at_chance_is_refused_where_validation_can_tell(model, best_val, tasks, refused):
    if refused:
        with pytest.raises(reporting.RefusedModelError, match="not evaluated or exported"):
            reporting.check_trained(model, best_val, way=20, tasks=tasks)
    else:
        reporting.check_trained(model, best_val, way=20, tasks=tasks)
