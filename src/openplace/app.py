"""The composition root: build the ASGI app for a mode and a set of roles.

The mode (:mod:`openplace.embedded`, or :mod:`openplace.distributed` when
``OPENPLACE_REDIS_URL`` and ``OPENPLACE_DATABASE_URL`` are set) builds the
:class:`~openplace.services.Services` for the roles; this module adds the routes, the
hub, the middleware and the lifespan around them, the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.types import ASGIApp

from openplace.api.board_cache import BoardCache
from openplace.api.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from openplace.api.placing import PlaceFastPath
from openplace.api.routes import ROUTES
from openplace.auth.moderators import ModeratorSigner
from openplace.auth.tokens import TokenSigner
from openplace.config import Settings
from openplace.history.timeline import Timeline
from openplace.realtime.endpoint import websocket_endpoint
from openplace.realtime.hub import Hub
from openplace.realtime.process import build_hub, start_background, stop_tasks
from openplace.services import ALL_ROLES, Build
from openplace.state import AppState
from openplace.web.files import PageFiles, TemplateFiles
from openplace.web.security import SecurityHeaders

STATIC_DIR = Path(__file__).parent / "web" / "static"
__all__ = ["ALL_ROLES", "STATIC_DIR", "create_app"]


def mode(settings: Settings) -> Build:
    """The ``build`` of the configured mode (imported only when used)."""
    if settings.distributed:
        from openplace.distributed import build
    else:
        from openplace.embedded import build
    return build


class CanvasApp(Starlette):
    """Starlette, with ``POST /api/pixel`` answered by :class:`PlaceFastPath` ahead of
    the whole middleware stack when ``fast_path`` (the placement endpoint renders its
    own errors and adds its own security headers, so Starlette's error middleware and
    ``SecurityHeaders`` would only wrap its ``send``)."""

    def __init__(self, *, fast_path: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_path = fast_path

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return PlaceFastPath(stack) if self.fast_path else stack


def create_app(settings: Settings, roles: Collection[str] = ALL_ROLES) -> Starlette:
    """An app serving ``roles``: ``api`` (HTTP API), ``realtime`` (/ws), ``web`` (page)."""
    services = mode(settings)(settings, roles)
    store = services.store
    hub: Hub | None = None
    tasks: list[asyncio.Task[None]] = []
    routes: list[BaseRoute] = []
    if "api" in roles:
        routes += ROUTES
    if "realtime" in roles and services.feed is not None:
        hub = build_hub(settings, services.feed)
        routes.append(WebSocketRoute("/ws", websocket_endpoint))
    if "web" in roles:
        # The operators' template images (read-only, images only), before the page's "/".
        templates = TemplateFiles(settings.templates_path)
        routes.append(Mount("/templates", templates, name="templates"))
        routes.append(Mount("/", PageFiles(directory=STATIC_DIR, html=True), name="web"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        opened = []
        try:
            for r in services.resources:
                await r.open()
                opened.append(r)
            if hub is not None:
                await hub.start()
                tasks.extend(start_background(hub, settings))
                if services.background is not None:
                    tasks.extend(services.background(hub))
            yield
        finally:
            await stop_tasks(tasks)
            if hub is not None:
                hub.stop()
            for r in reversed(opened):
                await r.close()

    app = CanvasApp(
        fast_path="api" in roles,
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    state = AppState(settings=settings, roles=frozenset(roles), store_=store, hub_=hub)
    if "api" in roles:
        assert store is not None, "the api role needs a store"
        secret = settings.resolve_secret()
        state = dataclasses.replace(
            state,
            signer_=TokenSigner(secret),
            board_cache_=BoardCache(store, settings.board_refresh_seconds),
            timeline_=Timeline(services.archive) if services.archive is not None else None,
            moderation_=services.moderation,
            moderators_=ModeratorSigner(secret),
        )
    app.state.openplace = state  # set once; read through openplace.state.state_of()
    return app
