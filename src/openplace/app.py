"""The composition root: build the ASGI app for a mode and a set of roles.

Embedded mode (the default) runs every role in one process on an
:class:`~openplace.storage.embedded.EmbeddedStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles

from openplace.api.board_cache import BoardCache
from openplace.api.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from openplace.api.ratelimit import RateLimiter
from openplace.api.routes import ROUTES
from openplace.auth.tokens import TokenSigner
from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.realtime.endpoint import websocket_endpoint
from openplace.realtime.hub import Hub, run_online_ticker
from openplace.storage.embedded import EmbeddedStore

STATIC_DIR = Path(__file__).parent / "web" / "static"


def create_app(settings: Settings, store: EmbeddedStore | None = None) -> Starlette:
    """The embedded app: API, websocket fan-out and web page in one process."""
    geometry = Geometry(settings.width, settings.height)
    if store is None:
        store = EmbeddedStore(
            settings.data_dir / "openplace.sqlite3",
            geometry,
            settings.cooldown_seconds,
            snapshot_every=settings.snapshot_every,
        )
    hub = Hub(
        store,
        replay_limit=settings.replay_limit,
        send_buffer=settings.ws_send_buffer_bytes,
        max_per_ip=settings.ws_max_connections_per_ip,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        await hub.start()
        ticker = asyncio.create_task(run_online_ticker(hub, settings.online_interval_seconds))
        try:
            yield
        finally:
            ticker.cancel()
            hub.stop()
            await store.close()

    app = Starlette(
        routes=[
            *ROUTES,
            WebSocketRoute("/ws", websocket_endpoint),
            Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web"),
        ],
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.hub = hub
    app.state.signer = TokenSigner(settings.resolve_secret())
    app.state.board_cache = BoardCache(store, settings.board_refresh_seconds)
    app.state.session_limiter = RateLimiter(settings.sessions_per_ip_per_minute, 60.0)
    return app
