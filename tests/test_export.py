"""Tests for keras_siamese.export: SavedModels for TensorFlow Serving, loaded back without Keras."""

from __future__ import annotations

import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import export
from keras_siamese.model import build_siamese

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
def pairs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {side: rng.random((5, 28, 28, 1), dtype=np.float32) for side in ("left", "right")}


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
    assert served.shape == (5, 1) and served.dtype == np.float32
    np.testing.assert_allclose(served, model.predict(pairs, verbose=0), rtol=1e-5, atol=1e-6)


def test_saved_model_holds_one_copy_of_the_weights(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    saved_bytes = sum(p.stat().st_size for p in (target / "variables").glob("variables.data-*"))
    assert weight_bytes <= saved_bytes < 1.3 * weight_bytes


def test_saved_model_loads_in_process_and_accepts_any_batch(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "siamese")
    serving = tf.saved_model.load(str(target)).signatures["serving_default"]
    for n in (1, 3):
        x = tf.random.uniform((n, 28, 28, 1), seed=n)
        out = serving(left=x, right=x[::-1])["probability"]
        assert tuple(out.shape) == (n, 1)
        np.testing.assert_allclose(
            out.numpy(), model.predict({"left": x, "right": x[::-1]}, verbose=0), atol=1e-6
        )


def test_export_command_on_a_run_folder(trained_run, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python(
        "-m", "keras_siamese.export", run_dir, "--export-dir", tmp_path, "--name", "omniglot"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    target = tmp_path / "omniglot" / "1"
    assert str(target) in result.stdout
    assert export.versions(tmp_path / "omniglot") == [1]
    best = keras.models.load_model(run_dir / "best.keras")
    x = {side: np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32) for side in ("left", "right")}
    served = tf.saved_model.load(str(target)).signatures["serving_default"](
        left=tf.constant(x["left"]), right=tf.constant(x["right"])
    )["probability"]
    np.testing.assert_allclose(served.numpy(), best.predict(x, verbose=0), atol=1e-6)


def test_export_command_without_a_model(run_python, tmp_path):
    result = run_python("-m", "keras_siamese.export", tmp_path, "--export-dir", tmp_path / "out")
    assert result.returncode != 0
    assert f"no model at {tmp_path / 'best.keras'}" in result.stderr
    assert not (tmp_path / "out").exists()
