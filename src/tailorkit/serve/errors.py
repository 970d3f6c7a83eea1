"""Errors of the OpenAI-compatible server, answered in OpenAI's error JSON with a 4xx code."""

from __future__ import annotations

import re

from ..errors import TailorkitError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # '<_io.BytesIO object at 0x7f..>'
MAX_MESSAGE_CHARS = 2000


class ApiError(TailorkitError):
    """A request the server refuses: HTTP status, message, the offending parameter when there is one, and
    extra response headers (e.g. Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object. Messages never show Python object reprs, and are kept to a readable length."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    message = _OBJECT_REPR.sub("", message).encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " ..."
    if param is not None:
        param = param.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
