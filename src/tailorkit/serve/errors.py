"""Errors of the OpenAI-compatible server, answered in OpenAI's error JSON with a 4xx code."""

from __future__ import annotations

from ..errors import TailorkitError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error"}


class ApiError(TailorkitError):
    """A request the server refuses: HTTP status, message, and the offending parameter when there is one."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
