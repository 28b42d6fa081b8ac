"""Placing a pixel over HTTP: the hot path, kept lean.

:func:`place` is the whole request, from the ``Authorization`` header and the body to
the answer. :class:`PlaceFastPath` serves ``POST /api/pixel`` with it as plain ASGI, in
front of the router and middleware, because this is the one request that comes at
thousands per second; the Starlette route serves the same endpoint.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from openplace.api.errors import APIError, render_error
from openplace.auth.tokens import Identity, InvalidToken, TokenSigner
from openplace.core.board import InvalidPixel, check_color
from openplace.core.placement import CooldownActive, PlacementRefused, StoreUnavailable
from openplace.core.policy import Refusal
from openplace.observe.metrics import (
    ACCEPTED,
    BAD_REQUEST,
    INTERNAL,
    PLACEMENT_SECONDS,
    REFUSED_BY_CODE,
)
from openplace.state import AppState, state_of
from openplace.web.security import API_RAW_HEADERS

log = logging.getLogger(__name__)


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-26T06:32:04.123Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def authorization_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's one ``Authorization`` header ("" if none). Two or more are a 400:
    which one counts would otherwise depend on who reads them."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                raise APIError(400, "bad_request", "more than one Authorization header")
            found = value
    return "" if found is None else found.decode("latin-1")


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (``None``: no token)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip(" \t")  # HTTP's whitespace, not str.strip()'s


def identify(signer: TokenSigner, authorization: str) -> Identity:
    """The user behind an ``Authorization: Bearer <token>`` header, or a 401."""
    token = bearer_token(authorization)
    if token is None:
        raise APIError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <token>' (get a token from POST /api/session)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return signer.verify(token)
    except InvalidToken as exc:
        raise APIError(
            401,
            "unauthorized",
            "invalid token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc


def too_large(limit: int) -> APIError:
    return APIError(413, "body_too_large", f"request body over {limit} bytes")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, "bad_json", "request body is not valid JSON") from exc


_FIELDS = frozenset(("x", "y", "color"))


def integer(value: object, name: str) -> int:
    """A JSON field that must be an integer, or a 400 naming it."""
    if type(value) is not int:  # bools and floats are not coordinates
        raise APIError(400, "bad_request", f"'{name}' must be an integer")
    return value


def refused(refusal: Refusal) -> APIError:
    """The 403 for what the policy refuses (``frozen``, ``banned``, ``protected``)."""
    extra = dict(refusal.extra)
    if "expires_at" in extra:
        expires = extra["expires_at"]
        extra["expires_at"] = iso(expires) if isinstance(expires, int | float) else None
    return APIError(403, refusal.code, refusal.message, **extra)


async def place(state: AppState, authorization: str, body: bytes, address: str) -> dict[str, Any]:
    """Validate a placement request, store it, and return the 200 answer's body."""
    identity = identify(state.signer, authorization)
    data = parse_json(body)
    if not isinstance(data, dict):
        raise APIError(400, "bad_request", 'expected an object {"x", "y", "color"}')
    if len(data) > 3 and (unknown := data.keys() - _FIELDS):
        raise APIError(400, "bad_request", f"unknown fields: {', '.join(sorted(unknown))[:200]}")
    x = integer(data.get("x"), "x")
    y = integer(data.get("y"), "y")
    color = integer(data.get("color"), "color")
    store = state.store
    try:
        index = store.geometry.index(x, y)
        check_color(color)
    except InvalidPixel as exc:
        code = "bad_color" if exc.field == "color" else "bad_coordinates"
        raise APIError(400, code, str(exc)) from exc
    try:
        placement = await store.place(identity.user_id, index, color, address)
    except PlacementRefused as exc:
        raise refused(exc.refusal) from exc
    except CooldownActive as exc:
        retry = exc.retry_after
        raise APIError(
            429,
            "cooldown",
            f"you can place again in {math.ceil(retry)} s",
            headers={"Retry-After": str(max(1, math.ceil(retry)))},
            retry_after=round(retry, 3),
            next_at=iso(exc.next_at),
        ) from exc
    except StoreUnavailable as exc:
        if exc.maybe_placed:
            raise APIError(
                503,
                "unconfirmed",
                "the placement was accepted but not yet confirmed durable; it may still "
                "appear (see GET /api/pixel)",
                headers={"Retry-After": "5"},
            ) from exc
        raise APIError(
            503,
            "unavailable",
            "the placement could not be stored; nothing changed; try again",
            headers={"Retry-After": "1"},
        ) from exc
    cooldown = state.settings.cooldown_seconds
    return {"seq": placement.seq, "next_at": iso(placement.ts + cooldown)}


class PlaceEndpoint:
    """ASGI app for ``POST /api/pixel``: the request to :func:`place`, the answer back.
    Collaborators come from :func:`~openplace.state.state_of`; errors are rendered by
    :func:`~openplace.api.errors.render_error`, as everywhere else."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        state = state_of(scope)
        try:
            limit = state.settings.max_body_bytes
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    raise too_large(limit)
            body = b""
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    raise too_large(limit)
            client = scope.get("client")
            address = client[0] if client else "?"
            payload = await place(state, authorization_of(scope["headers"]), body, address)
        except APIError as exc:
            REFUSED_BY_CODE.get(exc.code, BAD_REQUEST).inc()
            status = exc.status
            content, headers = render_error(exc.code, exc.message, exc.headers, **exc.extra)
        except Exception:
            INTERNAL.inc()
            log.exception("placing failed")
            status = 500
            content, headers = render_error("internal", "internal server error")
        else:
            ACCEPTED.inc()
            PLACEMENT_SECONDS.observe(perf_counter() - started)
            status, content = 200, orjson.dumps(payload)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(content)),
            ]
        headers.extend(API_RAW_HEADERS)  # this path runs outside SecurityHeaders
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


place_endpoint = PlaceEndpoint()


class PlaceFastPath:
    """ASGI middleware: ``POST /api/pixel`` straight to :data:`place_endpoint`, ahead of
    routing and the other middleware (the endpoint adds the security headers itself);
    everything else to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/pixel" and scope["method"] == "POST":
            await place_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
