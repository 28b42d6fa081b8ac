"""How the app is put together: the one typed state, the one JSON error renderer, and
the middleware the placement path runs through (``PlaceFastPath``, which adds the
security headers itself, never the router)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from openplace.api.errors import APIError, error_response, render_error
from openplace.api.placing import PlaceFastPath
from openplace.app import create_app
from openplace.config import Settings
from openplace.state import AppState, MissingRole, state_of
from openplace.web.security import API_HEADERS, HEADERS, SecurityHeaders
from tests.conftest import LiveServer, auth, mint_token


def chain(app: ASGIApp) -> list[ASGIApp]:
    """The built middleware stack, outermost first, down to the router."""
    layers = [app]
    while not isinstance(layers[-1], Router):
        layers.append(layers[-1].app)  # type: ignore[attr-defined]
    return layers


def test_the_middleware_order_is_pinned(settings: Settings) -> None:
    app = create_app(settings)
    classes: list[object] = [m.cls for m in app.user_middleware]
    assert classes == [SecurityHeaders]
    layers = chain(app.build_middleware_stack())
    assert [type(layer) for layer in layers] == [
        PlaceFastPath,  # POST /api/pixel answered here, its errors and headers its own
        ServerErrorMiddleware,  # Starlette's: renders an uncaught 500 (handle_unexpected)
        SecurityHeaders,  # every other HTTP answer
        ExceptionMiddleware,  # APIError and HTTPException rendered by api/errors.py
        Router,
    ]
    assert layers[-1] is app.router


def test_a_process_without_the_api_role_has_no_fast_path(settings: Settings) -> None:
    app = create_app(settings, roles={"realtime", "web"})
    classes: list[object] = [m.cls for m in app.user_middleware]
    assert classes == [SecurityHeaders]
    assert PlaceFastPath not in [type(layer) for layer in chain(app.build_middleware_stack())]


class Recorder:
    """ASGI app in front of the router: the HTTP requests that reached it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


async def test_a_placement_skips_the_router_and_carries_the_security_headers(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/api/canvas")).status_code == 200  # builds the stack
    app: Starlette = server.app
    assert app.middleware_stack is not None
    fast = chain(app.middleware_stack)[0]
    assert isinstance(fast, PlaceFastPath)
    recorder = fast.app = Recorder(fast.app)

    token = mint_token()
    placed = await client.post("/api/pixel", json={"x": 1, "y": 2, "color": 3},
                               headers=auth(token))  # fmt: skip
    assert placed.status_code == 200, placed.text
    refused = await client.post("/api/pixel", json={"x": 1, "y": 2, "color": 3},
                                headers=auth(token))  # fmt: skip
    assert refused.status_code == 429 and refused.json()["error"] == "cooldown"
    unauthorized = await client.post("/api/pixel", json={"x": 1, "y": 2, "color": 3})
    assert unauthorized.status_code == 401
    for r in (placed, refused, unauthorized):
        for name, value in API_HEADERS.items():
            assert r.headers.get_list(name) == [value], (r.status_code, name)
    assert recorder.seen == []  # no placement reached the router

    missing = await client.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert (await client.get("/nothing-here.txt")).status_code == 404  # the page's 404
    read = await client.get("/api/pixel", params={"x": 1, "y": 2})
    assert read.status_code == 200 and read.json()["color"] == 3
    assert recorder.seen == [
        ("GET", "/api/nothing-here"),
        ("GET", "/nothing-here.txt"),
        ("GET", "/api/pixel"),
    ]
    for r in (missing, read):
        assert r.headers["content-security-policy"] == API_HEADERS["Content-Security-Policy"]
    page_missing = await client.get("/nothing-here.txt")
    assert page_missing.headers["x-frame-options"] == HEADERS["X-Frame-Options"]


async def test_the_fast_path_and_the_router_render_errors_alike(
    client: httpx.AsyncClient,
) -> None:
    """The same 401 from the fast path (POST /api/pixel) and from a routed handler
    (GET /api/me): same body, same error headers."""
    fast = await client.post("/api/pixel", json={"x": 1, "y": 2, "color": 3})
    routed = await client.get("/api/me")
    assert fast.status_code == routed.status_code == 401
    assert fast.content == routed.content
    for name in ("content-type", "www-authenticate", *HEADERS, *API_HEADERS):
        assert fast.headers.get_list(name) == routed.headers.get_list(name), name


def test_render_error_is_the_one_renderer() -> None:
    body, headers = render_error(
        "cooldown", "wait", {"Retry-After": "3"}, retry_after=2.5, next_at=None
    )
    assert orjson.loads(body) == {
        "error": "cooldown", "message": "wait", "retry_after": 2.5, "next_at": None
    }  # fmt: skip
    assert headers == [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"3"),
    ]
    exc = APIError(429, "cooldown", "wait", headers={"Retry-After": "3"}, retry_after=2.5,
                   next_at=None)  # fmt: skip
    response = error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)
    assert (response.status_code, response.body, response.raw_headers) == (429, body, headers)
    assert response.headers["content-type"] == "application/json"


def test_state_of_reads_one_typed_container(settings: Settings) -> None:
    app = create_app(settings, roles={"api", "web"})
    state = state_of(app)
    assert isinstance(state, AppState)
    assert state.settings is settings and state.roles == {"api", "web"}
    assert state_of({"type": "http", "app": app}) is state  # an ASGI scope
    assert state.store is not None and state.signer is not None
    with pytest.raises(MissingRole, match="'realtime' role"):
        state.hub  # noqa: B018
    with pytest.raises(AttributeError):
        state.settings = settings  # type: ignore[misc]  # frozen


def test_a_process_without_the_api_role_has_no_api_collaborators(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret="s")
    state = state_of(create_app(settings, roles={"web"}))
    for name in ("signer", "board_cache", "timeline"):
        with pytest.raises(MissingRole, match="'api' role"):
            getattr(state, name)
    with pytest.raises(MissingRole, match="'realtime' role"):
        state.hub  # noqa: B018
