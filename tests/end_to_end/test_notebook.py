"""The walkthrough notebook: stored clean, and run top to bottom in a fresh kernel.

The kernel is started by nbclient from the `python3` kernel spec, whose `python` jupyter_client
replaces with this interpreter (`sys.executable`), so the notebook runs with the test's packages.
Its parameters cell reads the short configuration below from the environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil

import nbformat
import pytest
from conftest import REPO_ROOT, execute_notebook

pytestmark = pytest.mark.slow

NOTEBOOK = REPO_ROOT / "notebooks" / "walkthrough.ipynb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT = 300  # seconds; the whole notebook takes about a minute with this configuration

# Figures the notebook saves into KERAS_SIAMESE_NB_OUTPUT_DIR whatever the results.
FIGURES = [
    "alphabets.png",
    "drawers.png",
    "pairs.png",
    "distortions.png",
    "learning_curves.png",
    "one_shot_tasks.png",
    "accuracy_by_run.png",
    "accuracy_by_alphabet.png",
    "filters.png",
    "embeddings.png",
    "served_task.png",
]


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


@pytest.mark.parametrize("name", ["walkthrough.ipynb", "your_own_images.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert nb.metadata.kernelspec.name == "python3"


def test_notebook_follows_the_issue_sections():
    nb = _read()
    headings = [
        line
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for line in cell.source.splitlines()
        if line.startswith("## ")
    ]
    numbered = [h for h in headings if re.match(r"## \d\. ", h)]
    assert [h[3] for h in numbered] == list("1234567"), headings
    assert numbered[-1] == "## 7. Export and serving"
    # The parameters cell comes first among the code cells and reads the environment.
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    for name in ("PRESET", "EPOCHS", "STEPS", "RUN_DIR", "TFDS_DIR", "OUTPUT_DIR"):
        assert f'"KERAS_SIAMESE_NB_{name}"' in first_code.source, name
    assert '"KERAS_SIAMESE_DATA_DIR"' in first_code.source


@pytest.fixture(scope="module")
def executed(trained_run, omniglot, omniglot_dir, tfds_dir, tmp_path_factory):
    """The notebook run with one 5-step epoch, the smoke run of `trained_run` as its run folder.

    Returns (executed notebook, output folder, run folder).
    """
    _, run_dir, _, _ = trained_run
    output_dir = tmp_path_factory.mktemp("walkthrough")
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend puts the figures into the outputs
    env.update(
        KERAS_SIAMESE_NB_PRESET="smoke",
        KERAS_SIAMESE_NB_EPOCHS="1",
        KERAS_SIAMESE_NB_STEPS="5",
        KERAS_SIAMESE_NB_RUN_DIR=str(run_dir),
        KERAS_SIAMESE_NB_TFDS_DIR=str(tfds_dir),
        KERAS_SIAMESE_NB_OUTPUT_DIR=str(output_dir),
        KERAS_SIAMESE_DATA_DIR=str(omniglot_dir),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    nb = execute_notebook(NOTEBOOK, env, CELL_TIMEOUT)
    return nb, output_dir, run_dir


def _outputs(nb):
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")


def test_notebook_saves_its_figures_and_metrics(executed):
    nb, output_dir, run_dir = executed
    for name in FIGURES:
        data = (output_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, name
    metrics = json.loads((output_dir / "metrics.json").read_text())
    # Sections 5 and 6 evaluate the run folder's best model.
    assert metrics["model"] == str(run_dir / "best.keras")
    for key in ("lake_runs_accuracy", "lake_runs_1nn", "koch_test_accuracy", "koch_test_1nn"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0.15 <= metrics["lake_runs_1nn"] <= 0.30  # Lake et al.: 21.7%
    # The printed result is the saved one.
    match = re.search(
        r"Lake's 20 runs, 20-way one-shot: network ([\d.]+)%, pixel 1-NN ([\d.]+)%", _text(nb)
    )
    assert match, _text(nb)[-3000:]
    assert float(match.group(1)) == pytest.approx(100 * metrics["lake_runs_accuracy"], abs=0.051)
    assert float(match.group(2)) == pytest.approx(100 * metrics["lake_runs_1nn"], abs=0.051)


def test_notebook_trains_live_and_shows_the_runs_curves(executed):
    nb, _, run_dir = executed
    text = _text(nb)
    assert "5/5" in text and "val_one_shot_accuracy" in text  # model.fit's progress bar
    assert f"Learning curves of the run in {run_dir}: 2 epochs" in text
    assert "Sections 5 and 6 evaluate the best model of the run" in text
    # Section 3 draws the model: a picture where graphviz is installed, else a text diagram.
    (diagram,) = [c for c in nb.cells if c.cell_type == "code" and "plot_model" in c.source]
    if importlib.util.find_spec("pydot") and shutil.which("dot"):
        assert any("image/png" in o.get("data", {}) for o in diagram.outputs)
    else:
        printed = "".join(o.get("text", "") for o in diagram.outputs)
        assert "weighted L1 head: p = sigmoid" in printed


def test_notebook_shows_each_figure_once(executed):
    nb, _, _ = executed
    outputs = _outputs(nb)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 12, len(images)
    # Plot cells end in ";": figures appear once, through the inline backend, never also as
    # the cell's value.
    assert not [o for o in outputs if o.output_type == "execute_result"]
    assert not [o for o in outputs if o.output_type == "error"]


def test_notebook_serves_the_model_over_rest(executed):
    nb, output_dir, _ = executed
    metrics = json.loads((output_dir / "metrics.json").read_text())
    # Section 7: Lake's runs sent as PNG files to the local TF-Serving-compatible server.
    assert metrics["lake_runs_accuracy_served"] == metrics["lake_runs_accuracy"]
    assert (output_dir / "saved_models" / "siamese" / "1" / "saved_model.pb").is_file()
    text = _text(nb)
    assert "serving version 1 at http://127.0.0.1:" in text
    assert "server stopped, exit code" in text
