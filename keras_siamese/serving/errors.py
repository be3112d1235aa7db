"""The one error type of the serving client and the local server."""

from __future__ import annotations


class ServingError(RuntimeError):
    """A model server's error answer, raised by the clients and answered by the local server.

    Attributes:
        status: the HTTP status code (None when the server could not be reached); over
            gRPC, the status code's name (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"``, ...).
        message: the server's error message, sent as ``{"error": message}``.
    """

    def __init__(self, status: int | str | None, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
