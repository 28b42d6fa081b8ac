"""JSON error responses: ``{"error": "<code>", "message": "..."}``; a store that cannot
be reached is a 503 (:func:`read_store`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TypeVar

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openplace.core.placement import StoreUnavailable
from openplace.state import state_of
from openplace.web.security import headers_for

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a store raises when its servers are down, restarting or paused.
STORE_OUTAGES: tuple[type[BaseException], ...] = (StoreUnavailable, TimeoutError)

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


def http_response(
    status: int, body: bytes, extra: list[tuple[str, str]] | None = None, *, head: bool = False
) -> bytes:
    """A complete JSON HTTP/1.1 response with ``Connection: close`` (no body for HEAD),
    for the layers that answer before any ASGI app: the HTTP server's limits and the
    lean websocket server."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    headers = [
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *(extra or []),
    ]
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    """A request refused before any app runs: an HTTP status and a JSON error."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return render_error(self.code, self.message)[0]

    def http(self, *, allow: str | None = None) -> bytes:
        """The whole HTTP/1.1 response; the connection is closed after it."""
        extra = [*self.headers, *([("Allow", allow)] if allow else [])]
        return http_response(self.status, self.body(), extra)


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
    return error_response(500, "internal", "internal server error", headers_for(request.url.path))


async def read_store(request: Request, reading: Awaitable[T]) -> T:
    """A store read, or a 503 if the store is unreachable or does not answer in time
    (distributed mode: Redis or PostgreSQL down or paused)."""
    try:
        timeout = state_of(request).settings.store_read_timeout_seconds
        return await asyncio.wait_for(reading, timeout)
    except STORE_OUTAGES as exc:
        log.warning("store read failed: %r", exc)
        raise APIError(
            503, "unavailable", "the store cannot be read now; try again",
            headers={"Retry-After": "1"},
        ) from exc  # fmt: skip
