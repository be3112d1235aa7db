"""Export a trained Siamese network as a SavedModel for TensorFlow Serving.

Exports go to TF Serving's layout, ``<export_dir>/<name>/<version>/``. Each
version is written into a hidden temporary folder and renamed into place, so a
model server watching ``<export_dir>/<name>`` never sees a half-written
version (TF Serving only loads folders whose name is a number).

``model.export`` and ``keras.export.ExportArchive`` currently write every
variable twice (keras-team/keras#23553). Here the endpoints are plain
``tf.function``s on a ``tf.Module`` that tracks the model's underlying
``tf.Variable``s once, so the SavedModel holds a single copy of the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

import keras
import tensorflow as tf

import keras_siamese  # noqa: F401  (registers the custom layer and optimiser for load_model)


def _build_module(model: keras.Model) -> tuple[tf.Module, dict]:
    """A ``tf.Module`` with the serving endpoints of ``model``."""
    size = model.input["left"].shape[1]
    image = tf.TensorSpec((None, size, size, 1), tf.float32)
    module = tf.Module()
    # Track the backend variables directly (not the Keras model) so each is
    # saved once.
    module.model_variables = [v.value for v in model.variables]

    @tf.function(
        input_signature=[
            tf.TensorSpec(image.shape, image.dtype, name="left"),
            tf.TensorSpec(image.shape, image.dtype, name="right"),
        ]
    )
    def serving_default(left, right):
        """Same-character probability of each (left, right) pair."""
        return {"probability": model({"left": left, "right": right}, training=False)}

    module.serving_default = serving_default
    return module, {"serving_default": serving_default}


def versions(model_dir: str | Path) -> list[int]:
    """The version numbers exported under ``model_dir``, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: str | Path) -> int:
    """One more than the highest version under ``model_dir`` (1 if none)."""
    return (versions(model_dir) or [0])[-1] + 1


def export_saved_model(
    model: keras.Model,
    export_dir: str | Path = "saved_models",
    name: str = "siamese",
    version: int | None = None,
) -> Path:
    """Writes ``model`` as ``<export_dir>/<name>/<version>/`` atomically.

    Args:
        model: a Siamese model from ``build_siamese`` (trained or not).
        export_dir: root folder of the model server (TF Serving's base path).
        name: model name, the folder under ``export_dir``.
        version: version number; default one more than the highest present.

    Returns:
        The folder of the new version.

    Raises:
        FileExistsError: ``version`` is given and already exported.
    """
    model_dir = Path(export_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is not None and (model_dir / str(version)).exists():
        raise FileExistsError(f"{model_dir / str(version)} already exists")
    module, signatures = _build_module(model)
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        while True:
            target = model_dir / str(version if version is not None else next_version(model_dir))
            try:
                # rename is atomic, and fails if another export took the name.
                os.rename(staging, target)
                return target
            except OSError:
                if version is not None or not target.exists():
                    raise
                # A concurrent export took this version: take the next one.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m keras_siamese.export``: a ``.keras`` model to a new version."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.export",
        description="Export a trained .keras model (or a run folder's best.keras) "
        "as a new SavedModel version for TensorFlow Serving.",
    )
    parser.add_argument("model", help="a .keras file or a run folder holding best.keras")
    parser.add_argument("--export-dir", default="saved_models", help="base folder (default: %(default)s)")
    parser.add_argument("--name", default="siamese", help="model name (default: %(default)s)")
    parser.add_argument("--version", type=int, default=None, help="version (default: next)")
    args = parser.parse_args(argv)
    path = Path(args.model)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        parser.error(f"no model at {path}")
    target = export_saved_model(keras.models.load_model(path), args.export_dir, args.name, args.version)
    print(f"Exported {path} to {target}")


if __name__ == "__main__":
    main()
