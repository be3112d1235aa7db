"""First-request latency of the local server with and without TF Serving's warm-up file.

    python bench/warmup.py [--preset cpu] [--repeats 5]

Exports the preset's network (untrained) once, and copies the version with its
``assets.extra/tf_serving_warmup_requests`` removed: the baseline, the same SavedModel otherwise.
Each round starts ``python -m keras_siamese.serve`` on 127.0.0.1 once for each of the two
versions, taking turns, and times over REST: the start (process start to its ``Serving`` line,
which comes once the version is loaded, and warmed up when it has the file), the first request
(a 20-way ``one_shot_encoded`` task of 105 x 105 PNG files, other sizes and counts than the
warm-up requests'), the first ``serving_default`` request after it (two pairs of pixels), and the
same 20-way task again (warm either way). Prints the medians over ``--repeats`` rounds and the
ratio of the baseline's to the warmed-up version's.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from common import print_machine
from PIL import Image

from keras_siamese import export
from keras_siamese.config import preset
from keras_siamese.model import build_siamese

REPO_ROOT = Path(__file__).resolve().parents[1]


def _png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    return {"b64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _bodies(rng: np.random.Generator) -> dict[str, dict]:
    """The timed requests: a 20-way task of PNG files, and two pairs of pixels."""
    images = rng.integers(0, 256, (21, 105, 105))
    pixels = images[:4, :, :, None].tolist()
    return {
        "one_shot_encoded": {"signature_name": "one_shot_encoded", "inputs": {
            "queries": [_png(images[0])], "support": [_png(image) for image in images[1:]]}},
        "serving_default": {"inputs": {"left": pixels[:2], "right": pixels[2:]}},
    }  # fmt: skip


def _serve_once(base: Path, bodies: dict[str, dict]) -> dict[str, float]:
    """Starts a server on ``base``, times its start and its first requests, stops it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "keras_siamese.serve", "--model_base_path", str(base),
         "--rest_api_port", "0", "--port", "-1", "--file_system_poll_wait_seconds", "0"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        for line in server.stdout:
            if line.startswith("Serving "):
                url = line.rsplit(" at ", 1)[1].strip() + "/v1/models/siamese:predict"
                break
        if url is None:
            raise SystemExit("the server did not start")
        times = {"start": time.perf_counter() - started}
        session = requests.Session()
        for name, body in (("first one_shot_encoded", bodies["one_shot_encoded"]),
                           ("first serving_default", bodies["serving_default"]),
                           ("second one_shot_encoded", bodies["one_shot_encoded"])):
            begin = time.perf_counter()
            response = session.post(url, json=body, timeout=300)
            times[name] = time.perf_counter() - begin
            if response.status_code != 200:
                raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
        return times
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", help="the network to export (untrained)")
    parser.add_argument("--repeats", type=int, default=5, help="server starts per version")
    args = parser.parse_args()
    print_machine()
    bodies = _bodies(np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warmed = export.export_saved_model(
            build_siamese(preset(args.preset).model), tmp / "warmed", "siamese"
        )
        baseline = tmp / "baseline" / "siamese" / "1"
        shutil.copytree(warmed, baseline)
        (baseline / "assets.extra" / export.WARMUP_FILE).unlink()
        records = len(export.read_warmup_file(warmed))
        bases = {"with warm-up": warmed.parent, "without (baseline)": baseline.parent}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in bases}
        for _ in range(args.repeats):  # the two versions take turns, round by round
            for name, base in bases.items():
                results[name].append(_serve_once(base, bodies))

    print(f"preset {args.preset}, {records} warm-up records, {args.repeats} server starts per "
          "version; medians in ms (ratio: baseline / with warm-up)")
    measures = list(results["with warm-up"][0])
    print(f"{'':22}" + "".join(f"{m:>26}" for m in measures))
    medians = {
        name: {m: statistics.median(run[m] for run in runs) * 1000 for m in measures}
        for name, runs in results.items()
    }
    for name, values in medians.items():
        print(f"{name:22}" + "".join(f"{values[m]:26.1f}" for m in measures))
    ratios = {m: medians["without (baseline)"][m] / medians["with warm-up"][m] for m in measures}
    print(f"{'ratio':22}" + "".join(f"{ratios[m]:25.2f}x" for m in measures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
