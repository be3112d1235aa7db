"""The README's Python example, run as it is written there."""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT

from keras_siamese import evaluation, export

pytestmark = pytest.mark.slow


def _first_python_block() -> str:
    """The first ```python block of README.md: the example a reader runs first."""
    match = re.search(r"^```python\n(.*?)^```", (REPO_ROOT / "README.md").read_text(), re.M | re.S)
    assert match, "README.md has no ```python block"
    return match.group(1)


def test_readme_python_example_runs_as_written(trained_run, lake_runs, run_python, tmp_path):
    # The example loads saved_models/siamese/1 from the working directory, as after `make run`.
    _, _, model, _ = trained_run
    target = export.export_saved_model(model, tmp_path / "saved_models", "siamese", version=1)
    script = tmp_path / "example.py"
    script.write_text(_first_python_block())

    result = run_python(script, cwd=tmp_path, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    # The example's figure is the project's own evaluation of the same SavedModel.
    scores = evaluation.saved_model_lake_scores(target, lake_runs)
    expected = evaluation.accuracy(scores, evaluation.lake_tasks(lake_runs))
    assert f"Lake's 20 runs: {expected:.1%}" in result.stdout, result.stdout[-2000:]
