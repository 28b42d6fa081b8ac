"""JSON error responses: ``{"error": "<code>", "message": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openplace.web.security import HEADERS

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class APIError(Exception):
    """Raised by handlers; rendered as a JSON error with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def render_error(
    code: str, message: str, headers: Mapping[str, str] | None = None, **extra: object
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The one JSON error renderer: the body ``{"error": code, "message": message,
    **extra}`` and its raw headers (content type and length, then ``headers``). Every
    JSON error goes through it: :func:`error_response` for Starlette, and the placement
    fast path (:class:`~openplace.api.placing.PlaceEndpoint`), which sends raw ASGI."""
    body = orjson.dumps({"error": code, "message": message, **extra})
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return body, raw


class ErrorResponse(Response):
    """A JSON error as a Starlette response, rendered by :func:`render_error`."""

    media_type = "application/json"

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        self.status_code = status
        self.background = None
        self.body, self.raw_headers = render_error(code, message, headers, **extra)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: object
) -> Response:
    return ErrorResponse(status, code, message, headers, **extra)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Rendered by Starlette's outermost middleware, outside SecurityHeaders: add them here.
    return error_response(500, "internal", "internal server error", HEADERS)
