"""How every openplace process runs uvicorn: httptools with openplace's limits
(:mod:`openplace.api.limits`) and the transport-exposing websocket protocol."""

from __future__ import annotations

import math

import uvicorn
from starlette.types import ASGIApp

from openplace.api.limits import guarded_protocol, raise_fd_limit
from openplace.config import Settings
from openplace.realtime.transport import WSProtocol


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration of an app (also used by the tests)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(settings),
        timeout_keep_alive=math.ceil(settings.http_keepalive_timeout_seconds),
        ws=WSProtocol,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # clients ping; a server ping per client costs at 20k
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        server_header=False,
        backlog=4096,
    )


def run_uvicorn(app: ASGIApp, settings: Settings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM."""
    raise_fd_limit()
    uvicorn.Server(uvicorn_config(app, settings)).run()
