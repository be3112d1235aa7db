"""The local server's Prometheus metrics, named after TF Serving's own.

TF Serving exports its monitoring metrics at ``/monitoring/prometheus/metrics`` under names
such as ``:tensorflow:serving:request_count`` (its internal ``/tensorflow/serving/...`` names
with ``/`` written as ``:``). Names that start with ``:`` are not valid in every Prometheus
client, and a counter's samples end in ``_total`` in today's exposition format, so the local
server writes them with ``_`` instead (docs/serving.md, "Metrics"):

- ``tensorflow_serving_request_count_total{model_name, API, entrypoint, signature_name, status}``:
  ``:tensorflow:serving:request_count{model_name, status}``, with the labels of
  ``request_latency`` and the signature added;
- ``tensorflow_serving_request_latency{model_name, API, entrypoint, signature_name}``: a
  histogram in microseconds with TF Serving's buckets, of answered requests, as
  ``:tensorflow:serving:request_latency{model_name, API, entrypoint}``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS_MICROS", "METRICS_PATH", "ServingMetrics"]

#: TF Serving's path for Prometheus, on its REST port.
METRICS_PATH = "/monitoring/prometheus/metrics"

#: TF Serving's latency buckets: 10 us times powers of 1.8, 33 of them (up to about 20 minutes).
LATENCY_BUCKETS_MICROS = tuple(10.0 * 1.8**i for i in range(33))


class ServingMetrics:
    """Request counts and latencies of one server, in a registry of their own.

    A registry per server keeps two servers in one process (tests) from sharing counts.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model_name", "API", "entrypoint", "signature_name")
        self.request_count = Counter(
            "tensorflow_serving_request_count",
            "The total number of requests (TF Serving: :tensorflow:serving:request_count).",
            (*labels, "status"), registry=self.registry,
        )
        self.request_latency = Histogram(
            "tensorflow_serving_request_latency",
            "Distribution of wall time (in microseconds) of answered requests "
            "(TF Serving: :tensorflow:serving:request_latency).",
            labels, buckets=LATENCY_BUCKETS_MICROS, registry=self.registry,
        )

    def observe(
        self, model_name: str, api: str, entrypoint: str, signature_name: str, status: str,
        seconds: float,
    ) -> None:
        """Counts one request by its status (a canonical code name, ``OK`` when answered) and,
        when answered, records its latency as TF Serving does (only for answered requests)."""
        labels = (model_name, api, entrypoint, signature_name)
        self.request_count.labels(*labels, status).inc()
        if status == "OK":
            self.request_latency.labels(*labels).observe(seconds * 1e6)

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)
