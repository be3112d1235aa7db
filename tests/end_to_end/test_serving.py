"""The local TF-Serving-compatible server, started as a real process, and the REST client.

The server is `python -m keras_siamese.serve` on a free loopback port, serving SavedModels
exported from a really trained model; requests go through `keras_siamese.serving` and as raw
HTTP in both of TF Serving's request formats.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from keras_siamese import evaluation, export
from keras_siamese.hardware import peak_memory_mib
from keras_siamese.model import build_siamese
from keras_siamese.serving import GrpcServingClient, ServingClient, ServingError

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

MAX_REQUEST_BYTES = 4 * 1024 * 1024


class Server:
    """`python -m keras_siamese.serve` in a subprocess; `url` once it listens.

    `extra` are more command-line flags; `output` holds what it printed up to "Serving ...".
    """

    def __init__(self, base_path, name="siamese", poll=0.2, extra=()):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "keras_siamese.serve",
                "--model_name", name,
                "--model_base_path", str(base_path),
                "--rest_api_port", "0",
                "--port", "0",
                "--file_system_poll_wait_seconds", str(poll),
                "--max_request_bytes", str(MAX_REQUEST_BYTES),
                *map(str, extra),
            ],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("gRPC at "):
                self.grpc_target = line.split(" at ", 1)[1].strip()
            if line.startswith("Serving "):
                self.url = line.rsplit(" at ", 1)[1].strip()
                return
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(self.output)[-3000:])

    def peak_rss_bytes(self) -> int:
        """The server process's peak resident memory so far."""
        return round(peak_memory_mib(self.process.pid) * 1024**2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture(scope="module")
def model(trained_run):
    return trained_run[2]


@pytest.fixture(scope="module")
def base_path(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    export.export_saved_model(model, root, "siamese")
    return root / "siamese"


@pytest.fixture(scope="module")
def server(base_path):
    server = Server(base_path)
    yield server
    assert server.stop() in (0, -15), "".join(server.output)[-3000:]


@pytest.fixture(scope="module")
def client(server) -> ServingClient:
    client = ServingClient(server.url, "siamese", timeout=120)
    assert client.wait_until_available(timeout=60) == 1
    return client


@pytest.fixture(scope="module")
def signatures(base_path):
    return tf.saved_model.load(str(base_path / "1")).signatures


@pytest.fixture(scope="module")
def images(omniglot) -> np.ndarray:
    """Six real evaluation images, uint8 (6, 105, 105, 1), as stored."""
    return omniglot["evaluation"].images[::500][:6]


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


# --- The client ---------------------------------------------------------------------------


def test_status_and_metadata(client):
    assert client.status() == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    metadata = client.metadata()
    for name in export.SIGNATURES:
        assert metadata[name]["method_name"] == "tensorflow/serving/predict"
    assert sorted(metadata["one_shot"]["inputs"]) == ["queries", "support"]
    assert metadata["pair_encoded"]["inputs"]["left"]["dtype"] == "DT_STRING"
    assert sorted(metadata["one_shot"]["outputs"]) == ["best", "scores"]


def test_client_probabilities_match_the_saved_model(client, signatures, images):
    left, right = images[:3], images[3:]
    served = client.probability(left, right)
    expected = signatures["serving_default"](
        left=left.astype(np.float32), right=right.astype(np.float32)
    )["probability"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-6)
    # (N, H, W) arrays, PNG bytes and PNG files on disk are the same images.
    np.testing.assert_allclose(client.probability(left[..., 0], right[..., 0]), expected, atol=1e-6)
    files = [_png(image) for image in images]
    np.testing.assert_allclose(client.probability(files[:3], files[3:]), expected, atol=1e-6)


def test_client_embed_and_one_shot_from_files(client, signatures, images, tmp_path):
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(_png(image))
    embedding = client.embed(paths)
    expected = signatures["embed"](images=images.astype(np.float32))["embedding"].numpy()
    np.testing.assert_allclose(embedding, expected, atol=1e-6)
    scores, best = client.one_shot(paths[:2], paths[2:])
    assert scores.shape == (2, 4) and best.shape == (2,)
    np.testing.assert_array_equal(best, scores.argmax(axis=1))
    array_scores, _ = client.one_shot(images[:2], images[2:])
    np.testing.assert_allclose(scores, array_scores, atol=1e-6)
    # Test-time augmentation through one_shot_tta(_encoded): the signature's own scores.
    augmented, augmented_best = client.one_shot(paths[:2], paths[2:], augmented=True)
    expected = signatures["one_shot_tta"](
        queries=images[:2].astype(np.float32), support=images[2:].astype(np.float32)
    )
    np.testing.assert_allclose(augmented, expected["scores"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(augmented_best, expected["best"].numpy())
    assert not np.allclose(augmented, scores, atol=1e-4)


def test_lake_runs_over_rest_with_png_bytes_match_the_offline_evaluation(
    client, model, lake_runs
):
    tasks = evaluation.lake_tasks(lake_runs)
    offline = evaluation.SiameseScorer(model)(tasks)
    served = np.concatenate([
        client.one_shot(list(lake_runs.test_files[run]), list(lake_runs.training_files[run]))[0]
        for run in range(len(lake_runs.answers))
    ])
    np.testing.assert_allclose(served, offline, atol=1e-5)
    assert evaluation.accuracy(served, tasks) == evaluation.accuracy(offline, tasks)


def test_client_raises_the_server_errors(server, client, images):
    with pytest.raises(ServingError, match="not found in signature def") as caught:
        client.predict({"images": images}, signature_name="no_such_signature")
    assert caught.value.status == 400
    with pytest.raises(ServingError, match="Specific\\(siamese, 9\\)") as caught:
        ServingClient(server.url, "siamese", version=9).probability(images, images)
    assert caught.value.status == 404
    with pytest.raises(ServingError) as caught:
        ServingClient("http://127.0.0.1:9", "siamese", timeout=5).status()
    assert caught.value.status is None and "cannot reach" in caught.value.message
    with pytest.raises(ValueError, match="grey-scale"):
        client.embed(np.zeros((2, 8, 8, 3)))


# --- Raw HTTP, both request formats --------------------------------------------------------


def test_columnar_and_row_formats_give_the_same_answers(server, signatures, images):
    url = f"{server.url}/v1/models/siamese:predict"
    pixels = images.astype(int)[..., 0][..., None].tolist()
    columnar = requests.post(url, json={"inputs": {"left": pixels[:3], "right": pixels[3:]}})
    row = requests.post(
        url, json={"instances": [{"left": l, "right": r} for l, r in zip(pixels[:3], pixels[3:])]}
    )
    assert columnar.status_code == row.status_code == 200
    assert np.allclose(columnar.json()["outputs"], row.json()["predictions"])
    expected = signatures["serving_default"](
        left=images[:3].astype(np.float32), right=images[3:].astype(np.float32)
    )["probability"].numpy()
    np.testing.assert_allclose(columnar.json()["outputs"], expected, atol=1e-6)

    # b64 images; a single-input signature takes a bare list of instances.
    files = [_b64(_png(image)) for image in images]
    by_row = requests.post(url, json={"signature_name": "embed_encoded", "instances": files})
    by_column = requests.post(url, json={"signature_name": "embed_encoded", "inputs": files})
    assert by_row.status_code == by_column.status_code == 200
    np.testing.assert_allclose(by_row.json()["predictions"], by_column.json()["outputs"], atol=1e-6)

    # Several outputs: a dict per instance (row) or per output (columnar).
    one_shot = requests.post(
        url, json={"signature_name": "one_shot_encoded", "inputs": {"queries": files[:2], "support": files}}
    ).json()["outputs"]
    assert np.shape(one_shot["scores"]) == (2, 6) and np.shape(one_shot["best"]) == (2,)
    rows = requests.post(
        url,
        json={"signature_name": "one_shot_encoded",
              "instances": [{"queries": q, "support": s} for q, s in zip(files, files)]},
    ).json()["predictions"]
    assert len(rows) == 6 and sorted(rows[0]) == ["best", "scores"]


def test_versioned_urls(server):
    assert requests.get(f"{server.url}/v1/models/siamese/versions/1").status_code == 200
    metadata = requests.get(f"{server.url}/v1/models/siamese/versions/1/metadata").json()
    assert metadata["model_spec"] == {"name": "siamese", "signature_name": "", "version": "1"}
    assert "one_shot" in metadata["metadata"]["signature_def"]["signature_def"]


BAD_REQUESTS = [
    # (what, method, path, body, status, message)
    ("malformed JSON", "POST", ":predict", b"{not json", 400, "JSON Parse error"),
    ("not an object", "POST", ":predict", b"[1, 2]", 400, "JSON object"),
    ("no inputs", "POST", ":predict", {"signature_name": "embed"}, 400, "exactly one of"),
    ("both formats", "POST", ":predict", {"inputs": [], "instances": []}, 400, "exactly one of"),
    ("unknown signature", "POST", ":predict", {"signature_name": "nope", "inputs": [[0]]}, 400,
     'Serving signature name: "nope" not found'),
    ("missing input", "POST", ":predict", {"inputs": {"left": [[[[0]]]]}}, 400, "the signature takes"),
    ("wrong shape", "POST", ":predict", {"inputs": {"left": [[1, 2]], "right": [[1, 2]]}}, 400,
     'input "left" has shape [1, 2]'),
    ("ragged shape", "POST", ":predict", {"inputs": {"left": [[[[1]], [[2], [3]]]], "right": [[[[1]]]]}},
     400, 'input "left" is not a float32 tensor'),
    ("text for pixels", "POST", ":predict", {"signature_name": "embed", "inputs": [[[["a"]]]]}, 400,
     'input "images" holds text'),
    ("pixels for files", "POST", ":predict", {"signature_name": "embed_encoded", "inputs": [1, 2]}, 400,
     'input "images" takes strings'),
    ("bad base64", "POST", ":predict", {"signature_name": "embed_encoded", "inputs": [{"b64": "%%%"}]},
     400, "invalid base64"),
    ("not an image", "POST", ":predict",
     {"signature_name": "embed_encoded", "inputs": [_b64(b"plain text")]}, 400,
     "Unknown image file format"),
    ("truncated PNG", "POST", ":predict",
     {"signature_name": "embed_encoded", "inputs": [_b64(b"\x89PNG\r\n\x1a\n\0\0")]}, 400,
     "PNG"),
    ("mismatched row batch", "POST", ":predict", {"signature_name": "embed", "instances": [{"x": 1}]},
     400, "the signature takes"),
    ("unknown version", "POST", "/versions/7:predict", {"inputs": []}, 404, "Specific(siamese, 7)"),
    # "²".isdigit() is true but int("²") fails: versions are ASCII digits.
    ("superscript version", "POST", "/versions/²:predict", {"inputs": []}, 400, "Malformed version"),
    ("superscript version status", "GET", "/versions/²", None, 400, "Malformed version"),
    ("text version", "GET", "/versions/abc/metadata", None, 400, "Malformed version"),
    ("null pixel", "POST", ":predict", {"inputs": {"left": [[[[None]]]], "right": [[[[0]]]]}}, 400,
     'input "left" holds null'),
    ("NaN pixel", "POST", ":predict", b'{"inputs": {"left": [[[[NaN]]]], "right": [[[[0]]]]}}', 400,
     "NaN is not a number"),
    ("list as signature name", "POST", ":predict", {"signature_name": ["embed"], "inputs": [1]}, 400,
     '"signature_name" must be a string'),
    ("unknown model", "POST", "//other:predict", {"inputs": []}, 404, "Latest(other)"),
    ("unknown model status", "GET", "//other", None, 404, "Could not find any versions of model other"),
    ("GET predict", "GET", ":predict", None, 405, "takes POST"),
    ("classify", "POST", ":classify", {"examples": []}, 501, "not implemented"),
    ("unknown method", "POST", ":explode", {}, 404, "unknown method"),
    ("unknown URL", "GET", "/v1/nothing", None, 404, "Malformed request"),
]


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_and_a_clear_message(server, method, path, body, status, message):
    if path.startswith("//"):
        url = f"{server.url}/v1/models/{path[2:]}"
    elif path.startswith("/v1"):
        url = server.url + path
    else:
        url = f"{server.url}/v1/models/siamese{path}"
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body))
    response = requests.request(method, url, data=data, timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    # ... and the server is still there.
    assert requests.get(f"{server.url}/v1/models/siamese", timeout=30).status_code == 200


def test_oversized_requests_are_refused(server):
    body = b'{"inputs": [' + b"0," * MAX_REQUEST_BYTES + b"0]}"
    response = requests.post(f"{server.url}/v1/models/siamese:predict", data=body, timeout=60)
    assert response.status_code == 413
    assert "byte limit" in response.json()["error"]


# --- Versions -------------------------------------------------------------------------------


def test_new_versions_are_picked_up_and_broken_ones_never_served(
    model, small_config, images, tmp_path
):
    root = tmp_path / "saved_models"
    export.export_saved_model(model, root, "siamese")
    server = Server(root / "siamese", poll=0.2)
    try:
        client = ServingClient(server.url, "siamese", timeout=120)
        assert client.wait_until_available(60) == 1
        before = client.probability(images[:3], images[3:])

        # A half-written export (what export_saved_model stages before its rename) and a
        # corrupt numbered version: neither may ever be served.
        staging = root / "siamese" / ".tmp-0123"
        shutil.copytree(root / "siamese" / "1", staging)
        (root / "siamese" / "2").mkdir()
        (root / "siamese" / "2" / "saved_model.pb").write_bytes(b"truncated")
        deadline = time.monotonic() + 60
        while not any(s["version"] == "2" for s in client.status()):
            assert time.monotonic() < deadline, "the broken version was never reported"
            time.sleep(0.2)
        failed = {s["version"]: s for s in client.status()}["2"]
        assert failed["state"] == "END" and failed["status"]["error_code"] != "OK"
        np.testing.assert_allclose(client.probability(images[:3], images[3:]), before)

        # A good new version (a different, untrained model) replaces version 1.
        other = build_siamese(small_config(paper_init=False))
        assert export.export_saved_model(other, root, "siamese") == root / "siamese" / "3"
        deadline = time.monotonic() + 60
        while "3" not in {s["version"] for s in client.status() if s["state"] == "AVAILABLE"}:
            assert time.monotonic() < deadline, "version 3 was never served"
            time.sleep(0.2)
        after = client.probability(images[:3], images[3:])
        expected = tf.saved_model.load(str(root / "siamese" / "3")).signatures["serving_default"](
            left=images[:3].astype(np.float32), right=images[3:].astype(np.float32)
        )["probability"].numpy()
        np.testing.assert_allclose(after, expected, atol=1e-6)
        assert not np.allclose(after, before)
        with pytest.raises(ServingError, match="Specific\\(siamese, 1\\)"):
            ServingClient(server.url, "siamese", version=1).probability(images, images)
    finally:
        server.stop()


def test_serve_without_a_model_folder_exits_with_a_clear_message(run_python, tmp_path):
    result = run_python(
        "-m", "keras_siamese.serve", "--model_base_path", tmp_path / "missing", "--rest_api_port", "0"
    )
    assert result.returncode != 0
    assert "is not a folder" in result.stderr and "keras_siamese.export" in result.stderr


# --- gRPC ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_client(server, client) -> GrpcServingClient:
    grpc_client = GrpcServingClient(server.grpc_target, "siamese", timeout=120)
    yield grpc_client
    grpc_client.close()


def test_grpc_status_and_predictions_match_rest(grpc_client, client, images):
    assert grpc_client.wait_until_available(30) == 1
    assert grpc_client.status() == client.status()
    np.testing.assert_allclose(
        grpc_client.probability(images[:3], images[3:]), client.probability(images[:3], images[3:]),
        atol=1e-6,
    )
    files = [_png(image) for image in images]
    grpc_scores, grpc_best = grpc_client.one_shot(files[:2], files)
    rest_scores, rest_best = client.one_shot(files[:2], files)
    np.testing.assert_allclose(grpc_scores, rest_scores, atol=1e-6)
    np.testing.assert_allclose(
        grpc_client.one_shot(files[:2], files, augmented=True)[0],
        client.one_shot(files[:2], files, augmented=True)[0],
        atol=1e-6,
    )
    np.testing.assert_array_equal(grpc_best, rest_best)
    assert grpc_client.embed(images).shape == client.embed(images).shape


def test_grpc_errors_carry_the_status_code(server, grpc_client, images):
    with pytest.raises(ServingError, match="not found in signature def") as caught:
        grpc_client.predict({"images": images}, signature_name="nope")
    assert caught.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ServingError, match="Unknown image file format") as caught:
        grpc_client.embed([b"not an image"])
    assert caught.value.status == "INVALID_ARGUMENT"
    other = GrpcServingClient(server.grpc_target, "siamese", version=9)
    with pytest.raises(ServingError, match="Specific\\(siamese, 9\\)") as caught:
        other.probability(images, images)
    assert caught.value.status == "NOT_FOUND"
    other.close()
