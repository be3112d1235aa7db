"""SavedModels end to end: the export command, `saved_model_cli`, a SavedModel served by
TensorFlow alone in a fresh process, and Lake's 400 trials scored through the exported
signatures exactly as offline."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import keras_probabilities

from keras_siamese import evaluation, export
from keras_siamese.model import build_ensemble, build_siamese

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(small_config) -> keras.Model:
    return build_siamese(small_config(paper_init=False))


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


def _served(run_python, model_dir, pairs, tmp_path) -> tuple[np.ndarray, dict]:
    np.savez(tmp_path / "inputs.npz", **pairs)
    result = run_python("-c", SERVE, model_dir, tmp_path / "inputs.npz", tmp_path / "outputs.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return np.load(tmp_path / "outputs.npy"), info


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
    np.testing.assert_allclose(served, keras_probabilities(model, pairs), rtol=1e-5, atol=1e-6)


def test_export_command_on_a_run_folder(trained_run, lake_runs, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python(
        "-m", "keras_siamese.export", run_dir, "--export-dir", tmp_path, "--name", "omniglot",
        "--tta-views", "2", "--tta-symmetries", "1", "--max-images", "64", "--max-pairs", "400",
        "--max-gallery", "5000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    target = tmp_path / "omniglot" / "1"
    limits = tf.saved_model.load(str(target)).signatures["limits"]()
    assert {k: int(v) for k, v in limits.items()} == {
        "max_pixels": export.ExportLimits().max_pixels, "max_images": 64, "max_pairs": 400,
        "max_gallery": 5000,
    }  # fmt: skip
    # An Omniglot run chooses no threshold: the export's default.
    info = tf.saved_model.load(str(target)).signatures["model_info"]()
    assert float(info["threshold"]) == export.DEFAULT_THRESHOLD
    assert str(target) in result.stdout
    assert export.versions(tmp_path / "omniglot") == [1]
    best = keras.models.load_model(run_dir / "best.keras")
    rng = np.random.default_rng(1)
    x = {side: rng.integers(0, 256, (3, 105, 105, 1)).astype(np.float32) for side in ("left", "right")}
    signatures = tf.saved_model.load(str(target)).signatures
    served = signatures["serving_default"](
        left=tf.constant(x["left"]), right=tf.constant(x["right"])
    )["probability"]
    np.testing.assert_allclose(served.numpy(), keras_probabilities(best, x), atol=1e-6)
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


@pytest.mark.parametrize(
    "flags, message",
    [(("--tta-views", "1"), "tta_views must be at least 2, got 1"),
     (("--max-pairs", "0"), "max_pairs must be at least 1, got 0")],
)  # fmt: skip
def test_export_command_refuses_an_option_out_of_range(flags, message, trained_run, run_python, tmp_path):
    _, run_dir, _, _ = trained_run
    result = run_python("-m", "keras_siamese.export", run_dir, "--export-dir", tmp_path / "out", *flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_export_command_without_a_model(run_python, tmp_path):
    result = run_python("-m", "keras_siamese.export", tmp_path, "--export-dir", tmp_path / "out")
    assert result.returncode != 0
    assert f"no model at {tmp_path / 'best.keras'}" in result.stderr
    assert not (tmp_path / "out").exists()


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


def test_an_ensemble_exports_with_the_same_signatures(small_config, lake_runs, tmp_path):
    """An ensemble's SavedModel serves the mean of its members, as the offline scorer does."""
    members = [build_siamese(small_config(paper_init=False)) for _ in range(2)]
    rng = np.random.default_rng(2)
    x = {side: rng.integers(0, 256, (3, 105, 105, 1)).astype(np.float32) for side in ("left", "right")}
    expected = np.mean([keras_probabilities(m, x) for m in members], axis=0)
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


def test_explicit_version_and_existing_version(model, tmp_path):
    target = export.export_saved_model(model, tmp_path, "m", version=7, views=2)
    assert target == tmp_path / "m" / "7"
    with pytest.raises(FileExistsError, match="7"):
        export.export_saved_model(model, tmp_path, "m", version=7, views=2)
    assert export.versions(tmp_path / "m") == [7]
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["7"]
    assert export.export_saved_model(model, tmp_path, "m", views=2) == tmp_path / "m" / "8"


def test_mixed_precision_export_serves_float32(small_config, omniglot, tmp_path):
    model = build_siamese(small_config(mixed_precision=True))
    target = export.export_saved_model(model, tmp_path, "siamese")
    signatures = tf.saved_model.load(str(target)).signatures
    images = omniglot["evaluation"].images[:2].astype(np.float32)
    assert signatures["serving_default"](left=images, right=images)["probability"].dtype == tf.float32
    assert signatures["embed"](images=images)["embedding"].dtype == tf.float32
    assert signatures["one_shot"](queries=images, support=images)["scores"].dtype == tf.float32
    assert signatures["one_shot_tta"](queries=images, support=images)["scores"].dtype == tf.float32


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
    np.testing.assert_allclose(served["probability"], keras_probabilities(model, pairs), rtol=1e-5, atol=1e-6)
    # A float32 model has nothing to cast: it is exported as it is.
    float32_model = build_siamese(small_config())
    assert export.serving_copy(float32_model) is float32_model


def test_stale_staging_folders_are_removed_and_live_ones_kept(model, tmp_path):
    model_dir = tmp_path / "siamese"
    host = socket.gethostname()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead_pid = int(ended.stdout)
    folders = {
        "dead": model_dir / f".tmp-{dead_pid}-{'a' * 32}-{host}",  # its process has ended
        "live": model_dir / f".tmp-{os.getpid()}-{'b' * 32}-{host}",  # this process: in progress
        "other host": model_dir / f".tmp-{dead_pid}-{'c' * 32}-elsewhere",  # cannot be checked
        "old name": model_dir / ".tmp-0123",  # recent, so it may still be written
        "old": model_dir / ".tmp-0456",  # untouched for longer than STALE_AFTER_SECONDS
    }
    for folder in folders.values():
        (folder / "variables").mkdir(parents=True)
        (folder / "variables" / "variables.index").write_bytes(b"partial")
    long_ago = time.time() - export.STALE_AFTER_SECONDS - 60
    for path in (folders["old"] / "variables" / "variables.index", folders["old"] / "variables", folders["old"]):
        os.utime(path, (long_ago, long_ago))
    assert export.stale_staging(model_dir) == sorted([folders["dead"], folders["old"]])
    assert export.versions(model_dir) == [] and export.next_version(model_dir) == 1
    target = export.export_saved_model(model, tmp_path, "siamese", views=2)
    assert target == model_dir / "1"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["1", folders["live"].name, folders["other host"].name, folders["old name"].name]
    )
