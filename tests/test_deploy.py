"""The TF Serving deployment files in saved_models/, checked for syntax and consistency.

Docker and Kubernetes do not run here: the files are parsed with the real schemas where
they exist (TF Serving's ModelServerConfig proto, from tensorflow-serving-api) and as YAML,
and what they say is checked against each other and against the README.
"""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from conftest import REPO_ROOT

SAVED_MODELS = REPO_ROOT / "saved_models"
CONFIG_FLAG = "--model_config_file=/models/models.config"


def test_models_config_is_a_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (SAVED_MODELS / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == "siamese"
    assert model.base_path == "/models/siamese"  # saved_models/siamese, mounted at /models
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1


def _batching_parameters_class():
    """TF Serving's BatchingParameters message (session_bundle_config.proto), whose Python
    module tensorflow-serving-api does not ship: the fields as the proto declares them."""
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_siamese_test_batching.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
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
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def test_batching_config_is_batching_parameters():
    params = text_format.Parse(
        (SAVED_MODELS / "batching.config").read_text(), _batching_parameters_class()()
    )
    assert params.max_batch_size.value >= max(params.allowed_batch_sizes)
    assert list(params.allowed_batch_sizes) == sorted(params.allowed_batch_sizes)
    assert params.allowed_batch_sizes[-1] == params.max_batch_size.value  # TF Serving's rule
    assert 0 < params.batch_timeout_micros.value <= 100_000
    assert params.num_batch_threads.value >= 1


def test_docker_compose_serves_this_folder():
    compose = yaml.safe_load((SAVED_MODELS / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    assert service["image"].startswith("tensorflow/serving:")
    assert CONFIG_FLAG in service["command"]
    (volume,) = service["volumes"]
    assert (volume["source"], volume["target"]) == (".", "/models")  # the file sits in saved_models/
    assert {port.rsplit(":", 1)[-1] for port in service["ports"]} == {"8500", "8501"}


def test_kubernetes_manifest_is_consistent():
    documents = list(yaml.safe_load_all((SAVED_MODELS / "kubernetes.yaml").read_text()))
    by_kind = {doc["kind"]: doc for doc in documents}
    assert sorted(by_kind) == ["Deployment", "PersistentVolumeClaim", "Service"]
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"]
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    assert CONFIG_FLAG in container["args"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert port_names == {"grpc": 8500, "rest": 8501}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(port_names)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/siamese"
    (mount,) = container["volumeMounts"]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert mount["mountPath"] == "/models" and mount["name"] == volume["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == by_kind["PersistentVolumeClaim"]["metadata"]["name"]


@pytest.mark.parametrize("text", [
    "docker run",
    "tensorflow/serving",
    CONFIG_FLAG,
    'saved_models:/models',
    "docker compose -f saved_models/docker-compose.yml up",
    "kubectl apply -f saved_models/kubernetes.yaml",
])
def test_readme_documents_the_deployment(text):
    assert text in (REPO_ROOT / "README.md").read_text()
