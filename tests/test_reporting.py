"""Tests for keras_siamese.reporting: what is refused before a network is reported or exported."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ORL_DIR

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


# --- A folder of the user's classes -------------------------------------------------------



@pytest.fixture(scope="module")
def orl_splits(tmp_path_factory):
    """The ORL faces at 28x28, split 24/8/8 people with seed 0."""
    from keras_siamese.data import folder

    faces = folder.read_image_folder(
        ORL_DIR, image_size=28, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False
    )
    return folder.apply_split(faces, folder.split_classes(faces, seed=0))


def test_settings_are_fitted_to_a_small_folder_unless_told(orl_splits, capsys):
    from keras_siamese.config import preset

    config = preset("folder")
    fitted = reporting.fit_to_folder(config, orl_splits)
    # 8 people in validation and test; 10 photographs each leave 5 shots and a query.
    assert (fitted.way, fitted.shots) == (8, 5)
    assert (fitted.batch_alphabets, fitted.batch_characters, fitted.batch_drawers) == (1, 16, 4)
    assert "way 20 -> 8" in capsys.readouterr().out
    assert reporting.fit_to_folder(fitted, orl_splits) == fitted  # a resumed run: no change
    assert reporting.fit_to_folder(config.replace(shots=12), orl_splits).shots == 9
    with pytest.raises(SystemExit, match="--way 20"):
        reporting.fit_to_folder(config, orl_splits, told=frozenset({"way"}))
    many = config.replace(batch_characters=40, batch_drawers=12)
    fitted = reporting.fit_to_folder(many, orl_splits)
    assert (fitted.batch_characters, fitted.batch_drawers) == (24, 10)
