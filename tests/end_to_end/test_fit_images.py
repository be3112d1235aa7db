"""`python -m keras_siamese.fit --images DIR`: a user's own folder of classes, end to end.

The ORL faces (40 people, 10 PGM photographs each) stand for the user's folder, and a few
Omniglot alphabets laid out as alphabet/character folders for a two-level one.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from conftest import ORL_DIR
from keras_siamese.model import load_trained, siamese_members, twin_of

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A short run: the folder preset's network, one epoch of a few batches.
SHORT = ["--epochs", "1", "--steps-per-epoch", "8", "--val-tasks", "50", "--tta-views", "2"]


def _fit(run_python, root, *args):
    return run_python(
        "-m", "keras_siamese.fit", *SHORT, "--runs-dir", root / "runs",
        "--export-dir", root / "saved_models", "--cache-dir", root / "cache", *args,
    )  # fmt: skip


def _run_dir(result) -> str:
    return result.stdout.rsplit("Run folder: ", 1)[1].strip()


@pytest.fixture(scope="module")
def orl_run(run_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("orl")
    result = _fit(run_python, root, "--images", ORL_DIR)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, result, _run_dir(result)


def test_a_folder_trains_reports_on_unseen_classes_and_exports(orl_run):
    root, result, run_dir = orl_run
    run = root / "runs" / run_dir.rsplit("/", 1)[1]
    assert "preset 'folder'" in result.stdout
    assert "400 images of 40 classes" in result.stdout
    assert "skipped: 2 not an image by its name" in result.stdout  # README.md, README.orl
    assert "Fitted to the folder: way 20 -> 8" in result.stdout
    split = json.loads((run / "split.json").read_text())
    parts = [set(split[name]) for name in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [24, 8, 8]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {f"s{i}" for i in range(1, 41)}
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["test_way"], metrics["test_shots"]) == (8, 5)
    for key in (
        "test_1shot_accuracy", "test_5shot_accuracy", "test_1shot_accuracy_tta", "test_1shot_1nn",
        "test_5shot_1nn", "verification_roc_auc", "verification_eer", "verification_roc_auc_1nn",
        "threshold", "test_false_accept_rate", "test_false_reject_rate",
    ):  # fmt: skip
        assert 0.0 <= metrics[key] <= 1.0, key
    # One epoch already tells faces apart better than chance.
    assert metrics["test_1shot_accuracy"] > 0.25
    assert metrics["verification_roc_auc"] > 0.6
    pictures = ["roc.png", "one_shot_tasks.png"]
    # The preset's three networks, each in its own run folder with its learning curves.
    pictures += [f"member{i}-seed{i - 1}/learning_curves.png" for i in (1, 2, 3)]
    for picture in pictures:
        assert (run / picture).read_bytes().startswith(PNG_SIGNATURE), picture
    assert "8-way 1-shot" in result.stdout and "Threshold for \"none of these\"" in result.stdout
    # The SavedModel, with plain TensorFlow: the same one-shot figure, and the threshold.
    assert metrics["test_1shot_accuracy_saved_model"] == metrics["test_1shot_accuracy"]
    saved = tf.saved_model.load(metrics["saved_model"]).signatures
    info = saved["model_info"]()
    assert float(info["threshold"]) == pytest.approx(metrics["threshold"], rel=1e-6)
    assert int(info["channels"]) == 1
    # A PGM photograph re-encoded as PNG scores as the prepared image does.
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.open(ORL_DIR / "s1" / "1.pgm").save(buffer, format="PNG")
    embedding = saved["embed_encoded"](images=tf.constant([buffer.getvalue()]))["embedding"]
    assert embedding.shape == (1, 3 * 512)  # the three networks' embeddings side by side
    assert int(info["embedding_size"]) == 3 * 512


def test_resuming_the_finished_run_and_reusing_its_split(orl_run, run_python):
    root, _, run_dir = orl_run
    again = run_python(
        "-m", "keras_siamese.fit", "--resume", run_dir, "--export-dir", root / "saved_models",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Loaded 400 prepared images from the cache" in again.stdout
    assert "Already exported as" in again.stdout
    reused = _fit(
        run_python, root, "--images", ORL_DIR, "--split", f"{run_dir}/split.json", "--seed", "5",
        "--no-export", "--epochs", "1", "--init-from", run_dir, "--learning-rate", "1e-12",
        "--members", "2",
    )  # fmt: skip
    assert reused.returncode == 0, reused.stdout[-3000:] + reused.stderr[-3000:]
    new_dir = _run_dir(reused)
    old, new = (json.loads(open(f"{d}/split.json").read()) for d in (run_dir, new_dir))
    assert {k: old[k] for k in ("train", "validation", "test")} == {
        k: new[k] for k in ("train", "validation", "test")
    }
    # --init-from an ensemble: each new network (two are enough to tell) starts from its first
    # network's weights (and barely moves them).
    start = twin_of(siamese_members(load_trained(run_dir))[0]).get_layer("conv1").kernel.numpy()
    members = siamese_members(load_trained(new_dir))
    assert len(members) == 2
    for member in members:
        kernel = twin_of(member).get_layer("conv1").kernel.numpy()
        np.testing.assert_allclose(kernel, start, atol=1e-6)


def _refused(tmp_path, *args) -> str:
    """The message of the error that ends ``fit`` (run in this process) with ``args``."""
    from keras_siamese import fit

    with pytest.raises(SystemExit) as ended:
        fit.main([
            *SHORT, "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--export-dir", str(tmp_path / "saved_models"), *map(str, args),
        ])  # fmt: skip
    assert isinstance(ended.value.code, str), ended.value.code  # a message, not a status
    return ended.value.code


def test_bad_folders_and_settings_end_with_a_clear_error(tmp_path, small_config):
    (tmp_path / "empty").mkdir()
    assert "error:" in _refused(tmp_path, "--images", tmp_path / "empty")
    lonely = tmp_path / "lonely"
    for person in ("s1", "s2", "s3"):
        shutil.copytree(ORL_DIR / person, lonely / person)
    for extra in range(2, 11):
        (lonely / "s3" / f"{extra}.pgm").unlink()
    assert "s3" in _refused(tmp_path, "--images", lonely)
    assert "--way 30" in _refused(tmp_path, "--images", ORL_DIR, "--way", "30")
    assert "--channels is for --images" in _refused(tmp_path, "--channels", "3")
    # A network of another input size cannot start this run.
    from keras_siamese.model import build_siamese

    other = tmp_path / "other.keras"
    build_siamese(small_config()).save(other)
    message = _refused(tmp_path, "--images", ORL_DIR, "--init-from", other)
    assert "--init-from" in message and "(28, 28, 1)" in message
    assert "--init-from" in _refused(tmp_path, "--images", ORL_DIR, "--init-from", tmp_path / "nothing")


def test_omniglot_as_a_folder_of_alphabets_and_characters(omniglot_dir, run_python, tmp_path):
    folder = tmp_path / "omniglot"
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        archive.extractall(tmp_path / "zip")
    top = next((tmp_path / "zip").iterdir())
    for alphabet in sorted(p for p in top.iterdir() if p.is_dir())[:5]:
        shutil.copytree(alphabet, folder / alphabet.name)
    result = _fit(run_python, tmp_path, "--images", folder, "--preset", "smoke", "--no-export")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(5 groups)" in result.stdout or "5 groups" in result.stdout
    split = json.loads(open(f"{_run_dir(result)}/split.json").read())
    assert split["by"] == "group"
    groups = [{name.split("/")[0] for name in split[part]} for part in ("train", "validation", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
