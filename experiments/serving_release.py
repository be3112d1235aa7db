"""Does an export of this project load and score in an older TensorFlow, the one TF Serving runs?

TensorFlow Serving's newest release can be older than the TensorFlow that trains and exports
(saved_models/ pins ``tensorflow/serving:2.20.0``; the project runs TensorFlow 2.21). A SavedModel
written by a newer TensorFlow may use ops or attributes an older one does not know, and then
fails to load in the server. This script checks it without the server:

1. In this interpreter (the project's venv), it builds a preset's network (untrained, seeded),
   exports it with ``keras_siamese.export.export_saved_model``, writes fixed inputs for every
   signature and scores them with plain ``tf.saved_model.load``.
2. It runs a second interpreter (``OTHER_PYTHON``, e.g. a venv with ``tensorflow-cpu==2.20.0``)
   on this same file in isolated mode (``python -I``: no PYTHONPATH, no script folder on the
   path, so ``keras_siamese`` cannot be imported), which loads the SavedModel with plain
   ``tf.saved_model.load`` and scores the same inputs.
3. It compares the signature names and every output: floats within
   ``|a - b| <= atol + rtol * |b|`` (``--atol``, ``--rtol``), integers and strings exactly,
   and prints a verdict. The exit status is 0 when they agree, 1 otherwise.

``--memory`` also measures, in fresh processes of each interpreter, the resident memory of
loading the export (twice, as a server holds two versions during a canary) and serving a few
requests: the figures docs/deployment.md sizes the Kubernetes limits from.

    python experiments/serving_release.py /tmp/tf220/bin/python
    python experiments/serving_release.py /tmp/tf220/bin/python --preset koch2015 --memory

The functions run by the second interpreter (``score``, ``measure_memory``) use only numpy and
TensorFlow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Images per input in the fixed requests, by input name: N pairs, Q queries x K support.
_BATCH = {"left": 3, "right": 3, "images": 4, "queries": 2, "support": 5,
          "query_embeddings": 2, "support_embeddings": 5}


# --- Run by both interpreters: numpy and TensorFlow only ---------------------------------


def _pack(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Writes ``arrays`` (string arrays as one byte buffer and offsets) to an .npz."""
    flat = {}
    for key, value in arrays.items():
        if value.dtype == object:  # a 1-D array of bytes
            lengths = np.array([len(v) for v in value], np.int64)
            flat[f"{key}::bytes"] = np.frombuffer(b"".join(value), np.uint8)
            flat[f"{key}::offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        else:
            flat[key] = value
    np.savez(path, **flat)


def _unpack(path: Path) -> dict[str, np.ndarray]:
    stored = np.load(path)
    arrays = {}
    for key in stored.files:
        if key.endswith("::offsets"):
            continue
        if key.endswith("::bytes"):
            name = key[: -len("::bytes")]
            buffer, offsets = stored[key].tobytes(), stored[f"{name}::offsets"]
            arrays[name] = np.array(
                [buffer[a:b] for a, b in itertools.pairwise(offsets)], dtype=object
            )
        else:
            arrays[key] = stored[key]
    return arrays


def score(saved_model: str, inputs_path: str, outputs_path: str) -> None:
    """Loads ``saved_model`` with plain TensorFlow and runs every signature on the inputs
    stored as ``<signature>/<input>``; writes ``<signature>/<output>`` and a JSON summary."""
    import tensorflow as tf

    inputs = _unpack(Path(inputs_path))
    loaded = tf.saved_model.load(saved_model)
    outputs = {}
    for name, function in sorted(loaded.signatures.items()):
        kwargs = {key.split("/", 1)[1]: tf.constant(value)
                  for key, value in inputs.items() if key.split("/", 1)[0] == name}
        for key, value in function(**kwargs).items():
            value = np.asarray(value.numpy())
            if value.dtype.kind in "OS":  # strings: a 1-D array of bytes
                value = np.array(value.reshape(-1).tolist(), dtype=object)
            outputs[f"{name}/{key}"] = value
    _pack(outputs, Path(outputs_path))
    print(json.dumps({
        "tensorflow": tf.__version__,
        "python": sys.version.split()[0],
        "signatures": sorted(loaded.signatures),
        "keras_siamese_imported": "keras_siamese" in sys.modules,
    }))


def _status_mib(field: str) -> float:
    """A memory field of this process's /proc status (VmRSS now, VmHWM its peak), MiB.

    Not ``ru_maxrss``: Linux carries the parent's resident memory over to a child. Not
    ``keras_siamese.hardware.peak_memory_mib`` either: the second interpreter runs this
    without the package.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(saved_model: str, copies: int, image_size: int, embedding_size: int) -> None:
    """Loads ``saved_model`` ``copies`` times (as a server holds two versions during a
    canary) and sends a few requests of Lake-task and batch size through the second copy;
    prints the resident memory after each step and the process's peak, in MiB, as JSON."""
    import tensorflow as tf

    figures = {"tensorflow": tf.__version__, "after_import": _status_mib("VmRSS")}
    started = time.perf_counter()
    models = []
    for copy in range(copies):
        models.append(tf.saved_model.load(saved_model))
        figures[f"after_load_{copy + 1}"] = _status_mib("VmRSS")
    figures["load_seconds"] = (time.perf_counter() - started) / copies
    signatures = models[-1].signatures
    rng = np.random.default_rng(0)

    def images(n):
        return tf.constant(rng.uniform(0, 255, (n, image_size, image_size, 1)).astype(np.float32))

    started = time.perf_counter()
    for _ in range(3):
        # A Lake task (20 queries x 20 candidates), plain and with test-time augmentation.
        signatures["one_shot"](queries=images(20), support=images(20))
        signatures["one_shot_tta"](queries=images(20), support=images(20))
        # 64 pairs; 128 images embedded; a gallery of 1,000 embeddings.
        signatures["serving_default"](left=images(64), right=images(64))
        signatures["embed"](images=images(128))
        signatures["compare"](
            query_embeddings=tf.constant(rng.normal(size=(20, embedding_size)).astype(np.float32)),
            support_embeddings=tf.constant(
                rng.normal(size=(1000, embedding_size)).astype(np.float32)))
    figures["requests_seconds"] = time.perf_counter() - started
    figures["after_requests"] = _status_mib("VmRSS")
    figures["peak"] = _status_mib("VmHWM")
    print(json.dumps({key: round(value, 1) if isinstance(value, float) else value
                      for key, value in figures.items()}))


# --- The check, in the project's interpreter -------------------------------------------------


def _fixed_inputs(saved_model: Path, image_size: int) -> dict[str, np.ndarray]:
    """Deterministic inputs for every signature's every input, by its name and dtype."""
    import tensorflow as tf

    rng = np.random.default_rng(20)
    signatures = tf.saved_model.load(str(saved_model)).signatures
    inputs = {}
    for name, function in sorted(signatures.items()):
        for key, spec in sorted(function.structured_input_signature[1].items()):
            n = _BATCH[key]
            if key.endswith("_embeddings"):
                value = rng.normal(size=(n, spec.shape[1])).astype(np.float32)
            else:
                # Ink on paper, at a size other than the network's so resizing is exercised.
                pixels = np.where(rng.random((n, image_size + 7, image_size + 7, 1)) < 0.15,
                                  0.0, 255.0).astype(np.float32)
                if spec.dtype == tf.string:
                    value = np.array([tf.io.encode_png(image.astype(np.uint8)).numpy()
                                      for image in pixels], dtype=object)
                else:
                    value = pixels
            inputs[f"{name}/{key}"] = value
    return inputs


def _run_scorer(python: str, saved_model: Path, inputs: Path, outputs: Path) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import serving_release as s; s.score(*sys.argv[1:])")
    result = subprocess.run(
        [python, "-I", "-c", code, str(saved_model), str(inputs), str(outputs)],
        check=False, capture_output=True, text=True, cwd=tempfile.gettempdir(),
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if result.returncode != 0:
        raise SystemExit(f"{python} failed to load or score the SavedModel:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _compare(ours: dict, theirs: dict, atol: float, rtol: float) -> tuple[list[str], float]:
    """The differences beyond tolerance, and the largest float difference seen."""
    problems, largest = [], 0.0
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs:
            problems.append(f"{key}: only in {'ours' if key in ours else 'theirs'}")
            continue
        a, b = ours[key], theirs[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {a.dtype}{a.shape} against {b.dtype}{b.shape}")
        elif a.dtype.kind == "f":
            difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
            largest = max(largest, float(difference.max(initial=0.0)))
            if not np.all(difference <= atol + rtol * np.abs(b.astype(np.float64))):
                problems.append(f"{key}: differs by up to {difference.max():.3g}")
        elif not np.array_equal(a, b):
            problems.append(f"{key}: values differ")
    return problems, largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other_python", help="the interpreter of the older TensorFlow")
    parser.add_argument("--preset", default="smoke", help="the network to export (default smoke)")
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--memory", action="store_true",
                        help="also measure load and serving memory in both interpreters")
    parser.add_argument("--work-dir", default=None, help="kept if given; else a temporary folder")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from keras_siamese import config, export
    from keras_siamese.model import build_siamese

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="serving-release-"))
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model_config = config.preset(args.preset).model
    started = time.perf_counter()
    saved_model = export.export_saved_model(build_siamese(model_config), work, "siamese")
    print(f"Exported the untrained {args.preset!r} network with TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}: {saved_model} ({time.perf_counter() - started:.0f} s)")

    inputs = _fixed_inputs(saved_model, model_config.image_size)
    _pack(inputs, work / "inputs.npz")
    here = _run_scorer(sys.executable, saved_model, work / "inputs.npz", work / "ours.npz")
    there = _run_scorer(args.other_python, saved_model, work / "inputs.npz", work / "theirs.npz")
    for who, summary in (("this interpreter", here), (args.other_python, there)):
        print(f"  {who}: TensorFlow {summary['tensorflow']} (Python {summary['python']}), "
              f"{len(summary['signatures'])} signatures, keras_siamese imported: "
              f"{summary['keras_siamese_imported']}")

    problems = []
    if here["signatures"] != there["signatures"]:
        problems.append(f"signatures differ: {here['signatures']} against {there['signatures']}")
    if sorted(here["signatures"]) != sorted(export.SIGNATURES):
        problems.append(f"signatures are not export.SIGNATURES: {here['signatures']}")
    if there["keras_siamese_imported"]:
        problems.append("the second interpreter imported keras_siamese")
    differences, largest = _compare(_unpack(work / "ours.npz"), _unpack(work / "theirs.npz"),
                                    args.atol, args.rtol)
    problems += differences
    outputs = len(_unpack(work / "ours.npz"))
    print(f"  {outputs} outputs of {len(here['signatures'])} signatures compared; largest float "
          f"difference {largest:.3g} (tolerance |a - b| <= {args.atol:g} + {args.rtol:g} |b|)")

    if args.memory:
        embedding_size = int(inputs["compare/query_embeddings"].shape[1])
        for python in (sys.executable, args.other_python):
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"import serving_release as s; "
                    f"s.measure_memory(sys.argv[1], 2, {model_config.image_size}, {embedding_size})")
            result = subprocess.run([python, "-I", "-c", code, str(saved_model)], check=False,
                                    capture_output=True, text=True, cwd=tempfile.gettempdir(),
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            line = (result.stdout.strip().splitlines() or [result.stderr[-2000:]])[-1]
            print(f"  memory ({args.preset}, MiB): {line}")
        weights = sum(p.stat().st_size for p in (saved_model / "variables").iterdir())
        print(f"  variables on disk: {weights / 2**20:.1f} MiB")

    if problems:
        print("VERDICT: FAIL. The export does not score the same in "
              f"TensorFlow {there['tensorflow']}:\n  " + "\n  ".join(problems))
        return 1
    print(f"VERDICT: PASS. The export loads in TensorFlow {there['tensorflow']} without "
          f"keras_siamese, has the same {len(there['signatures'])} signatures, and every output "
          f"agrees with TensorFlow {here['tensorflow']} within tolerance.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
