"""A client for TensorFlow Serving's REST API, for the SavedModels of this project.

    client = ServingClient("http://localhost:8501", model="siamese")
    client.wait_until_available()
    scores, best = client.one_shot(queries, support)     # numpy images or image files

It talks to a real ``tensorflow/serving`` container or to the local stand-in
``python -m keras_siamese.serve``: both answer the same URLs and bodies. Images
go as numpy arrays (grey-scale pixel values in [0, 255], white paper, any size;
sent to the float signatures) or as image files given by path or bytes (sent
base64-encoded to the ``*_encoded`` signatures). The server decodes, resizes
and normalises them, so the client holds no preprocessing code. An error
answered by the server is raised as :class:`ServingError` with its message.

:class:`GrpcServingClient` offers the same calls over TF Serving's gRPC API (port 8500), with
``tensorflow-serving-api`` installed.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import requests

from keras_siamese.serving.errors import ServingError

#: Images as pixels ``(N, H, W)`` / ``(N, H, W, 1)``, or files as paths or bytes.
Images = Union[np.ndarray, Sequence[Union[str, os.PathLike, bytes]]]


class _SignatureCalls:
    """The project's signatures on top of a transport's ``predict`` and ``status``."""

    def predict(self, inputs: dict[str, Any], signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        raise NotImplementedError

    def status(self) -> list[dict]:
        raise NotImplementedError

    def wait_until_available(self, timeout: float = 60.0) -> int:
        """Waits until a version is AVAILABLE; returns its number.

        Raises:
            TimeoutError: none became available within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                for entry in self.status():
                    if entry["state"] == "AVAILABLE":
                        return int(entry["version"])
                last = "no version is AVAILABLE"
            except ServingError as error:
                last = error.message
            time.sleep(0.2)
        raise TimeoutError(f"model not available after {timeout:.0f} s: {last}")

    def probability(self, left: Images, right: Images) -> np.ndarray:
        """Same-character probability of each (left, right) pair, ``(N,)``."""
        encoded, left_value, right_value = _image_pair(left, right)
        signature = "pair_encoded" if encoded else "serving_default"
        outputs = self.predict({"left": left_value, "right": right_value}, signature)
        return outputs["probability"]

    def embed(self, images: Images) -> np.ndarray:
        """The twin network's embedding of each image, ``(N, d)``."""
        encoded, value = _images(images)
        outputs = self.predict({"images": value}, "embed_encoded" if encoded else "embed")
        return outputs["embedding"]

    def one_shot(
        self, queries: Images, support: Images, augmented: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores each query against each support image in one request.

        Args:
            augmented: use test-time augmentation (the ``one_shot_tta`` signatures):
                more accurate, 16 times the server's embedding work.

        Returns:
            ``scores`` ``(Q, K)`` same-character probabilities and ``best``
            ``(Q,)``, the index of the highest-scoring support image.
        """
        encoded, query_value, support_value = _image_pair(queries, support)
        signature = "one_shot_tta" if augmented else "one_shot"
        signature += "_encoded" if encoded else ""
        outputs = self.predict({"queries": query_value, "support": support_value}, signature)
        return outputs["scores"], outputs["best"]


class ServingClient(_SignatureCalls):
    """TF Serving REST client for one model.

    Args:
        url: the server's REST address, e.g. ``http://localhost:8501``.
        model: the model name (``--model_name`` of the server).
        version: a fixed version to query; None for the one being served.
        timeout: seconds to wait for each answer.
        version_label: a version label of the server's model config (``stable``,
            ``canary``) to query instead of a version number.
    """

    def __init__(
        self,
        url: str = "http://localhost:8501",
        model: str = "siamese",
        version: int | None = None,
        timeout: float = 60.0,
        version_label: str | None = None,
    ):
        if version is not None and version_label is not None:
            raise ValueError("give a version or a version_label, not both")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.version_label = version_label
        self.timeout = timeout
        self._session = requests.Session()
        self._outputs: dict[str, list[str]] = {}  # output names by signature

    @property
    def model_url(self) -> str:
        base = f"{self.url}/v1/models/{self.model}"
        if self.version_label is not None:
            return f"{base}/labels/{self.version_label}"
        return base if self.version is None else f"{base}/versions/{self.version}"

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        try:
            response = self._session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as error:
            raise ServingError(None, f"cannot reach {url}: {error}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text.strip() or response.reason}
        if response.status_code != 200 or "error" in answer:
            raise ServingError(response.status_code, str(answer.get("error", answer)))
        return answer

    # --- Model status and metadata --------------------------------------------------------

    def status(self) -> list[dict]:
        """The ``model_version_status`` entries (version, state, status)."""
        return self._call("GET", self.model_url)["model_version_status"]

    def metadata(self) -> dict[str, dict]:
        """The SavedModel's signature definitions, by signature name."""
        answer = self._call("GET", f"{self.model_url}/metadata")
        return answer["metadata"]["signature_def"]["signature_def"]

    # --- Predictions ----------------------------------------------------------------------

    def predict(
        self, inputs: dict[str, Any], signature_name: str = "serving_default", row: bool = False
    ) -> dict[str, np.ndarray]:
        """Runs any signature; returns its outputs as numpy arrays.

        Args:
            inputs: input name to value: a numpy array, or a list of ``bytes``
                for string inputs (sent as ``{"b64": ...}``).
            signature_name: the SavedModel signature.
            row: send the row format (``instances``) rather than the columnar
                one (``inputs``); all inputs must then have the same batch size.
        """
        payload = {name: _jsonable(value) for name, value in inputs.items()}
        body: dict[str, Any] = {"signature_name": signature_name}
        if row:
            sizes = {len(value) for value in payload.values()}
            if len(sizes) != 1:
                raise ValueError("the row format needs inputs of one batch size")
            body["instances"] = [
                {name: value[i] for name, value in payload.items()} for i in range(sizes.pop())
            ]
        else:
            body["inputs"] = payload
        answer = self._call("POST", f"{self.model_url}:predict", body)
        if row:
            predictions = answer["predictions"]
            if predictions and isinstance(predictions[0], dict):
                return {key: np.asarray([p[key] for p in predictions]) for key in predictions[0]}
            return {self._only_output(signature_name): np.asarray(predictions)}
        outputs = answer["outputs"]
        if isinstance(outputs, dict):
            return {key: np.asarray(value) for key, value in outputs.items()}
        return {self._only_output(signature_name): np.asarray(outputs)}

    def _only_output(self, signature_name: str) -> str:
        # TF Serving leaves out the name when a signature has a single output.
        if signature_name not in self._outputs:
            self._outputs[signature_name] = sorted(self.metadata()[signature_name]["outputs"])
        (name,) = self._outputs[signature_name]
        return name


class GrpcServingClient(_SignatureCalls):
    """TF Serving gRPC client for one model (``PredictionService`` and ``ModelService``).

    Needs ``tensorflow-serving-api`` (``pip install 'keras-siamese[grpc]'``), which
    brings TensorFlow for its tensor protos. Same methods as :class:`ServingClient`;
    a server error is a :class:`ServingError` whose ``status`` is the gRPC code's name.

    Args:
        target: the server's gRPC address, e.g. ``localhost:8500``.
        model, version, timeout, version_label: as for :class:`ServingClient`
            (``model_spec.version`` or ``model_spec.version_label``).
        max_message_bytes: the largest request or answer.
    """

    def __init__(
        self,
        target: str = "localhost:8500",
        model: str = "siamese",
        version: int | None = None,
        timeout: float = 60.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        version_label: str | None = None,
    ):
        if version is not None and version_label is not None:
            raise ValueError("give a version or a version_label, not both")
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc
        self.model = model
        self.version = version
        self.version_label = version_label
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _spec(self, spec) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise ServingError(error.code().name, error.details()) from None

    def status(self) -> list[dict]:
        """The version statuses, in the REST client's form."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            {
                "version": str(entry.version),
                "state": states.Name(entry.state),
                "status": {
                    "error_code": "OK" if entry.status.error_code == 0 else str(entry.status.error_code),
                    "error_message": entry.status.error_message,
                },
            }
            for entry in response.model_version_status
        ]

    def predict(
        self, inputs: dict[str, Any], signature_name: str = "serving_default"
    ) -> dict[str, np.ndarray]:
        """Runs any signature; returns its outputs as numpy arrays."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec)
        request.model_spec.signature_name = signature_name
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "iub":
                # The project's signatures take float32 pixels (or strings); TF Serving's gRPC
                # API refuses any other dtype, where its REST API reads JSON numbers as float.
                value = value.astype(np.float32)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._predictions.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


def _images(images: Images) -> tuple[bool, Any]:
    """(encoded?, value): pixel arrays as ``(N, H, W, 1)``, files as a list of bytes."""
    if isinstance(images, np.ndarray) and images.dtype != object:
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if images.ndim != 4 or images.shape[-1] != 1:
            raise ValueError(
                f"expected grey-scale images (N, H, W) or (N, H, W, 1), got shape {images.shape}"
            )
        return False, images
    files = []
    for item in images:
        if isinstance(item, (bytes, bytearray)):
            files.append(bytes(item))
        elif isinstance(item, (str, os.PathLike)):
            files.append(Path(item).read_bytes())
        else:
            raise TypeError(f"expected an image file path or bytes, got {type(item).__name__}")
    return True, files


def _image_pair(first: Images, second: Images) -> tuple[bool, Any, Any]:
    """(encoded?, first, second) for two image arguments of one kind."""
    encoded, first_value = _images(first)
    second_encoded, second_value = _images(second)
    if encoded != second_encoded:
        raise ValueError("give both image sets as arrays or both as files")
    return encoded, first_value, second_value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.integer):
            return value.tolist()  # pixels as JSON integers: compact and exact
        return value.astype(np.float32).tolist()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
        return [{"b64": base64.b64encode(v).decode("ascii")} for v in value]
    return value
