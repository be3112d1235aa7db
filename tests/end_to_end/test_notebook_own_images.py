"""The notebook on a user's own folder of images: stored clean, and run top to bottom on the
real ORL faces in a fresh kernel.

As in test_notebook.py, nbclient starts the kernel from the `python3` kernel spec, which runs
this interpreter, and the notebook's parameters cell reads the short configuration below from
the environment: two networks of two epochs of 20 steps, so the networks learn little and the
test checks what the notebook shows and saves, not how well it recognises faces (the folder
preset's three networks are checked end to end in test_fit_images.py).
"""

from __future__ import annotations

import json
import os
import re

import nbformat
import pytest
from conftest import REPO_ROOT, execute_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = REPO_ROOT / "notebooks" / "your_own_images.ipynb"
ORL_FACES = REPO_ROOT.parent / "shared" / "data" / "orl_faces"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT = 300  # seconds; the training cell is the longest

# Figures the notebook saves into KERAS_SIAMESE_NB_OUTPUT_DIR, and those it shows from the
# run folder of `python -m keras_siamese.fit`: each of the two networks (seeds 0 and 1) has its
# learning curves in its own folder.
FIGURES = ["faces.png", "one_person.png", "identifications.png"]
RUN_FIGURES = ["one_shot_tasks.png", "roc.png"] + [
    f"member{i + 1}-seed{i}/learning_curves.png" for i in range(2)
]

# Results in [0, 1] that the notebook writes into results.json.
FRACTIONS = [
    "test_1shot_accuracy", "test_1shot_1nn", "verification_roc_auc", "verification_eer",
    "verification_roc_auc_1nn", "threshold", "test_false_accept_rate", "test_false_reject_rate",
    "test_1shot_accuracy_saved_model",
]


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_follows_the_story_and_credits_the_faces():
    nb = _read()
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    numbered = [line for line in markdown.splitlines() if re.match(r"## \d\. ", line)]
    assert [h[3] for h in numbered] == list("12345"), numbered
    assert numbered[-1] == "## 5. Serving the gallery"
    # The ORL database's README asks for this credit.
    assert "Olivetti Research Laboratory" in markdown and "Samaria" in markdown
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    for name in ("IMAGES", "EPOCHS", "STEPS", "MEMBERS", "SEED", "INIT_FROM", "OUTPUT_DIR"):
        assert f'"KERAS_SIAMESE_NB_{name}"' in first_code.source, name


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run with two networks of two epochs of 20 steps on the ORL faces.

    Returns (executed notebook, output folder).
    """
    if not ORL_FACES.is_dir():
        pytest.fail(f"ORL faces not found at {ORL_FACES}", pytrace=False)
    output_dir = tmp_path_factory.mktemp("your_own_images")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend puts the figures into the outputs
    env.update(
        KERAS_SIAMESE_NB_IMAGES=str(ORL_FACES),
        KERAS_SIAMESE_NB_EPOCHS="2",
        KERAS_SIAMESE_NB_STEPS="20",
        KERAS_SIAMESE_NB_MEMBERS="2",
        KERAS_SIAMESE_NB_OUTPUT_DIR=str(output_dir),
        # The prepared images are cached here rather than in the user's ~/.cache.
        KERAS_SIAMESE_CACHE_DIR=str(tmp_path_factory.mktemp("folder_cache")),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    nb = execute_notebook(NOTEBOOK, env, CELL_TIMEOUT)
    return nb, output_dir


def _outputs(nb):
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")


def _png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path


def test_notebook_saves_its_figures_and_results(executed):
    nb, output_dir = executed
    results = json.loads((output_dir / "results.json").read_text())
    for name in FIGURES:
        _png(output_dir / name)
    # The run folder is the one fit made in the output folder; its figures are shown.
    run_dir = output_dir / "runs" / os.path.basename(results["run_dir"])
    assert run_dir.is_dir() and str(run_dir) == results["run_dir"]
    for name in RUN_FIGURES:
        _png(run_dir / name)
    # The split the notebook drew is the one the run used.
    split = json.loads((output_dir / "split.json").read_text())
    run_split = json.loads((run_dir / "split.json").read_text())
    assert {part: run_split[part] for part in ("train", "validation", "test")} == {
        part: split[part] for part in ("train", "validation", "test")
    }
    assert not set(split["test"]) & set(split["train"])
    # The metrics the notebook prints are fit's.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in FRACTIONS:
        assert 0.0 <= results[key] <= 1.0, key
        assert results[key] == metrics[key], key
    assert 2 <= results["test_way"] <= len(split["test"])
    text = _text(nb)
    assert "400 images of 40 classes" in text
    assert f"{results['test_way']}-way 1-shot accuracy" in text
    assert f"{metrics['verification_roc_auc']:.3f}" in text


def test_notebook_identifies_enrolled_people_and_strangers(executed):
    nb, output_dir = executed
    results = json.loads((output_dir / "results.json").read_text())
    split = json.loads((output_dir / "split.json").read_text())
    enrolled, strangers = results["identified"]["enrolled"], results["identified"]["not_enrolled"]
    # One photo of each test person is enrolled, the other nine are queries; every photo of
    # the validation people is a stranger's.
    assert sum(enrolled.values()) == 9 * len(split["test"])
    assert sum(strangers.values()) == 10 * len(split["validation"])
    assert strangers["right"] == 0  # a stranger can only be unknown or taken for someone
    assert (output_dir / "gallery").is_dir()


def test_notebook_serves_the_gallery_over_rest(executed):
    nb, output_dir = executed
    results = json.loads((output_dir / "results.json").read_text())
    served, local = results["served"], results["in_process"]
    assert len(served) == len(local) == 2
    for remote, here in zip(served, local):
        assert remote["label"] == here["label"] and remote["known"] == here["known"]
        assert remote["score"] == pytest.approx(here["score"], abs=1e-4)
    assert list((output_dir / "gallery_models" / "faces_gallery").glob("*/saved_model.pb"))
    text = _text(nb)
    assert "serving version 1 at http://127.0.0.1:" in text
    assert "server stopped, exit code" in text


def test_notebook_shows_each_figure_once(executed):
    nb, _ = executed
    outputs = _outputs(nb)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # faces, one person, two networks' learning curves, tasks, ROC, identifications
    assert len(images) >= 7, len(images)
    assert not [o for o in outputs if o.output_type == "execute_result"]
    assert not [o for o in outputs if o.output_type == "error"]
