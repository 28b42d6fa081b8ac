"""The composition root: build the ASGI app for a mode and a set of roles.

Embedded mode (the default) runs every role in one process on an
:class:`~openplace.storage.embedded.EmbeddedStore`. In distributed mode
(``OPENPLACE_REDIS_URL`` and ``OPENPLACE_DATABASE_URL`` set) an ``api`` process holds a
:class:`~openplace.storage.distributed.store.DistributedStore` and a ``realtime``
process a :class:`~openplace.storage.distributed.feed.RedisFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles

from openplace.api.board_cache import BoardCache
from openplace.api.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from openplace.api.placing import PlaceFastPath
from openplace.api.ratelimit import RateLimiter
from openplace.api.routes import ROUTES
from openplace.auth.tokens import TokenSigner
from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.realtime.endpoint import websocket_endpoint
from openplace.realtime.hub import Hub
from openplace.realtime.process import build_hub, start_background
from openplace.storage.embedded import EmbeddedStore
from openplace.web.security import SecurityHeaders

STATIC_DIR = Path(__file__).parent / "web" / "static"
ALL_ROLES = frozenset({"api", "realtime", "web"})


def create_app(settings: Settings, roles: Collection[str] = ALL_ROLES) -> Starlette:
    """An app serving ``roles``: ``api`` (HTTP API), ``realtime`` (/ws), ``web`` (page)."""
    geometry = Geometry(settings.width, settings.height)
    resources: list[Any] = []  # opened in order on start, closed in reverse
    tasks: list[Any] = []
    store: Any = None
    hub: Hub | None = None
    routes: list[BaseRoute] = []

    if settings.distributed:
        from openplace.storage.distributed.store import DistributedStore

        if "api" in roles:
            store = DistributedStore(
                settings.redis_url or "",
                settings.database_url or "",
                geometry,
                settings.cooldown_seconds,
                ack_timeout=settings.ack_timeout_seconds,
            )
            resources.append(store)
        if "realtime" in roles:
            from openplace.storage.distributed.feed import RedisFeed

            feed: Any = RedisFeed.from_urls(settings.redis_url or "", settings.database_url or "")
            resources.append(feed)
    else:
        store = EmbeddedStore(
            settings.data_dir / "openplace.sqlite3", geometry, settings.cooldown_seconds,
            snapshot_every=settings.snapshot_every,
        )  # fmt: skip
        feed = store
        resources.append(store)

    if "api" in roles:
        routes += ROUTES
    if "realtime" in roles:
        hub = build_hub(settings, feed)
        routes.append(WebSocketRoute("/ws", websocket_endpoint))
    if "web" in roles:
        routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        opened = []
        try:
            for r in resources:
                await r.open()
                opened.append(r)
            if hub is not None:
                await hub.start()
                tasks.extend(start_background(hub, settings, getattr(feed, "redis", None)))
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if hub is not None:
                hub.stop()
            for r in reversed(opened):
                await r.close()

    app = Starlette(
        routes=routes,
        # Security headers outermost: every response gets them, placements included.
        middleware=[Middleware(SecurityHeaders)]
        + ([Middleware(PlaceFastPath)] if "api" in roles else []),
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
    if "api" in roles:
        app.state.signer = TokenSigner(settings.resolve_secret())
        app.state.board_cache = BoardCache(store, settings.board_refresh_seconds)
        app.state.session_limiter = RateLimiter(settings.sessions_per_ip_per_minute, 60.0)
    return app
