"""`python -m keras_siamese.gallery` end to end: enrol real ORL faces, identify new ones and
export the gallery, each in a fresh process; the exported gallery loaded by TensorFlow alone."""

from __future__ import annotations

import json
import pathlib
import shutil
import textwrap

import numpy as np
import pytest
from conftest import ORL_DIR, small_model_config

from keras_siamese import export, gallery
from keras_siamese.model import build_siamese, head_of

pytestmark = pytest.mark.slow

PEOPLE = ("s10", "s11", "s12", "s13")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> pathlib.Path:
    import keras

    keras.utils.set_random_seed(0)
    model = build_siamese(small_model_config(channels=1))
    # Negative weights, as after training: a larger distance means a lower score.
    head = head_of(model)
    head.alpha.assign(-np.abs(head.alpha.numpy()))
    return export.export_saved_model(model, tmp_path_factory.mktemp("export"), "m", version=1)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> pathlib.Path:
    if not ORL_DIR.is_dir():
        pytest.fail(f"ORL faces not found at {ORL_DIR}", pytrace=False)
    root = tmp_path_factory.mktemp("faces")
    for person in PEOPLE:
        shutil.copytree(ORL_DIR / person, root / person, ignore=shutil.ignore_patterns("[6-9].pgm", "10.pgm"))
    (root / "s10" / "._1.pgm").write_bytes(b"AppleDouble")
    (root / "README.md").write_text("faces")
    return root


# Serves an exported gallery the way a model server does: TensorFlow only, no Keras and no
# keras_siamese.
SERVE = textwrap.dedent(
    """
    import json, sys

    for name in ("keras", "keras_siamese", "tf_keras"):
        sys.modules[name] = None
    import tensorflow as tf

    model_dir, *files = sys.argv[1:]
    served = tf.saved_model.load(model_dir)
    data = [open(f, "rb").read() for f in files]
    answer = served.signatures["identify_encoded"](images=tf.constant(data))
    info = served.signatures["gallery_info"]()
    print(json.dumps({
        "label": [x.decode() for x in answer["label"].numpy()],
        "score": answer["score"].numpy().tolist(),
        "index": answer["index"].numpy().tolist(),
        "count": int(info["count"].numpy()),
    }))
    """
)


def test_enrol_identify_and_serve_in_fresh_processes(saved_model, faces, tmp_path, run_python):
    folder = tmp_path / "gallery"
    enrolled = run_python(
        "-m", "keras_siamese.gallery", "enrol", "--model", saved_model, "--images", faces,
        "--gallery", folder,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    assert "Enrolled 20 images of 4 labels; skipped 2" in enrolled.stdout

    queries = [str(ORL_DIR / person / "7.pgm") for person in PEOPLE]
    identified = run_python(
        "-m", "keras_siamese.gallery", "identify", "--model", saved_model, "--gallery", folder,
        *queries,
    )  # fmt: skip
    assert identified.returncode == 0, identified.stderr
    lines = [line.split("\t") for line in identified.stdout.splitlines()]
    expected = gallery.identify(saved_model, gallery.load(folder), queries)
    assert [line[0] for line in lines] == queries
    assert [line[1] for line in lines] == [f.label if f.known else "unknown" for f in expected]
    np.testing.assert_allclose([float(line[2]) for line in lines], [f.score for f in expected], atol=1e-4)

    exported = run_python(
        "-m", "keras_siamese.gallery", "export", "--model", saved_model, "--gallery", folder,
        "--export-dir", tmp_path / "served", "--model-name", "faces",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    target = tmp_path / "served" / "faces" / "1"
    assert f"to {target}" in exported.stdout

    # PNG files for the server: the gallery re-encodes the PGM queries the same way.
    pngs = []
    for i, query in enumerate(queries):
        pngs.append(tmp_path / f"query{i}.png")
        pngs[-1].write_bytes(gallery.encoded_image(query))
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    served = run_python(script, target, *pngs)
    assert served.returncode == 0, served.stderr
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["count"] == 20
    assert answer["label"] == [f.label or "" for f in expected]
    assert answer["index"] == [f.index for f in expected]
    np.testing.assert_allclose(answer["score"], [f.score for f in expected], rtol=1e-5)


def test_errors_are_one_line_without_a_traceback(saved_model, faces, tmp_path, run_python):
    missing = run_python(
        "-m", "keras_siamese.gallery", "identify", "--model", saved_model, "--gallery",
        tmp_path / "none", "x.png",
    )  # fmt: skip
    assert missing.returncode == 1
    assert "no such gallery folder" in missing.stderr and "Traceback" not in missing.stderr
    not_a_model = run_python(
        "-m", "keras_siamese.gallery", "enrol", "--model", tmp_path, "--images", faces,
        "--gallery", tmp_path / "g",
    )  # fmt: skip
    assert not_a_model.returncode == 1
    assert "not a SavedModel" in not_a_model.stderr and "Traceback" not in not_a_model.stderr
