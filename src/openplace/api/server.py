"""How every openplace process runs uvicorn: httptools with openplace's limits
(:mod:`openplace.api.limits`), the transport-exposing websocket protocol, and a drain
before the graceful shutdown (:class:`DrainingServer`)."""

from __future__ import annotations

import logging
import math
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from openplace.api.limits import ForwardedWebsockets, guarded_protocol, raise_fd_limit
from openplace.config import Settings
from openplace.observe.health import Drain
from openplace.realtime.transport import WSProtocol
from openplace.state import state_of

log = logging.getLogger(__name__)


def uvicorn_config(app: ASGIApp, settings: Settings, drain: Drain | None = None) -> uvicorn.Config:
    """The uvicorn configuration of an app (also used by the tests)."""
    return uvicorn.Config(
        ForwardedWebsockets(app, settings.trusted_proxies),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(settings, drain),
        timeout_keep_alive=math.ceil(settings.http_keepalive_timeout_seconds),
        ws=WSProtocol,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # clients ping; a server ping per client costs at 20k
        proxy_headers=False,  # GuardedProtocol and ForwardedWebsockets do it
        server_header=False,
        backlog=4096,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM (or SIGINT) first drains for ``drain_seconds``: it
    stops listening at once (a proxy's new connections are refused, and it sends the
    request to another server: nothing was sent), and goes on answering on the
    connections it has, each answer closing its connection, so that a proxy (nginx
    keeps connections to the API) stops using them without sending a request down a
    connection that is being closed. Then uvicorn's graceful shutdown: finish the
    requests in progress (placements waiting for their acknowledgement included). A
    second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = drain_seconds
        self._listening = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.since is None and self.drain_seconds > 0:
            self.drain.since = time.monotonic()
            log.info("draining for %.1f s before stopping", self.drain_seconds)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        since = self.drain.since
        if since is not None:
            if self._listening:
                self._listening = False
                for server in self.servers:
                    server.close()
            if time.monotonic() - since >= self.drain_seconds:
                self.should_exit = True
        return await super().on_tick(counter)


def run_uvicorn(app: Starlette, settings: Settings, drain_seconds: float = 0.0) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (after a drain of ``drain_seconds``, during
    which its ``/readyz`` says so)."""
    raise_fd_limit()
    drain = state_of(app).drain
    DrainingServer(uvicorn_config(app, settings, drain), drain, drain_seconds).run()
