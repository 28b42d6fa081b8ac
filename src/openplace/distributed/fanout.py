"""``openplace realtime``: the feed, the hub and the lean websocket server, wired up."""

from __future__ import annotations

import asyncio
import logging
import signal

from openplace.config import Settings
from openplace.distributed import build
from openplace.distributed.feed import RedisFeed
from openplace.distributed.websocket_server import serve
from openplace.realtime.hub import Hub
from openplace.realtime.process import build_hub, start_background, stop_tasks

log = logging.getLogger(__name__)


async def run_realtime(settings: Settings) -> None:
    """Serve ``/ws`` on Redis + PostgreSQL until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    services = build(settings, {"realtime"})  # the feed, and what tells clients from Redis
    feed, background = services.feed, services.background
    assert isinstance(feed, RedisFeed) and background is not None
    await feed.open()
    hub = build_hub(settings, feed)
    await hub.start()
    tasks = start_background(hub, settings) + background(hub)
    server = await serve(
        hub, settings.host, settings.port,
        max_message=settings.ws_max_message_bytes, trusted_proxies=settings.trusted_proxies,
        max_handshake=settings.http_max_header_bytes,
        handshake_timeout=settings.http_header_timeout_seconds,
        metrics_from=settings.metrics_from,
    )  # fmt: skip
    log.info("realtime serving on %s:%d", settings.host, settings.port)
    try:
        await stop.wait()
    finally:
        server.close()  # no new clients
        hub.stop()  # each client is sent what it had coming, then close 1001: it resumes
        await drain(hub, settings.drain_seconds)
        await stop_tasks(tasks)
        await feed.close()


async def drain(hub: Hub, seconds: float) -> None:
    """Wait until every client's connection has closed (its last frames written), for at
    most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while hub.subscribers and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if hub.subscribers:
        log.warning("stopping with %d clients still connected", len(hub.subscribers))
