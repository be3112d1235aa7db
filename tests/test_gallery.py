"""Tests for keras_siamese.gallery: enrol real ORL faces with an exported SavedModel, identify
new images against them, in process, through the command and as an exported gallery."""

from __future__ import annotations

import io
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import ORL_DIR, small_model_config
from PIL import Image

from keras_siamese import export, gallery
from keras_siamese.model import build_siamese, head_of


# Three people, three photographs each, enrolled; a fourth photograph of each is a query.
PEOPLE = ("s1", "s2", "s3")
ENROLLED = ("1.pgm", "2.pgm", "3.pgm")
QUERIES = tuple(ORL_DIR / person / "4.pgm" for person in PEOPLE)


def _network(seed: int):
    """The tiny test network, its head's weights made negative: as after training, a larger
    distance then means a lower score, and an image is its own best match."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_siamese(small_model_config(channels=1))
    head = head_of(model)
    head.alpha.assign(-np.abs(head.alpha.numpy()))
    return model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> pathlib.Path:
    return export.export_saved_model(_network(0), tmp_path_factory.mktemp("export"), "m", version=1)


@pytest.fixture(scope="module")
def opened(saved_model) -> gallery.SavedModel:
    return gallery.open_saved_model(saved_model)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> pathlib.Path:
    """A folder of labels copied from the ORL faces, with a hidden file and a note in it."""
    if not ORL_DIR.is_dir():
        pytest.fail(f"ORL faces not found at {ORL_DIR}", pytrace=False)
    root = tmp_path_factory.mktemp("faces")
    for person in PEOPLE:
        (root / person).mkdir()
        for name in ENROLLED:
            shutil.copyfile(ORL_DIR / person / name, root / person / name)
    (root / "s1" / ".DS_Store").write_bytes(b"\0\1")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def enrolled(opened, faces) -> gallery.Gallery:
    return gallery.enrol(opened, faces)


def test_enrol_reads_a_folder_of_labels(enrolled, opened, faces):
    assert enrolled.labels == tuple(p for p in PEOPLE for _ in ENROLLED)
    assert enrolled.files == tuple(str(faces / p / n) for p in PEOPLE for n in ENROLLED)
    assert enrolled.embeddings.shape == (9, opened.embedding_size)
    assert enrolled.embeddings.dtype == np.float32
    assert enrolled.model_id == opened.model_id and len(enrolled.model_id) == 16
    assert enrolled.threshold == pytest.approx(export.DEFAULT_THRESHOLD)
    assert enrolled.saved_model == str(opened.path)
    assert enrolled.label_names == PEOPLE
    found = gallery.read_class_folder(faces)
    assert sum(found.skipped.values()) == 2  # the hidden file and the note
    assert "9 images of 3 labels; skipped 2" in found.summary()


def test_pgm_is_reencoded_as_the_png_of_its_pixels(opened):
    path = ORL_DIR / "s1" / "1.pgm"
    png = gallery.encoded_image(path)
    assert png.startswith(b"\x89PNG")
    with Image.open(path) as original, Image.open(io.BytesIO(png)) as copy:
        assert copy.mode == "L"
        np.testing.assert_array_equal(np.asarray(copy), np.asarray(original))
    # The same embedding whether the PNG is given as a path's re-encoding or as bytes.
    np.testing.assert_array_equal(
        gallery.embed_images(opened, [path]), gallery.embed_images(opened, [png])
    )
    # Files TensorFlow decodes go as they are.
    assert gallery.encoded_image(png) == png


def test_enrol_from_a_mapping_and_its_errors(opened):
    images = {"first": [ORL_DIR / "s4" / "1.pgm"], "second": [ORL_DIR / "s5" / "1.pgm"]}
    enrolled = gallery.enrol(opened, images)
    assert enrolled.labels == ("first", "second")
    with pytest.raises(gallery.GalleryError, match="no labels with images"):
        gallery.enrol(opened, {})
    with pytest.raises(gallery.GalleryError, match="non-empty strings"):
        gallery.enrol(opened, {"": [ORL_DIR / "s4" / "1.pgm"]})
    with pytest.raises(gallery.GalleryError, match="missing.pgm"):
        gallery.enrol(opened, {"x": [ORL_DIR / "missing.pgm"]})
    with pytest.raises(gallery.GalleryError, match="README"):
        gallery.enrol(opened, {"x": [ORL_DIR / "README"]})


def test_save_and_load_round_trip(enrolled, tmp_path):
    folder = gallery.save(enrolled, tmp_path / "g")
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "gallery.json"]
    loaded = gallery.load(folder)
    np.testing.assert_array_equal(loaded.embeddings, enrolled.embeddings)
    for field in ("labels", "files", "model_id", "threshold", "saved_model"):
        assert getattr(loaded, field) == getattr(enrolled, field)


def test_a_half_written_gallery_is_refused(enrolled, tmp_path):
    folder = gallery.save(enrolled, tmp_path / "g")
    # Interrupted before gallery.json was written: embeddings alone.
    description = (folder / "gallery.json").read_text()
    (folder / "gallery.json").unlink()
    with pytest.raises(gallery.GalleryError, match="no gallery.json"):
        gallery.load(folder)
    # Interrupted between the two files when saving over another gallery: the new
    # embeddings with the old description.
    (folder / "gallery.json").write_text(description)
    np.save(folder / "embeddings.npy", enrolled.embeddings[::-1].copy())
    with pytest.raises(gallery.GalleryError, match="not the one gallery.json describes"):
        gallery.load(folder)
    np.save(folder / "embeddings.npy", enrolled.embeddings[:5])
    with pytest.raises(gallery.GalleryError, match="not the one gallery.json describes"):
        gallery.load(folder)
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(gallery.GalleryError, match="unreadable gallery"):
        gallery.load(folder)
    with pytest.raises(gallery.GalleryError, match="no such gallery"):
        gallery.load(tmp_path / "nowhere")


def test_an_enrolled_image_is_identified_as_itself(opened, enrolled):
    found = gallery.identify(opened, enrolled, list(enrolled.files))
    assert [f.index for f in found] == list(range(len(enrolled)))
    assert [f.label for f in found] == list(enrolled.labels)
    # Its score is that of identical embeddings, the highest any pair can have.
    compare = opened.signature("compare")
    scores = compare(
        query_embeddings=tf.constant(enrolled.embeddings),
        support_embeddings=tf.constant(enrolled.embeddings),
    )["scores"].numpy()
    np.testing.assert_allclose([f.score for f in found], scores.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.diag(scores), scores.max(axis=1), rtol=1e-6)


def test_best_matches_equals_compare_over_the_whole_gallery(opened, monkeypatch):
    rng = np.random.default_rng(0)
    queries = rng.random((5, opened.embedding_size), np.float32)
    support = rng.random((1000, opened.embedding_size), np.float32)
    compare = opened.signature("compare")
    scores = compare(query_embeddings=queries, support_embeddings=support)["scores"].numpy()
    # In one call, and in chunks of a few rows, the last one shorter: the same best score and
    # row.
    for chunk, max_rows in ((1000, 10_000), (7, 10_000), (1000, 9)):
        monkeypatch.setattr(gallery, "SCORE_ELEMENTS", chunk * len(queries))
        best, index = gallery.best_matches(
            compare, tf.constant(queries), tf.constant(support), max_rows
        )
        np.testing.assert_array_equal(index.numpy(), scores.argmax(axis=1))
        np.testing.assert_allclose(best.numpy(), scores.max(axis=1), rtol=1e-6)


def test_unknown_below_the_threshold(opened, enrolled):
    queries = [*QUERIES, ORL_DIR / "s9" / "1.pgm"]
    found = gallery.identify(opened, enrolled, queries)
    scores = [f.score for f in found]
    assert all(0.0 < s < 1.0 for s in scores)
    nobody = gallery.identify(opened, enrolled, queries, threshold=1.0)
    assert [(f.label, f.known) for f in nobody] == [(None, False)] * len(queries)
    assert [f.score for f in nobody] == scores  # the best label's score, known or not
    everybody = gallery.identify(opened, enrolled, queries, threshold=0.0)
    assert all(f.known and f.label in PEOPLE for f in everybody)
    assert [f.label for f in everybody] == [enrolled.labels[f.index] for f in found]
    # The threshold between two scores splits them.
    middle = float(np.median(scores))
    split = gallery.identify(opened, enrolled, queries, threshold=middle)
    assert [f.known for f in split] == [s >= middle for s in scores]
    with pytest.raises(gallery.GalleryError, match="threshold"):
        gallery.identify(opened, enrolled, queries, threshold=1.5)


def test_another_network_is_refused(enrolled, tmp_path):
    other = export.export_saved_model(_network(1), tmp_path, "other", version=1)
    other_id = json.loads((other / "assets.extra" / "model.json").read_text())["model_id"]
    assert other_id != enrolled.model_id
    with pytest.raises(gallery.GalleryMismatchError) as caught:
        gallery.identify(other, enrolled, QUERIES)
    message = str(caught.value)
    assert enrolled.model_id in message and other_id in message and "Enrol the images again" in message
    with pytest.raises(gallery.GalleryMismatchError):
        gallery.export_gallery(other, enrolled, tmp_path / "served", "g")


def test_an_old_export_or_no_saved_model_is_refused(tmp_path):
    with pytest.raises(gallery.GalleryError, match="not a SavedModel"):
        gallery.open_saved_model(tmp_path)


def test_exported_gallery_answers_as_identify(saved_model, opened, enrolled, tmp_path):
    target = gallery.export_gallery(saved_model, enrolled, tmp_path, "faces")
    assert target == tmp_path / "faces" / "1"
    assert gallery.export_gallery(opened, enrolled, tmp_path, "faces") == tmp_path / "faces" / "2"
    with pytest.raises(FileExistsError):
        gallery.export_gallery(opened, enrolled, tmp_path, "faces", version=2)
    assert not [p for p in (tmp_path / "faces").iterdir() if p.name.startswith(".")]

    served = tf.saved_model.load(str(target))
    assert set(gallery.GALLERY_SIGNATURES) <= set(served.signatures)
    queries = [*QUERIES, ORL_DIR / "s9" / "1.pgm", *enrolled.files[:2]]
    data = [gallery.encoded_image(q) for q in queries]
    answer = {k: v.numpy() for k, v in served.signatures["identify_encoded"](images=tf.constant(data)).items()}
    for threshold in (None, 0.0):
        expected = gallery.identify(opened, enrolled, queries, threshold)
        np.testing.assert_allclose(answer["score"], [f.score for f in expected], rtol=1e-5)
    expected = gallery.identify(opened, enrolled, queries)
    np.testing.assert_array_equal(answer["index"], [f.index for f in expected])
    np.testing.assert_array_equal(answer["known"], [f.known for f in expected])
    assert [x.decode() for x in answer["label"]] == [f.label or "" for f in expected]
    # Pixel arrays through `identify` give the same answers as their files.
    pixels = np.stack([np.asarray(Image.open(q), np.float32)[..., None] for q in queries])
    by_pixels = served.signatures["identify"](images=tf.constant(pixels))
    np.testing.assert_allclose(by_pixels["score"].numpy(), answer["score"], rtol=1e-5)
    np.testing.assert_array_equal(by_pixels["index"].numpy(), answer["index"])

    info = {k: v.numpy() for k, v in served.signatures["gallery_info"]().items()}
    assert info["count"] == len(enrolled)
    assert [x.decode() for x in info["labels"]] == list(PEOPLE)
    assert info["model_id"].decode() == enrolled.model_id
    base_info = opened.signature("model_info")()
    assert served.signatures["model_info"]()["model_id"].numpy() == base_info["model_id"].numpy()
    extra = json.loads((target / "assets.extra" / "gallery.json").read_text())
    assert extra["labels"] == list(enrolled.labels) and extra["count"] == len(enrolled)
    assert (target / "assets.extra" / "model.json").is_file()


def test_the_command(saved_model, faces, tmp_path, capsys):
    folder = tmp_path / "g"
    gallery.main(["enrol", "--model", str(saved_model), "--images", str(faces), "--gallery", str(folder)])
    out = capsys.readouterr().out
    assert "Enrolled 9 images of 3 labels; skipped 2" in out and str(folder) in out
    assert gallery.load(folder).labels == tuple(p for p in PEOPLE for _ in ENROLLED)

    files = [str(q) for q in QUERIES]
    gallery.main(["identify", "--model", str(saved_model), "--gallery", str(folder), *files])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    expected = gallery.identify(saved_model, gallery.load(folder), files)
    for line, found in zip(lines, expected):
        _, label, score = line.split("\t")
        assert label == (found.label if found.known else "unknown")
        assert float(score) == pytest.approx(found.score, abs=1e-4)
    gallery.main(["identify", "--model", str(saved_model), "--gallery", str(folder),
                  "--threshold", "1", *files])  # fmt: skip
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == ["unknown"] * 3

    gallery.main(["export", "--model", str(saved_model), "--gallery", str(folder),
                  "--export-dir", str(tmp_path / "served"), "--model-name", "faces"])  # fmt: skip
    assert (tmp_path / "served" / "faces" / "1" / "saved_model.pb").is_file()
    assert "to " + str(tmp_path / "served" / "faces" / "1") in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["identify", "--gallery", "{tmp}/none", "x.png"], "no such gallery folder"),
        (["enrol", "--images", "{tmp}/none", "--gallery", "{tmp}/g"], "no such folder of labels"),
        (["identify", "--gallery", "{gallery}", "{tmp}/missing.png"], "missing.png: cannot read"),
    ],
)
def test_the_command_fails_with_a_message(saved_model, enrolled, tmp_path, capsys, argv, message):
    gallery.save(enrolled, tmp_path / "saved")
    argv = [a.format(tmp=tmp_path, gallery=tmp_path / "saved") for a in argv]
    with pytest.raises(SystemExit) as exited:
        gallery.main([argv[0], "--model", str(saved_model), *argv[1:]])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
