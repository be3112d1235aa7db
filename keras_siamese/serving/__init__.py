"""Serving the exported SavedModels: clients for TF Serving and a local stand-in server.

* `client`: `ServingClient` (REST) and `GrpcServingClient` (gRPC) for TF Serving's APIs;
* `server`: `ModelServer` and its REST and gRPC front ends, a TF-Serving-compatible server for
  development and tests (the command is `python -m keras_siamese.serve`);
* `errors`: `ServingError`, raised by the clients and answered by the server.

Importing this package loads only the client's dependencies (numpy, requests).
"""

from keras_siamese.serving.client import GrpcServingClient, Images, ServingClient
from keras_siamese.serving.errors import ServingError

__all__ = ["GrpcServingClient", "Images", "ServingClient", "ServingError"]
