"""The local server as TF Serving runs in production: warm-up at load, Prometheus metrics, and a
``--model_config_file`` with specific versions and version labels, reread while serving.

Every server is `python -m keras_siamese.serve` in its own process on a loopback port (the
`Server` helper of test_serving.py), serving two exports of untrained networks with different
weights, so each answer tells which version gave it.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import REPO_ROOT
from prometheus_client.parser import text_string_to_metric_families
from test_serving import Server

from keras_siamese import export
from keras_siamese.model import build_siamese
from keras_siamese.serving import GrpcServingClient, ServingClient, ServingError
from keras_siamese.serving.server import ModelServer, read_model_config

pytestmark = pytest.mark.slow

CONFIG = """model_config_list {{
  config {{
    name: "siamese"
    base_path: "/models/siamese"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ {versions} }} }}
{labels}  }}
}}
"""


def _config(versions: list[int], labels: dict[str, int]) -> str:
    """A models.config as a container reads it: the model at /models/siamese."""
    return CONFIG.format(
        versions=" ".join(f"versions: {v}" for v in versions),
        labels="".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items()),
    )


def _write(path, text: str) -> None:
    """Replaces ``path`` whole (a rename), so a poller never reads half a file."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    os.replace(staging, path)


@pytest.fixture(scope="module")
def deploy(small_config, tmp_path_factory):
    """A deployment folder: versions 1 and 2 (different weights) in siamese/, as in saved_models/."""
    root = tmp_path_factory.mktemp("deploy")
    for _ in range(2):  # freshly initialised networks: different weights
        export.export_saved_model(build_siamese(small_config(paper_init=False)), root, "siamese",
                                  views=2)
    return root


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(deploy, images) -> dict[int, np.ndarray]:
    """Each version's probabilities for ``images``' two pairs, computed in this process."""
    answers = {}
    for number in (1, 2):
        serving = tf.saved_model.load(str(deploy / "siamese" / str(number))).signatures
        answers[number] = serving["serving_default"](left=images[:2], right=images[2:])[
            "probability"
        ].numpy()
    assert not np.allclose(answers[1], answers[2], atol=1e-4), "the versions must differ"
    return answers


@pytest.fixture(scope="module")
def config_server(deploy, expected):
    """A server reading deploy/models.config (specific versions 1 and 2, stable = 1, canary =
    2) and rereading it every 0.2 s."""
    config = deploy / "models.config"
    _write(config, _config([1, 2], {"stable": 1, "canary": 2}))
    server = Server(deploy / "elsewhere", extra=[
        "--model_config_file", config, "--model_config_file_poll_wait_seconds", "0.2",
    ])  # fmt: skip
    yield server
    assert server.stop() in (0, -15), "".join(server.output)[-3000:]


def _metrics(url: str) -> dict[tuple, float]:
    """The server's Prometheus samples, by name and labels, parsed by prometheus_client."""
    response = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=30)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# --- Warm-up ------------------------------------------------------------------------------


def test_the_server_replays_each_versions_warmup_file_before_serving_it(deploy, images, tmp_path):
    base = tmp_path / "siamese"
    shutil.copytree(deploy / "siamese" / "1", base / "1")
    server = Server(base, poll=0.2)
    try:
        log = "".join(server.output)
        assert f"replayed {len(export.SIGNATURES)} warm-up records of siamese version 1" in log
        assert log.index("replayed") < log.index("serving siamese version 1")

        # A version whose warm-up request fails does not load, as under TF Serving; the
        # version in service stays.
        staging = base / ".tmp-broken"
        shutil.copytree(deploy / "siamese" / "2", staging)
        logs = export.read_warmup_file(staging)
        logs[0].predict_log.request.model_spec.signature_name = "no_such_signature"
        export.write_warmup_file(staging, logs)
        os.rename(staging, base / "2")
        client = ServingClient(server.url, "siamese", timeout=60)
        deadline = time.monotonic() + 60
        while (states := {s["version"]: s for s in client.status()}).get("2", {}).get(
            "state") in (None, "LOADING"):
            assert time.monotonic() < deadline, f"version 2 never finished loading: {states}"
            time.sleep(0.2)
        assert states["1"]["state"] == "AVAILABLE"
        assert states["2"]["state"] == "END"
        assert "warm-up record 0 (no_such_signature) failed" in states["2"]["status"]["error_message"]
        assert client.probability(images[:2], images[2:]).shape == (2,)
    finally:
        server.stop()


# --- Model config: specific versions and labels ---------------------------------------------


def test_labels_and_specific_versions_over_rest_and_grpc(config_server, expected, images):
    client = ServingClient(config_server.url, "siamese", timeout=60)
    client.wait_until_available(60)
    assert [(s["version"], s["state"]) for s in client.status()] == [
        ("2", "AVAILABLE"), ("1", "AVAILABLE"),
    ]  # fmt: skip
    for label, number in (("stable", 1), ("canary", 2)):
        labelled = ServingClient(config_server.url, "siamese", version_label=label)
        np.testing.assert_allclose(labelled.probability(images[:2], images[2:]), expected[number],
                                   atol=1e-6)
        assert labelled.status()[0]["version"] == str(number)
        assert requests.get(f"{labelled.model_url}/metadata", timeout=30).json()["model_spec"][
            "version"] == str(number)
        over_grpc = GrpcServingClient(config_server.grpc_target, "siamese", version_label=label)
        np.testing.assert_allclose(over_grpc.probability(images[:2], images[2:]), expected[number],
                                   atol=1e-6)
        over_grpc.close()
    # No version asked for: the highest in service.
    np.testing.assert_allclose(client.probability(images[:2], images[2:]), expected[2], atol=1e-6)

    # An unknown label is TF Serving's INVALID_ARGUMENT, in its words.
    with pytest.raises(ServingError, match="Unrecognized servable version label: nope") as caught:
        ServingClient(config_server.url, "siamese", version_label="nope").probability(images, images)
    assert caught.value.status == 400
    unknown = GrpcServingClient(config_server.grpc_target, "siamese", version_label="nope")
    with pytest.raises(ServingError, match="Unrecognized servable version label") as caught:
        unknown.probability(images, images)
    assert caught.value.status == "INVALID_ARGUMENT"
    unknown.close()


def test_metrics_count_predictions_by_model_signature_and_status(config_server, images):
    url = config_server.url
    ServingClient(url, "siamese").wait_until_available(60)
    before = _metrics(url)
    predict = f"{url}/v1/models/siamese:predict"
    pixels = images[:1].tolist()
    good = {"inputs": {"left": pixels, "right": pixels}}
    for _ in range(2):
        assert requests.post(predict, json=good, timeout=60).status_code == 200
    assert requests.post(predict, json={"signature_name": "embed", "inputs": pixels},
                         timeout=60).status_code == 200
    # Bad requests: an unknown signature, a null pixel, an unknown model, an unknown label.
    assert requests.post(predict, json={"signature_name": "nope", "inputs": pixels},
                         timeout=60).status_code == 400
    assert requests.post(predict, json={"inputs": {"left": [[[[None]]]], "right": pixels}},
                         timeout=60).status_code == 400
    assert requests.post(f"{url}/v1/models/other:predict", json=good, timeout=60).status_code == 404
    assert requests.post(f"{url}/v1/models/siamese/labels/nope:predict", json=good,
                         timeout=60).status_code == 400
    # gRPC shares the server and its counts.
    grpc_client = GrpcServingClient(config_server.grpc_target, "siamese")
    grpc_client.embed(images[:1])
    grpc_client.close()
    after = _metrics(url)

    def count(entrypoint, model, signature, status):
        key = ("tensorflow_serving_request_count_total", tuple(sorted({
            "API": "Predict", "entrypoint": entrypoint, "model_name": model,
            "signature_name": signature, "status": status,
        }.items())))  # fmt: skip
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert count("REST", "siamese", "serving_default", "OK") == 2
    assert count("REST", "siamese", "embed", "OK") == 1
    assert count("REST", "siamese", "", "INVALID_ARGUMENT") == 1  # the unknown signature
    assert count("REST", "siamese", "serving_default", "INVALID_ARGUMENT") == 2  # null, label
    assert count("REST", "", "serving_default", "NOT_FOUND") == 1  # names no model of the server
    assert count("GRPC", "siamese", "embed", "OK") == 1
    total = sum(v for (name, _), v in after.items() if name == "tensorflow_serving_request_count_total")
    assert total - sum(
        v for (name, _), v in before.items() if name == "tensorflow_serving_request_count_total"
    ) == 8

    # Latencies (microseconds) of the answered requests only, as TF Serving records them.
    def latency(suffix, signature):
        key = (f"tensorflow_serving_request_latency{suffix}", tuple(sorted({
            "API": "Predict", "entrypoint": "REST", "model_name": "siamese",
            "signature_name": signature,
        }.items())))  # fmt: skip
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert latency("_count", "serving_default") == 2
    assert 0 < latency("_sum", "serving_default") < 2 * 60e6
    assert not any(name.startswith("tensorflow_serving_request_latency") and ("signature_name", "")
                   in labels for name, labels in after)


def test_the_model_config_is_reread_while_serving(config_server, deploy, expected, images):
    """Runs last in this module: it moves the labels of the shared server."""
    client = ServingClient(config_server.url, "siamese", timeout=60)
    client.wait_until_available(60)
    _write(deploy / "models.config", _config([2], {"stable": 2}))
    deadline = time.monotonic() + 60
    while [s["version"] for s in client.status()] != ["2"]:
        assert time.monotonic() < deadline, f"version 1 was never unloaded: {client.status()}"
        time.sleep(0.2)
    stable = ServingClient(config_server.url, "siamese", version_label="stable")
    np.testing.assert_allclose(stable.probability(images[:2], images[2:]), expected[2], atol=1e-6)
    with pytest.raises(ServingError, match="Unrecognized servable version label: canary"):
        ServingClient(config_server.url, "siamese", version_label="canary").status()
    # A config the server cannot take is logged and ignored: the one in force stays.
    _write(deploy / "models.config", "model_config_list { config { name: ")
    time.sleep(1.0)
    np.testing.assert_allclose(stable.probability(images[:2], images[2:]), expected[2], atol=1e-6)


def test_the_projects_models_config_is_accepted(deploy, tmp_path):
    """saved_models/models.config, with the versions it names exported beside a copy of it."""
    project = REPO_ROOT / "saved_models" / "models.config"
    if not project.is_file() or not read_model_config(project).labels:
        pytest.skip("saved_models/models.config has no version labels yet")
    copy = tmp_path / "models.config"
    shutil.copyfile(project, copy)
    config = read_model_config(copy)
    assert config.base_path == tmp_path / config.base_path.name  # /models/<name> does not exist
    for number in {*config.versions, *config.labels.values()}:
        shutil.copytree(deploy / "siamese" / "1", config.base_path / str(number))
    server = ModelServer(config.name, config.base_path, poll_seconds=0, policy=config.policy,
                         versions=config.versions, labels=config.labels)
    try:
        server.refresh()
        for label, number in config.labels.items():
            assert server.resolve(config.name, None, label)[0] == number, label
    finally:
        server.stop()
