"""The deployment files in saved_models/, checked for syntax and consistency.

Docker, Kubernetes, Prometheus and TF Serving do not run here: the files are parsed with the
real schemas where they exist (TF Serving's ModelServerConfig proto from tensorflow-serving-api;
its MonitoringConfig and BatchingParameters as the protos declare them) and as YAML, and what
they say is checked against each other, against the README and docs/deployment.md. The shell
that Kubernetes would run is run here with bash: the readiness probe against a stand-in for
TF Serving's status answer, and the training Job's start script with stand-ins for pip and
python, whose TF_CONFIG goes to tf.distribute's own resolver.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import stat
import subprocess
import threading
import typing

import pytest
import yaml
from conftest import REPO_ROOT
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

SAVED_MODELS = REPO_ROOT / "saved_models"
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
MODEL = "siamese"
LABELS = {"stable", "canary"}
PORTS = {"grpc": 8500, "rest": 8501}
WORKER_PORT = 2222
# The training command of the README and of kubernetes-training.yaml.
TRAIN_COMMAND = ("python -m keras_siamese.fit --strategy multi-worker --preset koch2015 "
                 "--run-dir /runs/koch2015-seed0 --export-dir /models")
CONFIGMAP_COMMAND = ("kubectl create configmap siamese-serving-config "
                     "--from-file=saved_models/models.config "
                     "--from-file=saved_models/monitoring.config")


def _documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((SAVED_MODELS / name).read_text()))


def _by_kind(name: str) -> dict[str, dict]:
    documents = _documents(name)
    by_kind = {doc["kind"]: doc for doc in documents}
    assert len(by_kind) == len(documents), f"{name}: one object of each kind expected"
    return by_kind


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` and bare ``--name`` arguments as a dict."""
    flags = {}
    for arg in args:
        assert arg.startswith("--"), arg
        name, _, value = arg[2:].partition("=")
        flags[name] = value
    return flags


def _models_config():
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse((SAVED_MODELS / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())


def _message_class(file: descriptor_pb2.FileDescriptorProto, name: str):
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


F = descriptor_pb2.FieldDescriptorProto


def _batching_parameters_class():
    """TF Serving's BatchingParameters message (session_bundle_config.proto), whose Python
    module tensorflow-serving-api does not ship: the fields as the proto declares them."""
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_siamese_test_batching.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    for number, name in enumerate(
        ["max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"], 1
    ):
        message.field.add(name=name, number=number, type=F.TYPE_MESSAGE,
                          type_name=".google.protobuf.Int64Value", label=F.LABEL_OPTIONAL)
    message.field.add(name="thread_pool_name", number=5, type=F.TYPE_MESSAGE,
                      type_name=".google.protobuf.StringValue", label=F.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                      label=F.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                      label=F.LABEL_OPTIONAL)
    return _message_class(file, "BatchingParameters")


def _monitoring_config_class():
    """TF Serving's MonitoringConfig (config/monitoring_config.proto), also not shipped by
    tensorflow-serving-api: a PrometheusConfig {bool enable = 1; string path = 2;} at 1."""
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_siamese_test_monitoring.proto", package="tensorflow.serving",
        syntax="proto3")
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig", label=F.LABEL_OPTIONAL)
    return _message_class(file, "MonitoringConfig")


def _metrics_path() -> str:
    config = text_format.Parse((SAVED_MODELS / "monitoring.config").read_text(),
                               _monitoring_config_class()())
    return config.prometheus_config.path


def _serving_container() -> dict:
    deployment = _by_kind("kubernetes.yaml")["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- TF Serving's own configuration files -------------------------------------------------


def test_models_config_serves_labelled_versions_of_siamese():
    (model,) = _models_config().model_config_list.config
    assert model.name == MODEL
    assert model.base_path == "/models/siamese"  # saved_models/siamese, mounted at /models
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    versions = set(model.model_version_policy.specific.versions)
    labels = dict(model.version_labels)
    assert "stable" in labels and set(labels) <= LABELS
    # A label must name a version the policy loads, or it never becomes AVAILABLE.
    assert set(labels.values()) <= versions
    # Steady state: the stable version alone; a rollout: stable and canary, nothing else.
    assert versions == set(labels.values())
    assert len(versions) == len(labels)


def test_batching_config_is_batching_parameters():
    params = text_format.Parse(
        (SAVED_MODELS / "batching.config").read_text(), _batching_parameters_class()()
    )
    assert params.max_batch_size.value >= max(params.allowed_batch_sizes)
    assert list(params.allowed_batch_sizes) == sorted(params.allowed_batch_sizes)
    assert params.allowed_batch_sizes[-1] == params.max_batch_size.value  # TF Serving's rule
    assert 0 < params.batch_timeout_micros.value <= 100_000
    assert params.num_batch_threads.value >= 1


def test_monitoring_config_enables_prometheus():
    config = text_format.Parse((SAVED_MODELS / "monitoring.config").read_text(),
                               _monitoring_config_class()())
    assert config.prometheus_config.enable
    assert re.fullmatch(r"(/[\w.-]+)+", config.prometheus_config.path)


def test_prometheus_scrapes_the_metrics_path_of_the_serving_pods():
    scrape = {job["job_name"]: job
              for job in yaml.safe_load((SAVED_MODELS / "prometheus.yml").read_text())
              ["scrape_configs"]}
    assert scrape and all(job["metrics_path"] == _metrics_path() for job in scrape.values())
    (kubernetes,) = [job for job in scrape.values() if "kubernetes_sd_configs" in job]
    assert [sd["role"] for sd in kubernetes["kubernetes_sd_configs"]] == ["pod"]
    keeps = {rule["source_labels"][0]: rule["regex"]
             for rule in kubernetes["relabel_configs"] if rule.get("action") == "keep"}
    labels = _by_kind("kubernetes.yaml")["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert keeps["__meta_kubernetes_pod_label_app"] == labels["app"]
    port_name = keeps["__meta_kubernetes_pod_container_port_name"]
    ports = {port["name"]: port["containerPort"] for port in _serving_container()["ports"]}
    assert ports[port_name] == PORTS["rest"]  # TF Serving serves metrics on the REST port
    (static,) = [job for job in scrape.values() if "static_configs" in job]
    (target,) = static["static_configs"][0]["targets"]
    assert target == f"localhost:{PORTS['rest']}"  # where docker-compose.yml publishes it


# --- Docker Compose ------------------------------------------------------------------------


def test_docker_compose_serves_this_folder_with_labels_and_metrics():
    compose = yaml.safe_load((SAVED_MODELS / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    flags = _flags(service["command"])
    assert flags["model_config_file"] == "/models/models.config"
    assert flags["monitoring_config_file"] == "/models/monitoring.config"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    assert "allow_version_labels_for_unavailable_models" in flags
    (volume,) = service["volumes"]
    assert (volume["source"], volume["target"]) == (".", "/models")  # the file sits in saved_models/
    assert {port.rsplit(":", 1)[-1] for port in service["ports"]} == {str(p) for p in PORTS.values()}


# --- Kubernetes: serving ---------------------------------------------------------------------


def test_kubernetes_serving_objects_match_each_other():
    by_kind = _by_kind("kubernetes.yaml")
    assert sorted(by_kind) == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                               "Service"]
    deployment, service, hpa = by_kind["Deployment"], by_kind["Service"], by_kind["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    container = _serving_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == PORTS
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (number, name) for name, number in PORTS.items()}
    # The autoscaler scales this Deployment on CPU, which needs a CPU request to measure against.
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container["resources"]["requests"]


def _quantity(text: str | int) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units[unit]


def _config_mount() -> tuple[dict[str, str], str, str]:
    """The server's flags, the folder its configuration files are in, and the ConfigMap
    mounted there."""
    container = _serving_container()
    flags = _flags(container["args"])
    spec = _by_kind("kubernetes.yaml")["Deployment"]["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    folder = os.path.dirname(flags["model_config_file"])
    # Mounted as a folder (no subPath), so that edits of the ConfigMap reach the pod.
    assert "subPath" not in mounts[folder]
    return flags, folder, volumes[mounts[folder]["name"]]["configMap"]["name"]


def test_kubernetes_serving_resources_and_volumes():
    container = _serving_container()
    resources = container["resources"]
    for name in ("cpu", "memory"):
        assert _quantity(resources["requests"][name]) <= _quantity(resources["limits"][name])
    # TF Serving's thread pools match the CPU limit.
    flags = _flags(container["args"])
    assert int(flags["tensorflow_intra_op_parallelism"]) == _quantity(resources["limits"]["cpu"])
    by_kind = _by_kind("kubernetes.yaml")
    spec = by_kind["Deployment"]["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["volumes"] if "persistentVolumeClaim" in v}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    pvc = by_kind["PersistentVolumeClaim"]
    assert claims[mounts["/models"]] == pvc["metadata"]["name"]
    # Replicas on several nodes read it, and the training Job writes into it.
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_kubernetes_serving_reads_the_configmap_of_the_documented_command():
    flags, folder, configmap = _config_mount()
    command = CONFIGMAP_COMMAND.split()
    assert command[3] == configmap
    files = {arg.split("=", 1)[1] for arg in command if arg.startswith("--from-file=")}
    # Each file the server is told to read is a key of that ConfigMap.
    assert {flags["model_config_file"], flags["monitoring_config_file"]} == {
        f"{folder}/{os.path.basename(path)}" for path in files}
    assert all((REPO_ROOT / path).is_file() for path in files)
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    assert "allow_version_labels_for_unavailable_models" in flags
    for path in (REPO_ROOT / "README.md", DEPLOYMENT_DOC, SAVED_MODELS / "kubernetes.yaml"):
        # The command as written, across continuation lines and comment marks.
        words = " ".join(path.read_text().replace("\\\n", " ").replace("#", " ").split())
        documented = CONFIGMAP_COMMAND in words
        assert documented, f"{path.name} does not give: {CONFIGMAP_COMMAND}"


def test_kubernetes_serving_pods_are_annotated_for_prometheus():
    annotations = _by_kind("kubernetes.yaml")["Deployment"]["spec"]["template"]["metadata"][
        "annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(PORTS["rest"])
    assert annotations["prometheus.io/path"] == _metrics_path()


# The probes run a bash command against TF Serving's model status; here, against a stand-in
# that answers as TF Serving does (GetModelStatusResponse as JSON; 404 for an unknown model).

def _status_body(*states: str) -> str:
    versions = [{"version": str(v), "state": state, "status": {"error_code": "OK",
                                                                "error_message": ""}}
                for v, state in enumerate(states, 1)]
    return json.dumps({"model_version_status": versions}, indent=1)


class _FakeServing(http.server.BaseHTTPRequestHandler):
    answers: typing.ClassVar[dict[str, tuple[int, str]]] = {}

    def do_GET(self):
        status, body = self.answers.get(self.path, (404, '{ "error": "Malformed request" }'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def _probe_command() -> list[str]:
    container = _serving_container()
    commands = [container[probe]["exec"]["command"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert commands[0] == commands[1] == commands[2]
    return commands[0]


@pytest.mark.parametrize("answer, available", [
    ((200, _status_body("AVAILABLE")), True),
    ((200, _status_body("END", "AVAILABLE")), True),  # version 1 unloaded, 2 in service
    ((200, _status_body("AVAILABLE", "LOADING")), True),  # a canary loading beside stable
    ((200, _status_body("LOADING")), False),  # TF Serving answers 200 while loading
    ((200, _status_body("START")), False),
    ((200, _status_body("END")), False),  # the only version failed to load
    ((404, '{\n "error": "Could not find any versions of model siamese"\n}'), False),
    (None, False),  # nothing listening
])
def test_probe_passes_only_when_a_version_is_available(answer, available):
    command = _probe_command()
    assert command[:2] == ["/bin/bash", "-c"]
    assert f"/dev/tcp/127.0.0.1/{PORTS['rest']}" in command[2]
    _FakeServing.answers = {} if answer is None else {f"/v1/models/{MODEL}": answer}
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    port = server.server_address[1]
    if answer is None:
        server.server_close()  # the port is now closed
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = command[2].replace(f"/dev/tcp/127.0.0.1/{PORTS['rest']}",
                                    f"/dev/tcp/127.0.0.1/{port}")
        result = subprocess.run(["bash", "-c", script], check=False, capture_output=True,
                                timeout=10)
    finally:
        if answer is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) == available, result.stderr


# --- Image tags ------------------------------------------------------------------------------


def _tags(image: str, texts: dict[str, str]) -> dict[str, set[str]]:
    found = {}
    for name, text in texts.items():
        tags = set(re.findall(re.escape(image) + r":([\w.-]+)", text))
        if tags:
            found[name] = tags
    return found


def _all_texts() -> dict[str, str]:
    paths = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")),
             *sorted(p for p in SAVED_MODELS.iterdir() if p.is_file())]
    return {str(p.relative_to(REPO_ROOT)): p.read_text() for p in paths}


def _documented_tag(image: str) -> str:
    """The tag docs/deployment.md names in its "Images" table row for ``image``."""
    (tag,) = re.findall(r"^\| `" + re.escape(image) + r":([\w.-]+)` \|", DEPLOYMENT_DOC.read_text(),
                        re.MULTILINE)
    return tag


@pytest.mark.parametrize("image", ["tensorflow/serving", "tensorflow/tensorflow"])
def test_each_image_has_one_tag_everywhere_and_it_is_the_documented_one(image):
    tag = _documented_tag(image)
    found = _tags(image, _all_texts())
    assert found
    assert {name: tags for name, tags in found.items() if tags != {tag}} == {}


def test_manifests_use_the_documented_images():
    images = {_serving_container()["image"],
              yaml.safe_load((SAVED_MODELS / "docker-compose.yml").read_text())["services"][
                  MODEL]["image"]}
    assert images == {f"tensorflow/serving:{_documented_tag('tensorflow/serving')}"}
    _, _, worker = _training()
    assert worker["image"] == f"tensorflow/tensorflow:{_documented_tag('tensorflow/tensorflow')}"
    assert worker["image"].endswith("-gpu")


# --- Kubernetes: multi-worker training -------------------------------------------------------


def _training() -> tuple[dict, dict, dict]:
    by_kind = _by_kind_all("kubernetes-training.yaml")
    (job,) = by_kind["Job"]
    (service,) = by_kind["Service"]
    (worker,) = job["spec"]["template"]["spec"]["containers"]
    return job, service, worker


def _by_kind_all(name: str) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for doc in _documents(name):
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_training_job_is_an_indexed_job_behind_a_headless_service():
    job, service, worker = _training()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    workers = int({e["name"]: e["value"] for e in worker["env"]}["WORKERS"])
    assert spec["completions"] == spec["parallelism"] == workers >= 2
    assert pod["restartPolicy"] == "OnFailure"
    assert spec["backoffLimit"] >= workers  # one worker's failure restarts them all
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = worker["ports"]
    assert port["port"] == container_port["containerPort"] == WORKER_PORT
    assert port["targetPort"] == container_port["name"]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"


def test_training_job_shares_its_run_folder_and_exports_into_the_serving_volume():
    job, _, worker = _training()
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: claims[m["name"]] for m in worker["volumeMounts"]}
    pvcs = {doc["metadata"]["name"]: doc
            for name in ("kubernetes.yaml", "kubernetes-training.yaml")
            for doc in _documents(name) if doc["kind"] == "PersistentVolumeClaim"}
    flags = dict(zip(TRAIN_COMMAND.split()[3::2], TRAIN_COMMAND.split()[4::2]))
    run_volume = mounts["/" + flags["--run-dir"].strip("/").split("/")[0]]
    assert "ReadWriteMany" in pvcs[run_volume]["spec"]["accessModes"]
    serving_claim = _by_kind("kubernetes.yaml")["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts[flags["--export-dir"]] == serving_claim


@pytest.fixture(scope="module")
def training_starts(tmp_path_factory) -> dict[int, dict]:
    """The Job's start script run with bash for each index, with pip, cp and python replaced
    by stand-ins that record what they were asked (and python its TF_CONFIG)."""
    job, _, worker = _training()
    assert worker["command"] == ["/bin/bash", "-c"]
    (script,) = worker["args"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in ("pip", "cp", "python"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "{tool} $*" "TF_CONFIG=$TF_CONFIG" '
                        f'>> "$RECORD"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    starts = {}
    for index in range(job["spec"]["completions"]):
        record = tmp_path_factory.mktemp("record") / "calls"
        result = subprocess.run(
            ["bash", "-c", script], check=False, capture_output=True, text=True, timeout=30,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(record),
                 "JOB_COMPLETION_INDEX": str(index), **env},
        )
        assert result.returncode == 0, result.stderr
        calls = record.read_text().splitlines()
        commands = calls[0::2]
        (python,) = [c for c in commands if c.startswith("python ")]
        starts[index] = {"commands": commands, "python": python,
                         "tf_config": calls[2 * commands.index(python) + 1].split("=", 1)[1]}
    return starts


def test_training_tf_config_is_accepted_by_tf_distribute(training_starts, monkeypatch):
    import tensorflow as tf

    TFConfigClusterResolver = tf.distribute.cluster_resolver.TFConfigClusterResolver

    job, service, _ = _training()
    hosts = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{WORKER_PORT}"
             for i in range(job["spec"]["completions"])]
    for index, start in training_starts.items():
        tf_config = json.loads(start["tf_config"])
        assert tf_config == {"cluster": {"worker": hosts},
                             "task": {"type": "worker", "index": index}}
        monkeypatch.setenv("TF_CONFIG", start["tf_config"])
        resolver = TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == {"worker": hosts}
        assert (resolver.task_type, resolver.task_id) == ("worker", index)
        # No separate chief task: worker 0 is the chief.
        assert "chief" not in tf_config["cluster"]


def test_training_job_runs_the_readme_command(training_starts):
    for start in training_starts.values():
        assert start["python"] == TRAIN_COMMAND
        assert any(c.startswith("pip install") for c in start["commands"])
    assert TRAIN_COMMAND in " ".join((REPO_ROOT / "README.md").read_text().split())


def test_training_command_flags_exist_in_fit():
    from keras_siamese.fit import build_parser

    parser = build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    if "--strategy" not in options:
        pytest.skip("keras_siamese.fit has no --strategy option yet (multi-worker training "
                    "is being added); the command cannot be checked against it")
    args = parser.parse_args(shlex.split(TRAIN_COMMAND)[3:])
    assert (args.strategy, args.preset) == ("multi-worker", "koch2015")
    assert args.export_dir == "/models"


# --- What the README and docs/deployment.md say ---------------------------------------------------


@pytest.mark.parametrize("text", [
    "docker run",
    "--model_config_file=/models/models.config",
    "--monitoring_config_file=/models/monitoring.config",
    "--allow_version_labels_for_unavailable_models",
    "saved_models:/models",
    "docker compose -f saved_models/docker-compose.yml up",
    "kubectl apply -f saved_models/kubernetes.yaml",
    "kubectl apply -f saved_models/kubernetes-training.yaml",
    f"/v1/models/{MODEL}/labels/canary:predict",
    "docs/deployment.md",
])
def test_readme_documents_the_deployment(text):
    assert text in (REPO_ROOT / "README.md").read_text()
