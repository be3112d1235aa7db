"""The local server under faults and hostile input: it keeps serving and loses nothing.

Real `python -m keras_siamese.serve` processes on loopback serve an untrained small network
(the answers only have to match the SavedModel's own): version folders that cannot be read,
parsed or loaded; requests past their deadline; and a corpus of hostile REST and gRPC requests
(huge declared shapes, NaN/null/Infinity, wrong dtypes, deep JSON, truncated and oversized
bodies, stalled clients). Each is answered with its status and a clear message, the server
answers a good request after each, and its peak memory stays bounded. Image "bombs" (a small
PNG declaring 20,000 x 20,000 pixels) are refused inside the SavedModel (tests/test_preprocessing.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from keras_siamese import export
from keras_siamese.model import build_siamese
from keras_siamese.serving import GrpcServingClient, ServingClient, ServingError
from keras_siamese.serving.server import HTTP_STATUS, _run, grpc_code

from conftest import blank_png
from test_serving import MAX_REQUEST_BYTES, Server

pytestmark = pytest.mark.slow

# Above the server's memory once it has answered a first request; a hostile request that got
# through (a float tensor declared 1x20000x20000x1 is 1.6 GB) would exceed it.
PEAK_RSS_GROWTH_BOUND = 512 * 1024 * 1024

GOOD_PIXELS = np.random.default_rng(0).integers(0, 256, (2, 105, 105, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def network(small_config):
    return build_siamese(small_config(paper_init=False))


@pytest.fixture(scope="module")
def base_path(network, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    export.export_saved_model(network, root, "siamese")
    return root / "siamese"


@pytest.fixture(scope="module")
def expected(base_path) -> np.ndarray:
    """The SavedModel's own probabilities for GOOD_PIXELS[:1] against GOOD_PIXELS[1:]."""
    signatures = tf.saved_model.load(str(base_path / "1")).signatures
    return signatures["serving_default"](
        left=tf.constant(GOOD_PIXELS[:1]), right=tf.constant(GOOD_PIXELS[1:])
    )["probability"].numpy()


@pytest.fixture(scope="module")
def server(base_path):
    server = Server(base_path, extra=["--threads", "4"])
    yield server
    assert server.stop() in (0, -15), "".join(server.output)[-3000:]


@pytest.fixture(scope="module")
def baseline_rss(server, expected) -> int:
    _assert_serves(server, expected)
    return server.peak_rss_bytes()


def _assert_serves(server: Server, expected: np.ndarray, timeout: float = 60) -> None:
    """A good request over REST (and gRPC) gets the right answer, within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            served = ServingClient(server.url, "siamese", timeout=30).probability(
                GOOD_PIXELS[:1], GOOD_PIXELS[1:]
            )
            grpc_client = GrpcServingClient(server.grpc_target, "siamese", timeout=30)
            try:
                by_grpc = grpc_client.probability(GOOD_PIXELS[:1], GOOD_PIXELS[1:])
            finally:
                grpc_client.close()
            break
        except ServingError as error:  # e.g. 504 while an abandoned request still computes
            if time.monotonic() > deadline:
                raise AssertionError(f"the server no longer answers: {error}") from None
            time.sleep(0.5)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    np.testing.assert_allclose(by_grpc, expected, atol=1e-6)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


# --- Hostile REST requests ------------------------------------------------------------------

PIXEL = [[[[0]]]]
HOSTILE_REST = [
    # (what, path suffix, raw body, status, message)
    ("NaN", ":predict", b'{"inputs": {"left": [[[[NaN]]]], "right": [[[[0]]]]}}', 400, "NaN"),
    ("Infinity", ":predict", b'{"inputs": {"left": [[[[Infinity]]]], "right": [[[[0]]]]}}', 400,
     "Infinity"),
    ("-Infinity", ":predict", b'{"inputs": {"left": [[[[-Infinity]]]], "right": [[[[0]]]]}}', 400,
     "Infinity"),
    ("null pixel", ":predict", json.dumps({"inputs": {"left": [[[[None]]]], "right": PIXEL}}), 400,
     "holds null"),
    ("beyond float32", ":predict", b'{"inputs": {"left": [[[[1e39]]]], "right": [[[[0]]]]}}', 400,
     "values must be finite"),
    ("beyond float64", ":predict", b'{"inputs": {"left": [[[[1e999]]]], "right": [[[[0]]]]}}', 400,
     "values must be finite"),
    ("huge integer", ":predict",
     b'{"inputs": {"left": [[[[' + b"9" * 5000 + b']]]], "right": [[[[0]]]]}}', 400, "JSON Parse error"),
    ("text pixels", ":predict", json.dumps({"inputs": {"left": [[[["0"]]]], "right": PIXEL}}), 400,
     "holds text"),
    ("boolean pixels", ":predict", json.dumps({"inputs": {"left": [[[[True]]]], "right": PIXEL}}),
     400, "holds booleans"),
    ("b64 for pixels", ":predict", json.dumps({"inputs": {"left": [_b64(b"x")], "right": PIXEL}}),
     400, 'input "left"'),
    ("null instances", ":predict", b'{"instances": null}', 400, '"instances" must be a non-empty list'),
    ("null inputs", ":predict", b'{"inputs": null}', 400, "the signature takes"),
    ("null body", ":predict", b"null", 400, "JSON object"),
    ("string body", ":predict", b'"inputs"', 400, "JSON object"),
    ("number body", ":predict", b"42", 400, "JSON object"),
    ("list signature name", ":predict", json.dumps({"signature_name": ["embed"], "inputs": [1]}),
     400, '"signature_name" must be a string'),
    ("object signature name", ":predict",
     json.dumps({"signature_name": {"a": 1}, "inputs": [1]}), 400, '"signature_name" must be a string'),
    ("deep JSON", ":predict", b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    ("deep inputs", ":predict",
     b'{"signature_name": "embed", "inputs": ' + b"[" * 900 + b"0" + b"]" * 900 + b"}", 400,
     'input "images"'),
    ("deep b64 inputs", ":predict",
     b'{"signature_name": "embed_encoded", "inputs": ' + b"[" * 900 + b'"x"' + b"]" * 900 + b"}", 400,
     "nested too deeply"),
    ("truncated JSON", ":predict", b'{"inputs": {"left": [[[[0', 400, "JSON Parse error"),
    ("not UTF-8", ":predict", b'{"inputs": "\xff\xfe"}', 400, "JSON Parse error"),
    ("big wrong shape", ":predict",
     b'{"inputs": {"left": [' + b"0," * (MAX_REQUEST_BYTES // 2 - 100) + b'0], "right": [0]}}', 400,
     'has shape'),
    ("oversized body", ":predict", b'{"inputs": [' + b"0," * MAX_REQUEST_BYTES + b"0]}", 413,
     "byte limit"),
    ("superscript version", "/versions/²:predict", b"{}", 400, "Malformed version"),
    ("text version", "/versions/abc", None, 400, "Malformed version"),
    ("huge version", "/versions/99999999999999999999999", None, 404, "Could not find version"),
]


@pytest.mark.parametrize(
    "path, body, status, message", [case[1:] for case in HOSTILE_REST],
    ids=[case[0] for case in HOSTILE_REST],
)
def test_hostile_rest_requests_get_their_status_and_the_server_serves_on(
    server, baseline_rss, expected, path, body, status, message
):
    url = f"{server.url}/v1/models/siamese{path}"
    response = requests.request("GET" if body is None else "POST", url, data=body, timeout=60)
    assert response.status_code == status, response.text[:500]
    assert message in response.json()["error"], response.text[:500]
    _assert_serves(server, expected)
    assert server.peak_rss_bytes() < baseline_rss + PEAK_RSS_GROWTH_BOUND


def _raw_http(server: Server, data: bytes, close: bool = True) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(data)
    if close:
        connection.close()
    return connection


def test_truncated_and_stalled_bodies_do_not_block_other_clients(server, baseline_rss, expected):
    head = (b"POST /v1/models/siamese:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    # A body cut off by a closed connection is never answered (nor run).
    _raw_http(server, head + b'{"inputs": [')
    # More stalled clients (headers, then nothing) than the server has threads.
    stalled = [_raw_http(server, head + b"{", close=False) for _ in range(12)]
    try:
        start = time.monotonic()
        _assert_serves(server, expected, timeout=20)
        assert time.monotonic() - start < 20
    finally:
        for connection in stalled:
            connection.close()
    assert server.peak_rss_bytes() < baseline_rss + PEAK_RSS_GROWTH_BOUND


# --- Hostile gRPC requests ------------------------------------------------------------------


def _proto(value=None, dtype=tf.float32, shape=None):
    return tf.make_tensor_proto(value, dtype=dtype, shape=shape)


def _good_proto():
    return tf.make_tensor_proto(GOOD_PIXELS[:1])


def _declared(shape, content: bytes = b"", dtype=tf.float32):
    """A TensorProto declaring ``shape`` and holding only ``content``."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.tensor_content = content
    return proto


def _unknown_rank():
    proto = _good_proto()
    proto.tensor_shape.Clear()
    proto.tensor_shape.unknown_rank = True
    return proto


HOSTILE_GRPC = [
    # (what, signature, inputs builder, code, message)
    ("declared 20000x20000 from one value", "serving_default",
     lambda: {"left": _proto(1.0, shape=[1, 20000, 20000, 1]), "right": _good_proto()},
     "INVALID_ARGUMENT", "at most"),
    ("declared 500x500 from one value", "serving_default",
     lambda: {"left": _proto(1.0, shape=[1, 500, 500, 1]), "right": _good_proto()},
     "INVALID_ARGUMENT", "holds 1"),
    ("declared 500x500 from 40 bytes", "serving_default",
     lambda: {"left": _declared([1, 500, 500, 1], b"\0" * 40), "right": _good_proto()},
     "INVALID_ARGUMENT", "holds 40"),
    ("negative dimension", "serving_default",
     lambda: {"left": _declared([1, -5, 105, 1]), "right": _good_proto()},
     "INVALID_ARGUMENT", "has shape"),
    ("unknown rank", "serving_default",
     lambda: {"left": _unknown_rank(), "right": _good_proto()}, "INVALID_ARGUMENT", "no shape"),
    ("DOUBLE to a float input", "serving_default",
     lambda: {"left": tf.make_tensor_proto(GOOD_PIXELS[:1].astype(np.float64)), "right": _good_proto()},
     "INVALID_ARGUMENT", "DT_DOUBLE; the signature takes DT_FLOAT"),
    ("STRING to a float input", "serving_default",
     lambda: {"left": tf.make_tensor_proto([b"x"]), "right": _good_proto()},
     "INVALID_ARGUMENT", "DT_STRING; the signature takes DT_FLOAT"),
    ("FLOAT to a string input", "embed_encoded",
     lambda: {"images": _good_proto()}, "INVALID_ARGUMENT", "DT_FLOAT; the signature takes DT_STRING"),
    ("undefined dtype", "serving_default",
     lambda: {"left": _declared([1, 1, 1, 1], b"\0" * 4).__class__(dtype=999),
              "right": _good_proto()},
     "INVALID_ARGUMENT", "dtype 999"),
    ("wrong rank", "serving_default",
     lambda: {"left": tf.make_tensor_proto(GOOD_PIXELS[:1, ..., 0]), "right": _good_proto()},
     "INVALID_ARGUMENT", "has shape [1, 105, 105]"),
    ("NaN", "serving_default",
     lambda: {"left": tf.make_tensor_proto(np.full((1, 4, 4, 1), np.nan, np.float32)),
              "right": _good_proto()}, "INVALID_ARGUMENT", "values must be finite"),
    ("Infinity", "serving_default",
     lambda: {"left": tf.make_tensor_proto(np.full((1, 4, 4, 1), np.inf, np.float32)),
              "right": _good_proto()}, "INVALID_ARGUMENT", "values must be finite"),
    ("strings declared but absent", "embed_encoded",
     lambda: {"images": _declared([1_000_000], dtype=tf.string)}, "INVALID_ARGUMENT", "holds 0"),
    ("missing input", "serving_default", lambda: {"left": _good_proto()}, "INVALID_ARGUMENT",
     "the signature takes"),
    ("unknown signature", "nope", lambda: {"left": _good_proto()}, "INVALID_ARGUMENT",
     "not found in signature def"),
    ("oversized message", "serving_default",
     lambda: {"left": tf.make_tensor_proto(np.zeros((MAX_REQUEST_BYTES // 4 + 8,), np.float32)),
              "right": _good_proto()}, "RESOURCE_EXHAUSTED", ""),
]


@pytest.mark.parametrize(
    "signature, inputs, code, message", [case[1:] for case in HOSTILE_GRPC],
    ids=[case[0] for case in HOSTILE_GRPC],
)
def test_hostile_grpc_requests_are_refused_before_allocation(
    server, baseline_rss, expected, signature, inputs, code, message
):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "siamese"
    request.model_spec.signature_name = signature
    for key, proto in inputs().items():
        request.inputs[key].CopyFrom(proto)
    with grpc.insecure_channel(server.grpc_target, options=[
        ("grpc.max_send_message_length", 4 * MAX_REQUEST_BYTES),
    ]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert caught.value.code().name == code, caught.value.details()
    assert message in caught.value.details()
    _assert_serves(server, expected)
    assert server.peak_rss_bytes() < baseline_rss + PEAK_RSS_GROWTH_BOUND


# --- TensorFlow errors: TF Serving's statuses ------------------------------------------------


class _Signatures:
    """Stands in for a loaded version whose one signature, ``s(x)``, raises ``error`` as a
    failing TensorFlow function does."""

    def __init__(self, error: type[tf.errors.OpError]):
        class Signature:
            structured_input_signature = ((), {"x": tf.TensorSpec([None], tf.float32)})

            def __call__(self, x):
                raise error(None, None, f"raised {error.__name__}\n\t [[{{node x}}]]")

        self.signatures = {"s": Signature()}


@pytest.mark.parametrize("error, status, code", [
    (tf.errors.InvalidArgumentError, 400, "INVALID_ARGUMENT"),
    (tf.errors.ResourceExhaustedError, 429, "RESOURCE_EXHAUSTED"),
    (tf.errors.NotFoundError, 404, "NOT_FOUND"),
    (tf.errors.DeadlineExceededError, 504, "DEADLINE_EXCEEDED"),
    (tf.errors.UnimplementedError, 501, "UNIMPLEMENTED"),
    (tf.errors.FailedPreconditionError, 400, "FAILED_PRECONDITION"),
    (tf.errors.OutOfRangeError, 400, "OUT_OF_RANGE"),
    (tf.errors.UnavailableError, 503, "UNAVAILABLE"),
    (tf.errors.InternalError, 500, "INTERNAL"),
    (tf.errors.UnknownError, 500, "INTERNAL"),
])
def test_tensorflow_errors_get_tf_servings_statuses(error, status, code):
    with pytest.raises(ServingError, match=f"raised {error.__name__}") as caught:
        _run(_Signatures(error), "s", {"x": [1.0]})
    assert caught.value.status == status == HTTP_STATUS[code]
    assert "[[" not in caught.value.message  # TF's graph annotations are cut off
    # Over gRPC the code itself, except UNKNOWN, which is answered as INTERNAL.
    assert grpc_code(caught.value) == code
    assert grpc_code(ServingError(500, "anything")) == "INTERNAL"


# --- Versions that cannot be read or loaded --------------------------------------------------


def test_the_poller_survives_odd_and_unreadable_folders(network, small_config, tmp_path):
    root = tmp_path / "saved_models"
    export.export_saved_model(network, root, "siamese")
    base = root / "siamese"
    for name in ("²", "abc", "٣", "1x"):  # "٣".isdigit() too
        (base / name).mkdir()
    server = Server(base, poll=0.2)
    try:
        client = ServingClient(server.url, "siamese", timeout=60)
        assert client.wait_until_available(60) == 1
        if os.geteuid() != 0:  # root reads anything
            (base / "9").mkdir(mode=0)
            _wait_for(lambda: any(s["version"] == "9" for s in client.status()), "version 9 reported")
            (base / "9").chmod(0o755)
            shutil.rmtree(base / "9")
        # The base folder vanishes (listing fails), then comes back with a new version.
        moved = root / "moved"
        base.rename(moved)
        time.sleep(1)
        assert client.status()[0]["state"] == "AVAILABLE"
        assert client.probability(GOOD_PIXELS[:1], GOOD_PIXELS[1:]).shape == (1,)
        moved.rename(base)
        assert export.export_saved_model(
            build_siamese(small_config(paper_init=False)), root, "siamese", version=2
        ) == base / "2"
        _wait_for(lambda: client.status()[0] == {
            "version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}
        }, "version 2 served")
        assert server.process.poll() is None
        log = "".join(server.output)
        assert "Traceback" not in log
    finally:
        server.stop()
    output = server.process.stdout.read()
    assert "cannot list" in output and "Traceback" not in output


def test_a_half_copied_only_version_is_reported_then_served_once_complete(
    base_path, expected, tmp_path
):
    base = tmp_path / "siamese"
    shutil.copytree(base_path / "1", base / "1")
    graph = (base / "1" / "saved_model.pb").read_bytes()
    (base / "1" / "saved_model.pb").write_bytes(graph[: len(graph) // 2])
    server = Server(base, poll=0.2, extra=["--load_retry_interval_micros", "200000"])
    try:
        # The command says so, and still serves (the poller keeps trying).
        printed = "".join(server.output)
        assert "no version of siamese is available yet" in printed
        assert "version 1 failed to load" in printed
        client = ServingClient(server.url, "siamese", timeout=60)
        grpc_client = GrpcServingClient(server.grpc_target, "siamese", timeout=60)
        # Status tells the truth: no AVAILABLE, the version's END state and its error.
        for status in (client.status(), grpc_client.status()):
            assert [(s["version"], s["state"]) for s in status] == [("1", "END")]
            assert status[0]["status"]["error_code"] != "OK"
            assert status[0]["status"]["error_message"]
        assert "retry" in client.status()[0]["status"]["error_message"]
        # Predictions are refused as unavailable, not answered.
        with pytest.raises(ServingError, match="no version available") as caught:
            client.probability(GOOD_PIXELS[:1], GOOD_PIXELS[1:])
        assert caught.value.status == 503
        with pytest.raises(ServingError, match="no version available") as caught:
            grpc_client.probability(GOOD_PIXELS[:1], GOOD_PIXELS[1:])
        assert caught.value.status == "UNAVAILABLE"
        with pytest.raises(ServingError, match="failed to load") as caught:
            ServingClient(server.url, "siamese", version=1).probability(GOOD_PIXELS, GOOD_PIXELS)
        assert caught.value.status == 503
        # The copy completes: a later poll loads it.
        (base / "1" / "saved_model.pb").write_bytes(graph)
        assert client.wait_until_available(60) == 1
        _assert_serves(server, expected)
        grpc_client.close()
    finally:
        server.stop()


def test_failed_loads_are_retried_with_back_off_then_given_up(base_path, tmp_path):
    base = tmp_path / "siamese"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"truncated")
    server = Server(base, poll=0.1, extra=[
        "--load_retry_interval_micros", "100000", "--max_num_load_retries", "2",
    ])
    try:
        client = ServingClient(server.url, "siamese", timeout=60)
        _wait_for(lambda: "no more retries" in client.status()[0]["status"]["error_message"],
                  "the retries to run out")
    finally:
        server.stop()
    output = "".join(server.output) + server.process.stdout.read()
    # The first load and two retries, 0.1 s then 0.2 s apart; then no more.
    assert [f"(attempt {n})" in output for n in (1, 2, 3, 4)] == [True, True, True, False]


# --- Deadlines ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hurried_server(base_path):
    """A server with a 1 s request deadline (and so a 1 s idle-connection timeout)."""
    server = Server(base_path, extra=["--rest_api_timeout_in_ms", "1000", "--threads", "2"])
    yield server
    server.stop()


def _heavy_one_shot() -> dict[str, list[bytes]]:
    """Test-time-augmented scoring of 64 x 256 blank images of 2048 x 2048 pixels (within the
    export's limits on pixels, images and pairs): seconds of decoding and resizing on any
    machine, for a body of a few kilobytes."""
    png = blank_png((2048, 2048))
    return {"queries": [png] * 64, "support": [png] * 256}


def test_a_request_past_its_deadline_answers_504(hurried_server, expected):
    images = _heavy_one_shot()
    body = {"signature_name": "one_shot_tta_encoded",
            "inputs": {key: [_b64(png) for png in value] for key, value in images.items()}}
    start = time.monotonic()
    response = requests.post(f"{hurried_server.url}/v1/models/siamese:predict", json=body, timeout=60)
    assert response.status_code == 504, response.text[:500]
    assert "Deadline exceeded" in response.json()["error"]
    assert time.monotonic() - start < 5
    _assert_serves(hurried_server, expected)


def test_grpc_requests_are_bounded_by_the_server_and_the_client_deadline(hurried_server, expected):
    images = _heavy_one_shot()
    for client_timeout in (60, 0.5):
        grpc_client = GrpcServingClient(hurried_server.grpc_target, "siamese", timeout=client_timeout)
        start = time.monotonic()
        with pytest.raises(ServingError) as caught:
            grpc_client.predict(images, "one_shot_tta_encoded")
        assert caught.value.status == "DEADLINE_EXCEEDED", caught.value.message
        assert time.monotonic() - start < 5
        grpc_client.close()
    _assert_serves(hurried_server, expected)


def test_stalled_connections_are_closed(hurried_server):
    head = (b"POST /v1/models/siamese:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100\r\n\r\n{")
    connection = _raw_http(hurried_server, head, close=False)
    try:
        connection.settimeout(30)
        start = time.monotonic()
        try:
            closed = connection.recv(1024) == b""
        except ConnectionResetError:
            closed = True
        assert closed and time.monotonic() - start < 15
    finally:
        connection.close()
