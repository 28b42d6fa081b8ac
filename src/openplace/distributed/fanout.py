"""``openplace realtime``: the feed, the hub and the lean websocket server, wired up."""

from __future__ import annotations

import asyncio
import logging
import signal

from openplace.config import Settings
from openplace.distributed.feed import RedisFeed
from openplace.distributed.online import report_online
from openplace.distributed.websocket_server import serve
from openplace.realtime.process import build_hub, start_background

log = logging.getLogger(__name__)


async def run_realtime(settings: Settings) -> None:
    """Serve ``/ws`` on Redis + PostgreSQL until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    feed = RedisFeed.from_urls(settings.redis_url or "", settings.database_url or "")
    await feed.open()
    hub = build_hub(settings, feed)
    await hub.start()
    tasks = start_background(hub, settings)
    tasks.append(asyncio.create_task(
        report_online(hub, feed.redis, settings.online_interval_seconds)
    ))  # fmt: skip
    server = await serve(
        hub, settings.host, settings.port,
        max_message=settings.ws_max_message_bytes, trusted_proxies=settings.trusted_proxies,
        max_handshake=settings.http_max_header_bytes,
        handshake_timeout=settings.http_header_timeout_seconds,
    )  # fmt: skip
    log.info("realtime serving on %s:%d", settings.host, settings.port)
    try:
        await stop.wait()
    finally:
        server.close()
        hub.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await feed.close()
