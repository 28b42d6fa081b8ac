"""HTTP handlers: validate the request, call the store, shape the answer.

Handlers find their collaborators through :func:`openplace.state.state_of` (built by
:func:`openplace.app.create_app`): ``settings``, ``store``, ``signer``,
``board_cache``, ``timeline``, ``moderation``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, request_response
from starlette.types import Receive, Scope, Send

from openplace.api.admin import ADMIN_ROUTES
from openplace.api.errors import APIError, read_store
from openplace.api.history import (
    board_png_endpoint,
    heatmap_endpoint,
    history,
    moment,
    past_board,
    pixel_history,
)
from openplace.api.json import JSONResponse
from openplace.api.openapi import openapi_schema
from openplace.api.params import accepts_gzip, coordinate, matches_etag
from openplace.api.placing import authorization_of, identify, iso, place_endpoint, refused
from openplace.auth.tokens import Identity
from openplace.config import Network, address_in, networks
from openplace.core.board import InvalidPixel
from openplace.core.palette import PALETTE
from openplace.core.policy import banned
from openplace.observe import health, metrics
from openplace.state import AppState, state_of

log = logging.getLogger(__name__)
T = TypeVar("T")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def authenticate(request: Request) -> Identity:
    return identify(state_of(request).signer, authorization_of(request.headers.raw))


# -- handlers ------------------------------------------------------------------------


async def canvas(request: Request) -> Response:
    s = state_of(request).settings
    return JSONResponse(
        {
            "width": s.width,
            "height": s.height,
            "palette": list(PALETTE),
            "cooldown_seconds": s.cooldown_seconds,
        },
        headers={"Cache-Control": "public, max-age=60"},
    )


async def new_session(request: Request) -> Response:
    """``POST /api/session``: a new anonymous user, within the per-address caps."""
    state = state_of(request)
    address, now = client_ip(request), time.time()
    store = state.store
    ban = (await read_store(request, store.current_policy())).address_ban(address, now)
    if ban is not None:
        raise refused(banned(ban))
    identity = state.signer.new_identity()
    wait = await read_store(request, store.admit_session(identity.user_id, address))
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise APIError(
            429,
            "rate_limited",
            f"too many new sessions from this address; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    await read_store(request, state.moderation.record_session(identity.user_id, address, now))
    token = state.signer.issue(identity)
    return JSONResponse({"token": token, "user_id": identity.user_id}, 201)


async def policy(request: Request) -> Response:
    """``GET /api/policy``: whether the canvas is frozen, and its protected areas."""
    policy = await read_store(request, state_of(request).store.current_policy())
    return JSONResponse(policy.public(), headers={"Cache-Control": "no-cache"})


async def board(request: Request) -> Response:
    """``GET /api/board``: the board now, or with ``?seq=``/``?at=`` at that moment."""
    state = state_of(request)
    if "seq" in request.query_params or "at" in request.query_params:
        found = await moment(request, state.timeline)
        assert found is not None
        return await past_board(request, *found)
    metrics.BOARD_REQUESTS.inc()
    cached = await state.board_cache.get()
    s = state.settings
    gz = accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = cached.etag[:-1] + '-gz"' if gz else cached.etag
    headers = {
        "ETag": etag,
        "X-Seq": str(cached.seq),
        "X-Board-Id": cached.board_id,
        "Vary": "Accept-Encoding",
        "Cache-Control": f"public, max-age={s.board_max_age_seconds}, "
        f"stale-while-revalidate={5 * max(1, s.board_max_age_seconds)}",
    }
    if matches_etag(request, etag):
        return Response(status_code=304, headers=headers)
    if gz:
        headers["Content-Encoding"] = "gzip"
        body = await cached.gzipped()
        return Response(body, media_type="application/octet-stream", headers=headers)
    return Response(cached.data, media_type="application/octet-stream", headers=headers)


async def me(request: Request) -> Response:
    identity = authenticate(request)
    store = state_of(request).store
    state = await read_store(request, store.user(identity.user_id, client_ip(request)))
    return JSONResponse(
        {
            "user_id": state.user_id,
            "last_placed_at": iso(state.last_placed),
            "next_at": iso(state.next_at),
        },
        headers={"Cache-Control": "no-store"},
    )


async def pixel_info(request: Request) -> Response:
    x, y = coordinate(request, "x"), coordinate(request, "y")
    store = state_of(request).store
    try:
        index = store.geometry.index(x, y)
    except InvalidPixel as exc:
        raise APIError(400, "bad_coordinates", str(exc)) from exc
    info = await read_store(request, store.pixel(index))
    return JSONResponse(
        {
            "x": x,
            "y": y,
            "color": info.color,
            "user_id": info.user_id,
            "placed_at": iso(info.ts),
            "seq": info.seq,
        },
        headers={"Cache-Control": "no-cache"},
    )


class PixelEndpoint:
    """ASGI app for ``/api/pixel``: GET (and HEAD) reads a pixel, POST places one. One
    route for both, so a wrong method is told every allowed one (``Allow``)."""

    def __init__(self) -> None:
        self.read = request_response(pixel_info)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            await place_endpoint(scope, receive, send)
        else:
            await self.read(scope, receive, send)


async def healthz(request: Request) -> Response:
    cached = await state_of(request).board_cache.get()
    return JSONResponse({"status": "ok", "seq": cached.seq}, headers={"Cache-Control": "no-store"})


# -- operations: metrics, liveness, readiness ------------------------------------------


@functools.cache
def _networks(text: str) -> tuple[Network, ...]:
    return networks(text)


async def not_ready(state: AppState) -> health.Problems:
    """What keeps this process from serving (see :mod:`openplace.observe.health`)."""
    problems: health.Problems = {}
    if state.drain.active:
        problems["draining"] = "stopping: finishing what is in progress"
    store = state.store_
    if store is not None:
        if isinstance(store, health.Checked):
            problems.update(await store.health())
        await health.check("board", state.board_cache.get(), problems)
    hub = state.hub_
    if hub is not None:
        if not hub.following():
            problems["feed"] = "not following the committed placements"
        feed = hub.feed
        if id(feed) != id(store) and isinstance(feed, health.Checked):
            problems.update(await feed.health())
    return problems


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text, to clients of ``OPENPLACE_METRICS_FROM`` only."""
    state = state_of(request)
    s = state.settings
    if not address_in(client_ip(request), _networks(s.metrics_from)):
        raise APIError(404, "not_found", "not found")
    health.record(await not_ready(state))  # readiness and the dependencies, as of now
    body = metrics.render(metrics.registry(state.roles, s.distributed))
    return Response(body, media_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


async def livez(request: Request) -> Response:
    """``GET /livez``: the process runs (its event loop answers)."""
    return Response(health.LIVE, media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when the dependencies answer and the board is current."""
    status, body = health.answer(await not_ready(state_of(request)))
    return Response(body, status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema(state_of(request).settings))


# Mounted at /api, so a wrong method on an API path is a JSON 405, not the page's 404.
API_ROUTES = [
    Route("/canvas", canvas, methods=["GET"]),
    Route("/session", new_session, methods=["POST"]),
    Route("/policy", policy, methods=["GET"]),
    Route("/board", board, methods=["GET"]),
    Route("/board.png", board_png_endpoint, methods=["GET"]),
    Route("/history", history, methods=["GET"]),
    Route("/heatmap.png", heatmap_endpoint, methods=["GET"]),
    Route("/pixel", PixelEndpoint(), methods=["GET", "HEAD", "POST"]),
    Route("/pixel/history", pixel_history, methods=["GET"]),
    Mount("/admin", routes=ADMIN_ROUTES),
    Route("/me", me, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
ROUTES = [
    Mount("/api", routes=API_ROUTES),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
