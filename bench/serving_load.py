"""The local server under load: throughput, latency and correctness across a version swap.

    python bench/serving_load.py [--clients 8] [--seconds 30] [--threads 4]

Exports two versions of the smoke preset's network (untrained, different weights, so their
scores differ), starts ``python -m keras_siamese.serve`` on 127.0.0.1 with the first, and runs
``--clients`` client threads for ``--seconds``, and at least a quarter of that after the new
version is in service (every loop stops by itself at 4 x ``--seconds`` in any case): half
over REST, half over gRPC, each sending a fixed mix of good requests (a 20-way ``one_shot_encoded`` task
as PNG files, a 5-way ``one_shot`` task as pixels, two pairs through
``serving_default``) and bad ones (a wrong shape, a ``null`` pixel, malformed JSON, a gRPC
tensor declaring far more elements than it holds). A quarter of the way in, the second version is moved
into the server's folder (as ``export`` does: a rename) and the server swaps to it.

Every good answer is compared with the two versions' answers computed in this process first: it
must match one of them (and over gRPC, the one the answer names). Every bad request must get its
4xx / INVALID_ARGUMENT. Prints requests per second, the median (p50) and p99 latency of good
requests, wrong answers and failed good requests (both must be 0), and the server's peak memory;
exits non-zero if anything was wrong.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import tensorflow as tf
from PIL import Image

from common import print_machine
from keras_siamese import export
from keras_siamese.config import preset
from keras_siamese.hardware import peak_memory_mib
from keras_siamese.model import build_siamese

REPO_ROOT = Path(__file__).resolve().parents[1]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0].astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _good_requests(rng: np.random.Generator) -> list[dict]:
    """The good requests: signature, inputs (numpy or PNG bytes) and an output to compare."""
    pixels = rng.integers(0, 256, (21, 105, 105, 1)).astype(np.float32)
    files = [_png(image) for image in pixels]
    return [
        {"signature": "one_shot_encoded", "output": "scores",
         "inputs": {"queries": files[:1], "support": files[1:21]}},
        {"signature": "one_shot", "output": "scores",
         "inputs": {"queries": pixels[:1], "support": pixels[1:6]}},
        {"signature": "serving_default", "output": "probability",
         "inputs": {"left": pixels[6:8], "right": pixels[8:10]}},
    ]


def _expected(version_dir: Path, good: list[dict]) -> list[np.ndarray]:
    signatures = tf.saved_model.load(str(version_dir)).signatures
    return [
        signatures[case["signature"]](**{k: tf.constant(v) for k, v in case["inputs"].items()})[
            case["output"]
        ].numpy()
        for case in good
    ]


def _rest_body(inputs: dict, signature: str) -> bytes:
    def value(v):
        if isinstance(v, np.ndarray):
            return v.astype(int).tolist()
        return [{"b64": base64.b64encode(item).decode("ascii")} for item in v]

    return json.dumps({"signature_name": signature, "inputs": {k: value(v) for k, v in inputs.items()}}).encode()


BAD_REST = [
    b'{"inputs": {"left": [[1, 2]], "right": [[1, 2]]}}',  # wrong shape
    b'{"inputs": {"left": [[[[null]]]], "right": [[[[0]]]]}}',  # null pixel
    b'{"inputs": {"left": [[[[0',  # malformed JSON
]


class Tally:
    """What the clients saw, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.good = self.wrong = self.failed = 0
        self.bad = self.bad_misanswered = 0
        self.versions = {1: 0, 2: 0}
        self.notes: list[str] = []

    def bad_request(self, refused: bool) -> None:
        """Counts a bad request, and whether the server refused it as it should."""
        with self.lock:
            self.bad += 1
            self.bad_misanswered += not refused

    def note(self, message: str) -> None:
        with self.lock:
            if len(self.notes) < 10:
                self.notes.append(message)


class Stop:
    """When the clients stop: when told to, and in any case at ``latest`` (time.monotonic())."""

    def __init__(self, latest: float):
        self.latest = latest
        self.event = threading.Event()

    def now(self) -> bool:
        return self.event.is_set() or time.monotonic() >= self.latest


def _matches(value: np.ndarray, expected: dict[int, np.ndarray]) -> int | None:
    for version, answer in expected.items():
        if value.shape == answer.shape and np.allclose(value, answer, atol=1e-5):
            return version
    return None


def rest_client(url: str, good: list[dict], expected: list[dict], stop: Stop, tally: Tally):
    session = requests.Session()
    bodies = [_rest_body(case["inputs"], case["signature"]) for case in good]
    i = 0
    while not stop.now():
        i += 1
        if i % 4 == 0:  # one request in four is bad
            body = BAD_REST[(i // 4) % len(BAD_REST)]
            try:
                response = session.post(url, data=body, timeout=60)
                ok = response.status_code == 400 and "error" in response.json()
            except (requests.RequestException, ValueError):
                ok = False
            tally.bad_request(ok)
            continue
        k = i % len(good)
        start = time.perf_counter()
        try:
            response = session.post(url, data=bodies[k], timeout=60)
            elapsed = time.perf_counter() - start
            if response.status_code == 200:
                outputs = response.json()["outputs"]
            else:
                outputs = None
                tally.note(f"REST {good[k]['signature']}: {response.status_code} {response.text[:200]}")
        except (requests.RequestException, ValueError) as error:
            outputs = None
            tally.note(f"REST {good[k]['signature']}: {error}")
        if outputs is None:
            with tally.lock:
                tally.failed += 1
            continue
        value = np.asarray(outputs[good[k]["output"]] if isinstance(outputs, dict) else outputs)
        version = _matches(value, expected[k])
        with tally.lock:
            tally.good += 1
            tally.latencies.append(elapsed)
            if version is None:
                tally.wrong += 1
            else:
                tally.versions[version] += 1


def grpc_client(target: str, good: list[dict], expected: list[dict], stop: Stop, tally: Tally):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    requests_ = []
    for case in good:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "siamese"
        request.model_spec.signature_name = case["signature"]
        for name, value in case["inputs"].items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        requests_.append(request)
    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "siamese"
    bad.inputs["left"].CopyFrom(tf.make_tensor_proto(1.0, shape=[1, 20000, 20000, 1]))
    bad.inputs["right"].CopyFrom(tf.make_tensor_proto(1.0, shape=[1, 20000, 20000, 1]))
    i = 0
    while not stop.now():
        i += 1
        if i % 4 == 0:
            try:
                stub.Predict(bad, timeout=60)
                ok = False
            except grpc.RpcError as error:
                ok = error.code() == grpc.StatusCode.INVALID_ARGUMENT
            tally.bad_request(ok)
            continue
        k = i % len(good)
        start = time.perf_counter()
        try:
            response = stub.Predict(requests_[k], timeout=60)
        except grpc.RpcError as error:
            tally.note(f"gRPC {good[k]['signature']}: {error.code().name} {error.details()}")
            with tally.lock:
                tally.failed += 1
            continue
        elapsed = time.perf_counter() - start
        value = tf.make_ndarray(response.outputs[good[k]["output"]])
        version = _matches(value, expected[k])
        with tally.lock:
            tally.good += 1
            tally.latencies.append(elapsed)
            # The answer must be the one of the version it names.
            if version is None or version != response.model_spec.version.value:
                tally.wrong += 1
            else:
                tally.versions[version] += 1
    channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="client threads (half gRPC)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients run")
    parser.add_argument("--threads", type=int, default=4, help="the server's --threads")
    args = parser.parse_args()
    print_machine()
    rng = np.random.default_rng(0)
    good = _good_requests(rng)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = preset("smoke").model
        base = export.export_saved_model(build_siamese(config), tmp / "served", "siamese").parent
        staged = export.export_saved_model(build_siamese(config), tmp / "staged", "siamese")
        first, second = _expected(base / "1", good), _expected(staged, good)
        for a, b in zip(first, second):
            assert not np.allclose(a, b, atol=1e-4), "the two versions must answer differently"
        expected = [{1: a, 2: b} for a, b in zip(first, second)]

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        server = subprocess.Popen(
            [sys.executable, "-m", "keras_siamese.serve", "--model_base_path", str(base),
             "--host", "127.0.0.1", "--rest_api_port", "0", "--port", "0",
             "--file_system_poll_wait_seconds", "0.5", "--threads", str(args.threads)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            url = target = None
            for line in server.stdout:
                if line.startswith("gRPC at "):
                    target = line.split(" at ", 1)[1].strip()
                if line.startswith("Serving "):
                    url = line.rsplit(" at ", 1)[1].strip() + "/v1/models/siamese:predict"
                    break
            if url is None or target is None:
                raise SystemExit("the server did not start")
            # Read the server's log (so that it never blocks on a full pipe) for its version lines.
            log: list[str] = []
            threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()

            tally = Tally()
            start = time.monotonic()
            stop = Stop(start + 4 * args.seconds)
            clients = [
                threading.Thread(
                    target=rest_client if i % 2 == 0 else grpc_client,
                    args=(url if i % 2 == 0 else target, good, expected, stop, tally),
                )
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            # A quarter of the way in: loading takes seconds under load, and the new version
            # must then serve for a while.
            time.sleep(args.seconds / 4)
            os.rename(staged, base / "2")  # the new version appears, as export writes it
            swapped_at = time.monotonic() - start
            # The clients run for --seconds and at least --seconds / 4 after version 2 is in
            # service (loading under load is slow), and stop at 4 x --seconds in any case.
            status_url = url.removesuffix(":predict")
            served = {"version": "2", "state": "AVAILABLE",
                      "status": {"error_code": "OK", "error_message": ""}}
            while not stop.now():
                if requests.get(status_url, timeout=30).json()["model_version_status"][0] == served:
                    break
                time.sleep(0.2)
            served_at = time.monotonic() - start
            time.sleep(max(0.0, min(stop.latest - time.monotonic(),
                                    max(start + args.seconds - time.monotonic(), args.seconds / 4))))
            stop.event.set()
            for client in clients:
                client.join()
            elapsed = time.monotonic() - start
            peak = peak_memory_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    total = tally.good + tally.failed + tally.bad
    latencies = sorted(tally.latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    print(f"{args.clients} clients ({(args.clients + 1) // 2} REST, {args.clients // 2} gRPC), "
          f"server --threads {args.threads}, {elapsed:.1f} s, version 2 moved in at {swapped_at:.1f} s")
    print(f"requests: {total} ({total / elapsed:.1f}/s); good {tally.good} "
          f"({tally.good / elapsed:.1f}/s), bad {tally.bad}")
    if latencies:
        print(f"good-request latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms")
    print(f"answers by version 1 / 2: {tally.versions[1]} / {tally.versions[2]}; version 2 "
          f"in service {served_at - swapped_at:.1f} s after it was moved in")
    print(f"wrong answers: {tally.wrong}; failed good requests: {tally.failed}; "
          f"bad requests not refused with 400/INVALID_ARGUMENT: {tally.bad_misanswered}")
    print(f"server peak memory (VmHWM): {peak:.0f} MiB")
    for line in log:
        if "version" in line:
            print("  server:", line.rstrip())
    for note in tally.notes:
        print("  ", note)
    problems = tally.wrong + tally.failed + tally.bad_misanswered + (tally.versions[2] == 0)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
