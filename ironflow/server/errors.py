"""The API's errors: one JSON shape, ``{"error": {"type", "message"}}``, for every failure.

Handlers raise ``ApiError`` (or let a Litestar ``HTTPException`` through: a malformed body,
an unknown route, a body past the size limit); ``handlers`` maps each to the shape. An
unexpected exception is a 500 that names no internals: bad input never gets there, since each
handler checks its input at the boundary.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

_LOG = logging.getLogger("ironflow.server")

# The ``type`` of an error by status: a stable word a client can branch on.
TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    500: "internal_error",
}


class ApiError(Exception):
    """A failure the API reports as ``status`` with ``message`` (what to do, where known)."""

    def __init__(self, status: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or TYPES.get(status, "error")


@attrs.frozen
class ErrorDetail:
    """What went wrong: a stable ``type`` word and a readable ``message``."""

    type: str
    message: str


@attrs.frozen
class ErrorBody:
    """Every error answer: ``{"error": {"type", "message"}}``."""

    error: ErrorDetail


def body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind or TYPES.get(status, "error"), "message": message}}


def handlers() -> dict[Any, Any]:
    """Litestar exception handlers turning every failure into the error shape."""
    from litestar import Request, Response
    from litestar.exceptions import HTTPException, ValidationException

    def api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
        return Response(body(exc.status, exc.message, exc.kind), status_code=exc.status)

    def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        status = exc.status_code
        message = str(exc.detail)
        if isinstance(exc, ValidationException) and exc.extra:
            message = f"{message}: {_problems(exc.extra)}"
        elif status == 404:
            message = "no such route; the API is under /api (see GET /api/openapi.json)"
        elif status == 413:
            message = f"{message}: the request body is larger than this server accepts"
        headers = getattr(exc, "headers", None) or None
        return Response(body(status, message), status_code=status, headers=headers)

    def internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        _LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"internal error ({type(exc).__name__}); the server log has the details"
        return Response(body(500, message), status_code=500)

    return {ApiError: api_error, HTTPException: http_error, Exception: internal}


def _problems(extra: Any) -> str:
    """Litestar's validation details as one line: ``key (source): message; ...``."""
    if not isinstance(extra, list):
        return str(extra)
    parts = []
    for item in extra:
        if isinstance(item, dict):
            where = item.get("key")
            source = item.get("source")
            prefix = f"{where} ({source}): " if where and source else f"{where}: " if where else ""
            parts.append(f"{prefix}{item.get('message', '')}")
        else:
            parts.append(str(item))
    return "; ".join(parts)
