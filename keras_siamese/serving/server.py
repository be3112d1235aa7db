"""A local, TF-Serving-compatible REST server for development, tests and the notebook.

    python -m keras_siamese.serve --model_name siamese --model_base_path saved_models/siamese

TensorFlow Serving itself ships as a Docker image and from Google's apt
repository. Where neither is available, this module serves the same SavedModel
folder over the subset of TF Serving's REST API that
:mod:`keras_siamese.serving.client` uses, with the same URLs, request and response
bodies and ``{"error": "..."}`` errors:

- ``GET  /v1/models/<name>[/versions/<v>]``: model status;
- ``GET  /v1/models/<name>[/versions/<v>]/metadata``: signature definitions;
- ``POST /v1/models/<name>[/versions/<v>]:predict``: any signature, row
  (``instances``) or columnar (``inputs``) requests, ``{"b64": ...}`` strings;
- over gRPC (``--port``, with ``tensorflow-serving-api`` installed),
  ``PredictionService.Predict`` and ``ModelService.GetModelStatus``.

As TF Serving does by default, it serves the highest version under the base
path and polls the folder for new versions (``--file_system_poll_wait_seconds``),
loading a new one before unloading the old; a version that fails to load is
reported in the model status and the previous one stays in service. It binds
to loopback by default and refuses requests over ``--max_request_bytes``.

Differences from TF Serving (docs/serving.md): gRPC offers only Predict and
GetModelStatus, one model per server (no ``--model_config_file``), no
``:classify``/``:regress`` (answered 501), no request batching, and error
messages of its own wording.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from flask import Flask, Response, request
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from werkzeug.exceptions import HTTPException

from keras_siamese.export import versions
from keras_siamese.serving.errors import ServingError

log = logging.getLogger("keras_siamese.serve")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

# /v1/models/<name>[/versions/<version>][/metadata | :<method>]
_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+))?"
    r"(?:/(?P<metadata>metadata)|:(?P<method>[A-Za-z]+))?$"
)


class _Version:
    """One loaded SavedModel version: its signatures and their metadata."""

    def __init__(self, path: Path):
        self.path = path
        self.loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self.loaded.signatures)
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = {
            name: _message_to_dict(definition)
            for name, definition in proto.meta_graphs[0].signature_def.items()
        }


def _message_to_dict(message) -> dict:
    # TF Serving writes proto field names and fields left at their defaults.
    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )


class ModelServer:
    """Serves the highest version under ``base_path`` and watches for new ones.

    Args:
        name: the model name in URLs.
        base_path: the folder holding numbered versions (``saved_models/<name>``).
        poll_seconds: how often to look for new versions (0: only on :meth:`refresh`).
    """

    def __init__(self, name: str, base_path: str | Path, poll_seconds: float = 1.0):
        self.name = name
        self.base_path = Path(base_path)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._current: tuple[int, _Version] | None = None
        self._failed: dict[int, str] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def refresh(self) -> None:
        """Loads the highest version if it is new; keeps the old one if it fails."""
        available = versions(self.base_path)
        if not available:
            return
        latest = available[-1]
        with self._lock:
            if (self._current and self._current[0] == latest) or latest in self._failed:
                return
        log.info("loading %s version %d from %s", self.name, latest, self.base_path / str(latest))
        try:
            loaded = _Version(self.base_path / str(latest))
        except Exception as error:  # any load failure must leave the server serving
            log.error("version %d of %s failed to load: %s", latest, self.name, error)
            with self._lock:
                self._failed[latest] = f"{type(error).__name__}: {error}"
            return
        with self._lock:
            self._current = (latest, loaded)
        log.info("serving %s version %d", self.name, latest)

    def start_polling(self) -> None:
        """Refreshes every ``poll_seconds`` in a background thread."""
        if self.poll_seconds <= 0 or self._poller is not None:
            return

        def poll():
            while not self._stop.wait(self.poll_seconds):
                self.refresh()

        self._poller = threading.Thread(target=poll, name="version-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    def _version(self, name: str, version: str | None) -> tuple[int, _Version]:
        if name != self.name:
            raise ServingError(404, f"Servable not found for request: Latest({name})")
        with self._lock:
            current = self._current
        if version is None:
            if current is None:
                raise ServingError(404, f"Servable not found for request: Latest({name})")
            return current
        if not version.isdigit():
            raise ServingError(400, f"version must be a number, got {version!r}")
        if current is None or current[0] != int(version):
            raise ServingError(404, f"Servable not found for request: Specific({name}, {version})")
        return current

    def status(self, name: str, version: str | None) -> dict:
        """TF Serving's GetModelStatus response."""
        if name != self.name:
            raise ServingError(404, f"Could not find any versions of model {name}")
        with self._lock:
            current, failed = self._current, dict(self._failed)
        states = {}
        if current is not None:
            states[current[0]] = ("AVAILABLE", "OK", "")
        for number, message in failed.items():
            states[number] = ("END", "UNKNOWN", message)
        if version is not None:
            if not version.isdigit() or int(version) not in states:
                raise ServingError(
                    404, f"Could not find version {version} of model {name}"
                )
            states = {int(version): states[int(version)]}
        if not states:
            raise ServingError(404, f"Could not find any versions of model {name}")
        return {
            "model_version_status": [
                {
                    "version": str(number),
                    "state": state,
                    "status": {"error_code": code, "error_message": message},
                }
                for number, (state, code, message) in sorted(states.items(), reverse=True)
            ]
        }

    def metadata(self, name: str, version: str | None) -> dict:
        """TF Serving's GetModelMetadata response (the signature definitions)."""
        number, loaded = self._version(name, version)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(number)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}},
        }

    def run(
        self, name: str, version: str | None, signature_name: str, inputs: dict[str, Any]
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Runs a signature on named input values (JSON lists or numpy arrays).

        Returns the version that answered and the outputs; bad input is a ``ServingError``.
        """
        number, loaded = self._version(name, version)
        return number, _run(loaded, signature_name, inputs)

    def predict(self, name: str, version: str | None, body: Any) -> dict:
        """TF Serving's REST predict: row or columnar request, same-format response."""
        # Resolved once: the version that parses the request also answers it, even if a
        # newer one is loaded meanwhile. An unknown model or version is a 404 first.
        _, loaded = self._version(name, version)
        if not isinstance(body, dict):
            raise ServingError(400, "the request body must be a JSON object")
        if ("instances" in body) == ("inputs" in body):
            raise ServingError(400, 'the request needs exactly one of "instances" or "inputs"')
        signature_name = body.get("signature_name", "serving_default")
        specs = _signature(loaded, signature_name).structured_input_signature[1]
        row = "instances" in body
        named = _row_inputs(body["instances"], specs) if row else _columnar_inputs(body["inputs"], specs)
        outputs = _run(loaded, signature_name, named)
        if row:
            return {"predictions": _row_outputs(outputs)}
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {key: _jsonable(value) for key, value in outputs.items()}}


def _run(loaded: _Version, signature_name: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    function = _signature(loaded, signature_name)
    specs = function.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise ServingError(400, f"inputs {sorted(inputs)} given; the signature takes {sorted(specs)}")
    tensors = {key: _to_tensor(value, specs[key], key) for key, value in inputs.items()}
    try:
        outputs = function(**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
        raise ServingError(400, _tf_message(error)) from None
    return {key: value.numpy() for key, value in outputs.items()}


def _signature(loaded: _Version, signature_name: str):
    if signature_name not in loaded.signatures:
        raise ServingError(
            400,
            f'Serving signature name: "{signature_name}" not found in signature def; '
            f"available: {sorted(loaded.signatures)}",
        )
    return loaded.signatures[signature_name]


def _row_inputs(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, list]:
    """``instances`` (one entry per example) to one batched list per input."""
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, '"instances" must be a non-empty list')
    names = sorted(specs)
    if all(isinstance(item, dict) and "b64" not in item for item in instances):
        for i, item in enumerate(instances):
            if set(item) != set(names):
                raise ServingError(
                    400, f"instance {i} has inputs {sorted(item)}; the signature takes {names}"
                )
        return {key: [item[key] for item in instances] for key in names}
    if len(names) != 1:
        raise ServingError(400, f"the signature takes several inputs {names}: send objects")
    return {names[0]: instances}


def _columnar_inputs(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, Any]:
    """``inputs`` (a batch per input name, or one batch for one input)."""
    names = sorted(specs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != set(names):
            raise ServingError(400, f"inputs {sorted(inputs)} given; the signature takes {names}")
        return inputs
    if len(names) != 1:
        raise ServingError(400, f"the signature takes several inputs {names}: send an object")
    return {names[0]: inputs}


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ServingError(400, 'a JSON object in a tensor must be {"b64": "<base64>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as error:
            raise ServingError(400, f"invalid base64 data: {error}") from None
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _to_tensor(value: Any, spec: tf.TensorSpec, name: str) -> tf.Tensor:
    """A JSON value as a tensor of the signature's dtype and shape, or a 400."""
    try:
        if spec.dtype == tf.string:
            array = np.array(_decode_b64(value), dtype=object)
            if array.size and not all(isinstance(v, (bytes, str)) for v in array.ravel()):
                raise ServingError(400, f'input "{name}" takes strings ({{"b64": ...}} for images)')
        else:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except ServingError:
        raise
    except (ValueError, TypeError) as error:
        raise ServingError(400, f'input "{name}" is not a {spec.dtype.name} tensor: {error}') from None
    if not spec.shape.is_compatible_with(array.shape):
        raise ServingError(
            400, f'input "{name}" has shape {list(array.shape)}; the signature takes '
            f"{spec.shape.as_list()} (None: any size)"
        )
    return tf.constant(array, dtype=spec.dtype)


def _row_outputs(outputs: dict[str, np.ndarray]) -> list:
    sizes = {value.shape[0] if value.ndim else None for value in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ServingError(
            400, "the outputs differ in batch size; use the columnar format (\"inputs\")"
        )
    if len(outputs) == 1:
        return _jsonable(next(iter(outputs.values())))
    keys = sorted(outputs)
    return [{key: _jsonable(outputs[key][i]) for key in keys} for i in range(sizes.pop())]


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [
            {"b64": base64.b64encode(v).decode("ascii")} if isinstance(v, bytes) else v
            for v in array.ravel()
        ]
    return array.tolist()


def _tf_message(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    # Keep the first meaningful line of TF's (long, graph-annotated) message.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at", "[[", "<stack"))]
    return (useful or lines or [type(error).__name__])[0]


# How TF Serving's gRPC API reports what the REST API answers with these HTTP statuses.
_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 501: "UNIMPLEMENTED"}


def create_grpc_server(
    server: ModelServer,
    address: str,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    threads: int = 4,
):
    """TF Serving's gRPC ``PredictionService.Predict`` and ``ModelService.GetModelStatus``.

    Needs ``tensorflow-serving-api`` (its protos and service stubs). Returns the started
    ``grpc.Server`` and the port it bound (``address`` may end in ``:0``).
    """
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def abort(context, error: ServingError):
        code = getattr(grpc.StatusCode, _GRPC_CODES.get(error.status, "INTERNAL"))
        context.abort(code, error.message)

    def requested_version(spec) -> str | None:
        return str(spec.version.value) if spec.HasField("version") else None

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            spec = request.model_spec
            signature_name = spec.signature_name or "serving_default"
            try:
                try:
                    inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                except (TypeError, ValueError) as error:
                    raise ServingError(400, f"malformed input tensor: {error}") from None
                number, outputs = server.run(
                    spec.name, requested_version(spec), signature_name, inputs
                )
            except ServingError as error:
                abort(context, error)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = number
            response.model_spec.signature_name = signature_name
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                status = server.status(request.model_spec.name, requested_version(request.model_spec))
            except ServingError as error:
                abort(context, error)
            response = get_model_status_pb2.GetModelStatusResponse()
            for entry in status["model_version_status"]:
                item = response.model_version_status.add()
                item.version = int(entry["version"])
                item.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
                item.status.error_code = 0 if entry["status"]["error_code"] == "OK" else 2  # UNKNOWN
                item.status.error_message = entry["status"]["error_message"]
            return response

    options = [
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", max_request_bytes),
    ]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), grpc_server)
    port = grpc_server.add_insecure_port(address)
    grpc_server.start()
    return grpc_server, port


def create_app(server: ModelServer, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Flask:
    """The Flask application answering TF Serving's REST URLs for ``server``."""
    app = Flask("keras_siamese.serve")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def answer(status: int, body: dict) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")

    @app.errorhandler(ServingError)
    def serving_error(error: ServingError):
        return answer(error.status, {"error": error.message})

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 413:
            return answer(413, {"error": f"request body over the {max_request_bytes}-byte limit"})
        if error.code == 404:
            return answer(404, {"error": f"Malformed request: {request.method} {request.path}"})
        return answer(error.code or 500, {"error": error.description or error.name})

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        log.exception("internal error")
        return answer(500, {"error": f"internal error: {type(error).__name__}: {error}"})

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def models(rest: str):
        match = _URL.match(request.path)
        if match is None:
            raise ServingError(404, f"Malformed request: {request.method} {request.path}")
        name, version = match["name"], match["version"]
        method = match["method"]
        if method is None:
            if request.method != "GET":
                raise ServingError(405, f"{request.path} takes GET")
            if match["metadata"]:
                return answer(200, server.metadata(name, version))
            return answer(200, server.status(name, version))
        if request.method != "POST":
            raise ServingError(405, f"{request.path} takes POST")
        if method in ("classify", "regress"):
            raise ServingError(501, f":{method} is not implemented by this server; use :predict")
        if method != "predict":
            raise ServingError(404, f"Malformed request: unknown method :{method}")
        try:
            body = json.loads(request.get_data(cache=False))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ServingError(400, f"JSON Parse error: {error}") from None
        return answer(200, server.predict(name, version, body))

    return app
