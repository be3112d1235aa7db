"""A local, TF-Serving-compatible REST and gRPC server for development, tests and the notebook.

    python -m keras_siamese.serve --model_name siamese --model_base_path saved_models/siamese

TensorFlow Serving itself ships as a Docker image and from Google's apt
repository. Where neither is available, this module serves the same SavedModel
folder over the subset of TF Serving's REST API that
:mod:`keras_siamese.serving.client` uses, with the same URLs, request and response
bodies and ``{"error": "..."}`` errors:

- ``GET  /v1/models/<name>[/versions/<v> | /labels/<label>]``: model status;
- ``GET  /v1/models/<name>[/versions/<v> | /labels/<label>]/metadata``: signature definitions;
- ``POST /v1/models/<name>[/versions/<v> | /labels/<label>]:predict``: any signature, row
  (``instances``) or columnar (``inputs``) requests, ``{"b64": ...}`` strings;
- ``GET  /monitoring/prometheus/metrics``: request counts and latencies
  (:mod:`keras_siamese.serving.metrics`);
- over gRPC (``--port``, with ``tensorflow-serving-api`` installed),
  ``PredictionService.Predict`` and ``ModelService.GetModelStatus``, with
  ``model_spec.version`` or ``model_spec.version_label``.

As TF Serving does by default, it serves the highest version under the base
path and polls the folder for new versions (``--file_system_poll_wait_seconds``),
loading a new one before unloading the old. A ``--model_config_file``
(:func:`read_model_config`) can instead serve ``specific`` versions and name them
by version labels. Each version's warm-up requests
(``assets.extra/tf_serving_warmup_requests``) are replayed when it loads, before it
is served; a failing one fails the load, as under TF Serving. A version that fails
to load is reported in the model status (state ``END`` and the error) and retried
with back-off; the previous one stays in service. Nothing the poller meets (odd
folder names, unreadable folders, broken exports) stops it.

Every request is bounded: bodies over ``--max_request_bytes`` are refused, gRPC
tensors are checked against the signature (dtype, shape, element count) before
anything is allocated for them, JSON ``null``/``NaN``/``Infinity`` and non-finite
numbers are refused, and a request that runs past its deadline
(``--rest_api_timeout_in_ms``, or a gRPC client's own, shorter deadline) is
answered with 504 / ``DEADLINE_EXCEEDED``. Errors carry TF Serving's statuses:
TensorFlow errors are mapped by their canonical code (:data:`HTTP_STATUS`).

Differences from TF Serving (docs/serving.md): gRPC offers only Predict and
GetModelStatus, one model per server (a ``--model_config_file`` lists one), no
``:classify``/``:regress`` (answered 501), no request batching, and error
messages of its own wording.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from flask import Flask, Response, request
from google.protobuf import json_format, text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from werkzeug.exceptions import HTTPException

from keras_siamese.export import VERSION_NAME, read_warmup_file, versions
from keras_siamese.serving.errors import ServingError
from keras_siamese.serving.metrics import CONTENT_TYPE, METRICS_PATH, ServingMetrics

log = logging.getLogger("keras_siamese.serve")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# TF Serving's defaults for --rest_api_timeout_in_ms, --max_num_load_retries and
# --load_retry_interval_micros.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_SECONDS = 60.0

# /v1/models/<name>[/versions/<version> | /labels/<label>][/metadata | :<method>]; a version
# that is not a plain ASCII number is caught by _parse_version with a clear message.
_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<metadata>metadata)|:(?P<method>[A-Za-z]+))?$"
)

# A warm-up record's tensors are bounded by the file that holds them, not by a request limit.
_WARMUP_MAX_BYTES = 1 << 40

#: The HTTP status TF Serving's REST API answers for each canonical (gRPC) error code.
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# The gRPC code for an error raised with only an HTTP status (the inverse of the table above,
# one code per status; 413 is gRPC's own answer to an oversized message).
_GRPC_CODE = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED", 413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CODE_NAMES = {getattr(tf.errors, name): name for name in HTTP_STATUS}


def _error(code: str, message: str) -> ServingError:
    """A ``ServingError`` for a canonical error code: TF Serving's HTTP status, the gRPC code kept."""
    error = ServingError(HTTP_STATUS[code], message)
    error.grpc_code = code
    return error


def grpc_code(error: ServingError) -> str:
    """The gRPC status code name for a server error (never ``UNKNOWN``: others are ``INTERNAL``)."""
    code = getattr(error, "grpc_code", None) or _GRPC_CODE.get(error.status, "INTERNAL")
    return "INTERNAL" if code == "UNKNOWN" else code


def _parse_version(version: str | int | None) -> int | None:
    """A URL's version as a number; anything but ASCII digits is a 400."""
    if version is None or isinstance(version, int):
        return version
    if not VERSION_NAME.fullmatch(version):
        raise ServingError(400, f"Malformed version {version!r}: a version is a number such as 1")
    return int(version)


def _fingerprint(path: Path) -> tuple | None:
    """The names, sizes and modification times under ``path``: changes when files do."""
    try:
        items = []
        for root, _, files in os.walk(path):
            for name in files:
                stat = os.stat(os.path.join(root, name))
                items.append((os.path.relpath(os.path.join(root, name), path), stat.st_size,
                              stat.st_mtime_ns))
        return tuple(sorted(items))
    except OSError:
        return None


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


@dataclasses.dataclass
class _Failure:
    """A version that failed to load, and when to try it again."""

    error: str
    code: str
    attempts: int  # failed loads since the folder last changed
    retry_at: float | None  # time.monotonic() of the next try; None: no more tries
    fingerprint: tuple | None  # the folder's files when it last failed


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model of a TF Serving ``ModelServerConfig``: what to serve and under which labels.

    Attributes:
        name: the model name in URLs.
        base_path: the folder of numbered versions.
        policy: ``"latest"`` (the highest version that loads), ``"specific"`` (the versions
            listed) or ``"all"`` (every version).
        versions: the versions of a ``specific`` policy.
        labels: version label to version number (``version_labels``).
    """

    name: str
    base_path: Path
    policy: str = "latest"
    versions: frozenset[int] = frozenset()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


def _resolve_base_path(base_path: str, config_file: Path) -> Path:
    """``base_path`` as given, or, when it does not exist here, the folder of the same name
    beside ``config_file`` (a container's ``/models/siamese`` is ``saved_models/siamese``
    beside ``saved_models/models.config``)."""
    path = Path(base_path)
    if path.exists():
        return path
    return config_file.parent / path.name


def read_model_config(path: str | Path) -> ModelConfig:
    """Reads TF Serving's ``--model_config_file``: a ``ModelServerConfig`` in text format.

    It must list one model, on the ``tensorflow`` platform, with a ``latest`` policy of one
    version (the default), a ``specific`` one or ``all``. Version labels of a ``specific``
    policy must name versions it lists.

    Raises:
        ValueError: the file cannot be read or parsed, or asks for what this server lacks.
    """
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path)
    try:
        text = path.read_text()
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise ValueError(f"cannot read the model config {path}: {error}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: this server reads a model_config_list only")
    models = config.model_config_list.config
    if len(models) != 1:
        raise ValueError(f"{path}: lists {len(models)} models; this server serves one")
    model = models[0]
    if not model.name or not model.base_path:
        raise ValueError(f"{path}: the model needs a name and a base_path")
    if model.model_platform not in ("", "tensorflow"):
        raise ValueError(f"{path}: model_platform {model.model_platform!r}; this server serves "
                         "tensorflow SavedModels")
    policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
    numbers: frozenset[int] = frozenset()
    if policy == "latest" and model.model_version_policy.latest.num_versions > 1:
        raise ValueError(f"{path}: latest {{ num_versions: "
                         f"{model.model_version_policy.latest.num_versions} }}; this server "
                         "serves the latest version only (use specific to serve several)")
    if policy == "specific":
        numbers = frozenset(model.model_version_policy.specific.versions)
        if not numbers:
            raise ValueError(f"{path}: a specific version policy lists no versions")
    labels = dict(model.version_labels)
    if policy == "specific":
        unlisted = {label: v for label, v in labels.items() if v not in numbers}
        if unlisted:
            raise ValueError(f"{path}: version labels {unlisted} name versions the specific "
                             f"policy does not serve ({sorted(numbers)})")
    return ModelConfig(
        model.name, _resolve_base_path(model.base_path, path), policy, numbers, labels
    )


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
    """Serves the highest version under ``base_path`` that loads (or the versions a policy
    names), and watches for new ones.

    Args:
        name: the model name in URLs.
        base_path: the folder holding numbered versions (``saved_models/<name>``).
        poll_seconds: how often to look for new versions (0: only on :meth:`refresh`).
        max_load_retries: how many times a version that failed to load is tried again
            (TF Serving's ``--max_num_load_retries``); a change to its files starts over.
        load_retry_seconds: the wait before the first retry, doubled after each failure.
        request_timeout: seconds a prediction may take before it is answered with 504
            (None: no limit).
        workers: predictions computed at once; one that outlives its deadline keeps its
            worker until it finishes, so abandoned work never exceeds this.
        policy, versions, labels: the version policy and labels of a model config
            (:class:`ModelConfig`); by default the latest version, no labels.
    """

    def __init__(
        self,
        name: str,
        base_path: str | Path,
        poll_seconds: float = 1.0,
        max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
        load_retry_seconds: float = DEFAULT_LOAD_RETRY_SECONDS,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        workers: int = 4,
        policy: str = "latest",
        versions: frozenset[int] = frozenset(),
        labels: dict[str, int] | None = None,
    ):
        self.name = name
        self.base_path = Path(base_path)
        self.poll_seconds = poll_seconds
        self.max_load_retries = max_load_retries
        self.load_retry_seconds = load_retry_seconds
        self.request_timeout = request_timeout
        self.metrics = ServingMetrics()
        self._lock = threading.Lock()  # guards the state below
        self._refreshing = threading.Lock()  # one refresh at a time
        self._policy, self._versions = policy, frozenset(versions)
        self._labels: dict[str, int] = dict(labels or {})
        self._loaded: dict[int, _Version] = {}  # the versions in service
        self._signature_names: frozenset[str] = frozenset()  # theirs, for metric labels
        self._failed: dict[int, _Failure] = {}
        self._loading: int | None = None
        self._list_error: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._config_watcher: threading.Thread | None = None
        self._workers = futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="predict")

    # --- Versions ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Loads the highest version above the served one that loads; never raises.

        A version that fails is retried after ``load_retry_seconds`` (doubling), at most
        ``max_load_retries`` times, and again whenever its files change (once they have stopped
        changing for a poll: a copy in progress is not loaded half-way). Meanwhile the next
        lower version is tried, so a server whose newest export is broken still serves.
        """
        with self._refreshing:
            try:
                self._refresh()
            except Exception:  # the poller must outlive anything the file system does
                log.exception("refreshing the versions of %s failed; trying again later", self.name)

    def _refresh(self) -> None:
        try:
            if not self.base_path.is_dir():  # gone, or renamed away: report it, keep serving
                raise FileNotFoundError("no such folder")
            available = versions(self.base_path)
        except OSError as error:
            message = f"cannot list {self.base_path}: {type(error).__name__}: {error}"
            if message != self._list_error:  # once per new error, not once per poll
                log.error("%s; the served version (if any) stays in service", message)
            with self._lock:
                self._list_error = message
            return
        with self._lock:
            self._list_error = None
            policy, listed = self._policy, self._versions
            for number in list(self._failed):
                if number not in available or (policy == "specific" and number not in listed):
                    del self._failed[number]  # its folder is gone, or no longer asked for
        now = time.monotonic()
        if policy == "latest":
            with self._lock:
                if len(self._loaded) > 1:  # a policy serving several versions gave way
                    self._keep({max(self._loaded)})
                floor = max(self._loaded, default=-1)
            for number in reversed(available):
                if number <= floor:
                    return
                if self._due(number, now) and self._load(number):
                    return
            return
        # specific and all: every listed version that exists is loaded, the highest first.
        for number in reversed(available):
            if policy == "specific" and number not in listed:
                continue
            with self._lock:
                loaded = number in self._loaded
            if not loaded and self._due(number, now):
                self._load(number)
        if policy == "specific":
            with self._lock:
                self._keep(listed)

    def _keep(self, numbers: set[int] | frozenset[int]) -> None:
        """Unloads the versions in service that are not in ``numbers``; holds ``_lock``."""
        for number in [n for n in self._loaded if n not in numbers]:
            del self._loaded[number]
            log.info("unloaded %s version %d (not in the version policy)", self.name, number)
        self._signature_names = frozenset(
            name for version in self._loaded.values() for name in version.signatures
        )

    def _due(self, number: int, now: float) -> bool:
        """Whether to try loading ``number`` now."""
        with self._lock:
            failure = self._failed.get(number)
        if failure is None:
            return True
        fingerprint = _fingerprint(self.base_path / str(number))
        if fingerprint != failure.fingerprint:
            # Its files changed: start over, once they have stayed the same for one poll.
            with self._lock:
                failure.fingerprint, failure.attempts, failure.retry_at = fingerprint, 0, now
            return False
        return failure.retry_at is not None and now >= failure.retry_at

    def _load(self, number: int) -> bool:
        path = self.base_path / str(number)
        fingerprint = _fingerprint(path)
        log.info("loading %s version %d from %s", self.name, number, path)
        with self._lock:
            self._loading = number
        try:
            loaded = _Version(path)
            started = time.monotonic()
            replayed = _replay_warmup(loaded)
        except Exception as error:  # any load failure must leave the server serving
            code = _CODE_NAMES.get(getattr(error, "error_code", None), "UNKNOWN")
            with self._lock:
                self._loading = None
                previous = self._failed.get(number)
                attempts = (previous.attempts if previous else 0) + 1
                retry_at = None
                if attempts <= self.max_load_retries:
                    wait = self.load_retry_seconds * 2 ** min(attempts - 1, 16)
                    retry_at = time.monotonic() + wait
                self._failed[number] = _Failure(
                    f"{type(error).__name__}: {_tf_message(error)}", code, attempts, retry_at,
                    fingerprint,
                )
            log.error("version %d of %s failed to load (attempt %d): %s", number, self.name,
                      attempts, error)
            return False
        log.info("replayed %d warm-up records of %s version %d in %.2f s", replayed, self.name,
                 number, time.monotonic() - started)
        with self._lock:
            self._loading = None
            if self._policy == "latest":
                self._loaded = {}
            self._loaded[number] = loaded
            self._failed.pop(number, None)
            self._keep(set(self._loaded))
        log.info("serving %s version %d", self.name, number)
        return True

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
        """Stops polling; predictions in progress finish in their worker threads."""
        self._stop.set()
        self._workers.shutdown(wait=False, cancel_futures=True)

    @property
    def serving(self) -> int | None:
        """The highest version in service, or None."""
        with self._lock:
            return max(self._loaded, default=None)

    @property
    def labels(self) -> dict[str, int]:
        """Version label to version number."""
        with self._lock:
            return dict(self._labels)

    def apply_config(self, config: ModelConfig) -> None:
        """Takes a model config's version policy and labels (its name and base path must be
        this server's); the next refresh loads and unloads versions to match."""
        if config.name != self.name or Path(config.base_path) != self.base_path:
            raise ValueError(
                f"the model config serves {config.name} from {config.base_path}; this server "
                f"serves {self.name} from {self.base_path} (a change needs a restart)"
            )
        with self._lock:
            changed = (config.policy, config.versions, config.labels) != (
                self._policy, self._versions, self._labels)
            self._policy, self._versions = config.policy, frozenset(config.versions)
            self._labels = dict(config.labels)
        if changed:
            log.info("model config: %s policy%s, labels %s", config.policy,
                     f" {sorted(config.versions)}" if config.policy == "specific" else "",
                     config.labels or "none")

    def watch_config(self, path: str | Path, poll_seconds: float) -> None:
        """Rereads the model config at ``path`` every ``poll_seconds`` in a background thread
        (TF Serving's ``--model_config_file_poll_wait_seconds``) and applies it, then
        refreshes. A config that cannot be read or changes the model is logged and ignored."""
        if poll_seconds <= 0 or self._config_watcher is not None:
            return

        def watch():
            last_error = None
            while not self._stop.wait(poll_seconds):
                try:
                    self.apply_config(read_model_config(path))
                    last_error = None
                except ValueError as error:
                    if str(error) != last_error:  # once per new error, not once per poll
                        log.error("%s; keeping the model config in force", error)
                    last_error = str(error)
                    continue
                self.refresh()

        self._config_watcher = threading.Thread(target=watch, name="config-watcher", daemon=True)
        self._config_watcher.start()

    def unavailable_reason(self) -> str:
        """Why no version is in service (for logs and the 503 answer)."""
        with self._lock:
            failed, loading, list_error = dict(self._failed), self._loading, self._list_error
        reasons = [f"version {n} failed to load: {f.error}" for n, f in sorted(failed.items())]
        if loading is not None:
            reasons.insert(0, f"version {loading} is loading")
        if list_error:
            reasons.insert(0, list_error)
        return "; ".join(reasons) or f"no version found under {self.base_path}"

    def _labelled(self, version: str | int | None, label: str | None) -> int | None:
        """The version number a request names by number or by label (None: neither); an
        unknown label is TF Serving's INVALID_ARGUMENT."""
        if label is None:
            return _parse_version(version)
        with self._lock:
            number = self._labels.get(label)
        if number is None:
            raise _error("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return number

    def resolve(
        self, name: str, version: str | int | None, label: str | None = None
    ) -> tuple[int, _Version]:
        """The version that answers a request: 404 for an unknown model or version, 503 when
        the version asked for (or, with none asked for, every version) failed or is loading;
        400 for an unknown version ``label``."""
        if name != self.name:
            number = _parse_version(version)
            what = f"Latest({name})" if number is None and label is None else (
                f"Specific({name}, {label if label is not None else number})")
            raise ServingError(404, f"Servable not found for request: {what}")
        number = self._labelled(version, label)
        with self._lock:
            loaded = dict(self._loaded)
            failure, loading = self._failed.get(number), self._loading
            pending = bool(self._failed) or loading is not None or self._list_error
        current = (max(loaded), loaded[max(loaded)]) if loaded else None
        if number is None:
            if current is not None:
                return current
            if pending:
                raise _error("UNAVAILABLE", f"Model {name} has no version available: "
                             f"{self.unavailable_reason()}")
            raise ServingError(404, f"Servable not found for request: Latest({name})")
        if number in loaded:
            return number, loaded[number]
        if failure is not None:
            raise _error("UNAVAILABLE", f"Version {number} of model {name} is not available: "
                         f"it failed to load: {failure.error}")
        if loading == number:
            raise _error("UNAVAILABLE", f"Version {number} of model {name} is loading")
        raise ServingError(404, f"Servable not found for request: Specific({name}, {number})")

    def status(self, name: str, version: str | int | None, label: str | None = None) -> dict:
        """TF Serving's GetModelStatus response: AVAILABLE only for the versions in service."""
        if name != self.name:
            raise ServingError(404, f"Could not find any versions of model {name}")
        number = self._labelled(version, label)
        with self._lock:
            loaded, failed, loading = set(self._loaded), dict(self._failed), self._loading
            list_error = self._list_error
        now = time.monotonic()
        states = {}
        for failed_number, failure in failed.items():
            if failure.retry_at is None:
                note = (f" (no more retries after {failure.attempts - 1}; a change to its "
                        "files is tried again)")
            else:
                note = (f" (retry {failure.attempts} of {self.max_load_retries} in "
                        f"{max(0.0, failure.retry_at - now):.0f} s)")
            states[failed_number] = ("END", failure.code, failure.error + note)
        if loading is not None:
            states[loading] = ("LOADING", "OK", "")
        for loaded_number in loaded:
            states[loaded_number] = ("AVAILABLE", "OK", "")
        if number is not None:
            if number not in states:
                raise ServingError(404, f"Could not find version {number} of model {name}")
            states = {number: states[number]}
        if not states:
            if list_error:
                raise _error("UNAVAILABLE", f"Model {name}: {list_error}")
            raise ServingError(404, f"Could not find any versions of model {name}")
        return {
            "model_version_status": [
                {
                    "version": str(n),
                    "state": state,
                    "status": {"error_code": code, "error_message": message},
                }
                for n, (state, code, message) in sorted(states.items(), reverse=True)
            ]
        }

    def metadata(self, name: str, version: str | int | None, label: str | None = None) -> dict:
        """TF Serving's GetModelMetadata response (the signature definitions)."""
        number, loaded = self.resolve(name, version, label)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(number)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}},
        }

    # --- Predictions ----------------------------------------------------------------------

    def deadline(self, client_seconds: float | None = None) -> float | None:
        """The ``time.monotonic()`` by which a request starting now must be answered: the
        server's ``request_timeout`` or the client's own, shorter, time (None: no limit)."""
        limits = [s for s in (self.request_timeout, client_seconds) if s is not None and s > 0]
        return time.monotonic() + min(limits) if limits else None

    def call(self, compute: Callable[[], Any], deadline: float | None) -> Any:
        """``compute()`` in a worker thread; a 504 if ``deadline`` passes first.

        A request past its deadline is answered at once; its computation (TensorFlow cannot
        stop a running function) finishes in the worker, or never starts if it was still queued.
        """
        if deadline is None:
            return compute()

        def job():
            if time.monotonic() >= deadline:
                raise _error("DEADLINE_EXCEEDED", "Deadline exceeded before the request started "
                             "(the server is busy)")
            return compute()

        try:
            future = self._workers.submit(job)
        except RuntimeError:  # shut down
            raise _error("UNAVAILABLE", "the server is shutting down") from None
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except futures.TimeoutError:
            future.cancel()
            raise _error("DEADLINE_EXCEEDED", "Deadline exceeded: the request took longer than "
                         "the server's --rest_api_timeout_in_ms or the client's deadline") from None

    def run(
        self, name: str, version: str | int | None, signature_name: str, inputs: dict[str, Any],
        label: str | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Runs a signature on named input values (JSON lists or numpy arrays).

        Returns the version that answered and the outputs; bad input is a ``ServingError``.
        """
        number, loaded = self.resolve(name, version, label)
        return number, _run(loaded, _signature_name(signature_name), inputs)

    def predict(
        self, name: str, version: str | int | None, body: Any, label: str | None = None
    ) -> dict:
        """TF Serving's REST predict: row or columnar request, same-format response."""
        # Resolved once: the version that parses the request also answers it, even if a
        # newer one is loaded meanwhile. An unknown model or version is a 404 first.
        _, loaded = self.resolve(name, version, label)
        if not isinstance(body, dict):
            raise ServingError(400, "the request body must be a JSON object")
        if ("instances" in body) == ("inputs" in body):
            raise ServingError(400, 'the request needs exactly one of "instances" or "inputs"')
        signature_name = _signature_name(body.get("signature_name", "serving_default"))
        specs = _signature(loaded, signature_name).structured_input_signature[1]
        row = "instances" in body
        try:
            named = (_row_inputs(body["instances"], specs) if row
                     else _columnar_inputs(body["inputs"], specs))
            outputs = _run(loaded, signature_name, named)
        except RecursionError:
            raise ServingError(400, "the request's lists are nested too deeply") from None
        if row:
            return {"predictions": _row_outputs(outputs)}
        if len(outputs) == 1:
            return {"outputs": _jsonable(*next(iter(outputs.items())))}
        return {"outputs": {key: _jsonable(key, value) for key, value in outputs.items()}}

    def observe(
        self, name: str, entrypoint: str, signature_name: Any, started: float,
        error: Exception | None = None,
    ) -> None:
        """Counts a Predict request in :attr:`metrics` (``entrypoint``: ``REST`` or ``GRPC``)
        by its status, and its latency since ``started`` (``time.monotonic()``) if answered.

        Only this server's model name and its versions' signature names become label
        values (others are ``""``), so clients cannot grow the metrics without bound.
        """
        if error is None:
            status = "OK"
        elif isinstance(error, ServingError):
            status = grpc_code(error)
        else:
            status = "INTERNAL"
        with self._lock:
            known = self._signature_names
        signature = signature_name if isinstance(signature_name, str) else ""
        self.metrics.observe(
            name if name == self.name else "", "Predict", entrypoint,
            (signature or "serving_default") if (signature or "serving_default") in known else "",
            status, time.monotonic() - started,
        )


def _check_protos(loaded: _Version, signature_name: str, inputs, max_request_bytes: int) -> None:
    """Refuses gRPC ``TensorProto`` inputs that do not fit the signature, before anything is
    allocated for them (:func:`check_tensor_proto`)."""
    specs = _signature(loaded, signature_name).structured_input_signature[1]
    if set(inputs) != set(specs):
        raise ServingError(
            400, f"inputs {sorted(inputs)} given; the signature takes {sorted(specs)}"
        )
    for key, proto in inputs.items():
        check_tensor_proto(proto, specs[key], key, max_request_bytes // specs[key].dtype.size
                           if specs[key].dtype != tf.string else max_request_bytes)


def _run_protos(loaded: _Version, signature_name: str, inputs) -> dict[str, np.ndarray]:
    """Runs a signature on ``TensorProto`` inputs that :func:`_check_protos` accepted."""
    try:
        arrays = {key: tf.make_ndarray(proto) for key, proto in inputs.items()}
    except (TypeError, ValueError) as error:
        raise ServingError(400, f"malformed input tensor: {error}") from None
    return _run(loaded, signature_name, arrays)


def _replay_warmup(loaded: _Version) -> int:
    """Replays a version's warm-up records (``assets.extra/tf_serving_warmup_requests``), as
    TF Serving does before it serves the version; returns how many.

    Raises:
        ValueError: the file is unreadable, a record is not a Predict request, or a request
            fails: the version does not load.
    """
    logs = read_warmup_file(loaded.path)
    for index, record in enumerate(logs):
        kind = record.WhichOneof("log_type")
        if kind != "predict_log":
            raise ValueError(f"warm-up record {index} is a {kind}; this server replays "
                             "predict_log records only")
        request = record.predict_log.request
        signature_name = request.model_spec.signature_name or "serving_default"
        try:
            _check_protos(loaded, signature_name, request.inputs, _WARMUP_MAX_BYTES)
            _run_protos(loaded, signature_name, request.inputs)
        except ServingError as error:
            raise ValueError(f"warm-up record {index} ({signature_name}) failed: "
                             f"{error.message}") from None
    return len(logs)


def _run(loaded: _Version, signature_name: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    function = _signature(loaded, signature_name)
    specs = function.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise ServingError(400, f"inputs {sorted(inputs)} given; the signature takes {sorted(specs)}")
    tensors = {key: _to_tensor(value, specs[key], key) for key, value in inputs.items()}
    try:
        outputs = function(**tensors)
    except tf.errors.OpError as error:
        # TF Serving's contract: the error's canonical code decides the status.
        raise _error(_CODE_NAMES.get(error.error_code, "INTERNAL"), _tf_message(error)) from None
    except (ValueError, TypeError) as error:
        raise ServingError(400, _tf_message(error)) from None
    return {key: value.numpy() for key, value in outputs.items()}


def _signature_name(signature_name: Any) -> str:
    if not isinstance(signature_name, str):
        raise ServingError(400, f'"signature_name" must be a string, got {type(signature_name).__name__}')
    return signature_name or "serving_default"


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
    """A JSON value (or numpy array) as a tensor of the signature's dtype and shape, or a 400.

    Numbers must be finite: JSON ``null`` (which numpy would read as NaN), ``NaN``,
    ``Infinity`` and values beyond the dtype's range are refused, as are booleans and text
    where numbers are expected.
    """
    try:
        if spec.dtype == tf.string:
            array = np.array(_decode_b64(value), dtype=object)
            if array.size and not all(isinstance(v, (bytes, str)) for v in array.ravel()):
                raise ServingError(400, f'input "{name}" takes strings ({{"b64": ...}} for images)')
        else:
            array = np.asarray(value)
            if array.dtype.kind not in "iuf":
                kind = {"O": "null or non-numbers", "U": "text", "S": "bytes", "b": "booleans"}
                raise ServingError(
                    400, f'input "{name}" holds {kind.get(array.dtype.kind, array.dtype.name)}; '
                    f"it takes {spec.dtype.name} numbers"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                array = array.astype(spec.dtype.as_numpy_dtype, copy=False)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ServingError(
                    400, f'input "{name}" holds NaN, Infinity or a number beyond {spec.dtype.name}\'s '
                    "range: values must be finite"
                )
    except ServingError:
        raise
    except (ValueError, TypeError, OverflowError) as error:
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
        return _jsonable(*next(iter(outputs.items())))
    keys = sorted(outputs)
    return [
        {key: _jsonable(key, np.asarray(outputs[key][i])) for key in keys}
        for i in range(sizes.pop())
    ]


def _jsonable(name: str, array: np.ndarray) -> Any:
    """An output as TF Serving's REST API writes it: strings as text, except in outputs named
    ``*_bytes`` (and strings that are not UTF-8), which go as ``{"b64": ...}``; shapes kept."""

    def text(value: Any) -> Any:
        if not isinstance(value, bytes):
            return value
        if not name.endswith("_bytes"):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode("ascii")}

    if array.dtype == object:
        return text(array.item()) if array.ndim == 0 else np.frompyfunc(text, 1, 1)(array).tolist()
    return array.tolist()


def _tf_message(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    # Keep the first meaningful line of TF's (long, graph-annotated) message.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at", "[[", "<stack"))]
    return (useful or lines or [type(error).__name__])[0]


def _dtype_name(enum: int) -> str:
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"dtype {enum}"


# The TensorProto field holding each dtype's values when tensor_content is empty, and how
# many field entries one element takes.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1), types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1), types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1), types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1), types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1), types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1), types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1), types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2), types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


def check_tensor_proto(proto, spec: tf.TensorSpec, name: str, max_elements: int) -> None:
    """Refuses (400 / INVALID_ARGUMENT) a gRPC input tensor before anything is allocated for it.

    The declared dtype must be the signature's, the declared shape must fit the signature's,
    its element count must be at most ``max_elements`` and must equal the values actually
    present. ``tf.make_ndarray`` would otherwise fill a declared 1x20000x20000x1 tensor from
    a 40-byte request, repeating its last value (TF's rule for short value lists).
    """
    expected = spec.dtype.as_datatype_enum
    if proto.dtype != expected:
        raise ServingError(400, f'input "{name}" is {_dtype_name(proto.dtype)}; the signature '
                           f"takes {_dtype_name(expected)}")
    if proto.tensor_shape.unknown_rank:
        raise ServingError(400, f'input "{name}" has no shape; the signature takes '
                           f"{spec.shape.as_list()}")
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims) or not spec.shape.is_compatible_with(dims):
        raise ServingError(400, f'input "{name}" has shape {dims}; the signature takes '
                           f"{spec.shape.as_list()} (None: any size)")
    count = math.prod(dims)
    if count > max_elements:
        raise ServingError(400, f'input "{name}" declares {count} elements; a request holds '
                           f"at most {max_elements}")
    if expected not in _VALUE_FIELDS:
        raise ServingError(400, f"inputs of {_dtype_name(expected)} are not supported")
    field, per_element = _VALUE_FIELDS[expected]
    if proto.tensor_content and expected != types_pb2.DT_STRING:
        present = len(proto.tensor_content)
        needed = count * spec.dtype.size
        unit = "bytes"
    else:
        present = len(getattr(proto, field))
        needed = count * per_element
        unit = f"values in {field}"
    if present != needed:
        raise ServingError(400, f'input "{name}" declares shape {dims} ({needed} {unit}) but '
                           f"holds {present}")


def create_grpc_server(
    server: ModelServer,
    address: str,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    threads: int = 4,
):
    """TF Serving's gRPC ``PredictionService.Predict`` and ``ModelService.GetModelStatus``.

    Needs ``tensorflow-serving-api`` (its protos and service stubs). Returns the started
    ``grpc.Server`` and the port it bound (``address`` may end in ``:0``). Every error is
    answered with a gRPC status (``INTERNAL`` for the unexpected, never ``UNKNOWN``); a
    prediction is bounded by the client's deadline and the server's ``request_timeout``.
    """
    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def answer(context, handler: Callable[[], Any]):
        try:
            return handler()
        except ServingError as error:
            failure = error
        except Exception as error:  # answered as INTERNAL, with the server still serving
            log.exception("internal error")
            failure = ServingError(500, f"internal error: {type(error).__name__}: {error}")
        context.abort(getattr(grpc.StatusCode, grpc_code(failure)), failure.message)

    def requested(spec) -> tuple[int | None, str | None]:
        """The version and the version label a ``ModelSpec`` asks for (at most one is set)."""
        choice = spec.WhichOneof("version_choice")
        return (spec.version.value if choice == "version" else None,
                spec.version_label if choice == "version_label" else None)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            started = time.monotonic()
            name, signature = request.model_spec.name, request.model_spec.signature_name

            def predict():
                try:
                    response = self._predict(request, context)
                except Exception as error:
                    server.observe(name, "GRPC", signature, started, error)
                    raise
                server.observe(name, "GRPC", signature, started)
                return response

            return answer(context, predict)

        def _predict(self, request, context):
            deadline = server.deadline(context.time_remaining())
            spec = request.model_spec
            signature_name = spec.signature_name or "serving_default"
            number, loaded = server.resolve(spec.name, *requested(spec))
            _check_protos(loaded, signature_name, request.inputs, max_request_bytes)
            outputs = server.call(
                lambda: _run_protos(loaded, signature_name, request.inputs), deadline
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = number
            response.model_spec.signature_name = signature_name
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            return answer(context, lambda: self._status(request))

        def _status(self, request):
            status = server.status(request.model_spec.name, *requested(request.model_spec))
            response = get_model_status_pb2.GetModelStatusResponse()
            for entry in status["model_version_status"]:
                item = response.model_version_status.add()
                item.version = int(entry["version"])
                item.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
                item.status.error_code = getattr(tf.errors, entry["status"]["error_code"])
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


def _refuse_constant(name: str):
    raise ServingError(400, f"JSON Parse error: {name} is not a number a tensor can hold "
                       "(values must be finite)")


def parse_json(data: bytes) -> Any:
    """A request body as JSON, or a 400 (bad JSON, NaN/Infinity, too deeply nested)."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ServingError(400, "JSON Parse error: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ServingError(400, f"JSON Parse error: {error}") from None


def create_app(server: ModelServer, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Flask:
    """The Flask application answering TF Serving's REST URLs for ``server``."""
    app = Flask("keras_siamese.serve")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def answer(status: int, body: dict) -> Response:
        # allow_nan=False: a NaN would make the answer invalid JSON; it becomes a 500 instead.
        return Response(json.dumps(body, allow_nan=False), status=status, mimetype="application/json")

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

    @app.route(METRICS_PATH, methods=["GET"])
    def metrics():
        return Response(server.metrics.exposition(), status=200, content_type=CONTENT_TYPE)

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def models(rest: str):
        match = _URL.match(request.path)
        if match is None:
            raise ServingError(404, f"Malformed request: {request.method} {request.path}")
        name, label, method = match["name"], match["label"], match["method"]
        if method is None:
            version = _parse_version(match["version"])
            if request.method != "GET":
                raise ServingError(405, f"{request.path} takes GET")
            if match["metadata"]:
                return answer(200, server.metadata(name, version, label))
            return answer(200, server.status(name, version, label))
        if request.method != "POST":
            raise ServingError(405, f"{request.path} takes POST")
        if method in ("classify", "regress"):
            raise ServingError(501, f":{method} is not implemented by this server; use :predict")
        if method != "predict":
            raise ServingError(404, f"Malformed request: unknown method :{method}")
        started, signature_name = time.monotonic(), ""
        try:
            version = _parse_version(match["version"])
            deadline = server.deadline()
            body = parse_json(request.get_data(cache=False))
            if isinstance(body, dict):
                signature_name = body.get("signature_name", "")
            result = server.call(lambda: server.predict(name, version, body, label), deadline)
        except Exception as error:
            server.observe(name, "REST", signature_name, started, error)
            raise
        server.observe(name, "REST", signature_name, started)
        return answer(200, result)

    return app
