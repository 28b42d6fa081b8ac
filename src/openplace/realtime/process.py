"""A realtime process: the feed, the hub and the lean websocket server, wired up."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from openplace.config import Settings
from openplace.realtime.hub import Hub, run_online_ticker
from openplace.storage.base import Feed

log = logging.getLogger(__name__)


def build_hub(settings: Settings, feed: Feed) -> Hub:
    return Hub(
        feed,
        replay_limit=settings.replay_limit,
        send_buffer=settings.ws_send_buffer_bytes,
        max_per_ip=settings.ws_max_connections_per_ip,
        sends_per_second=settings.ws_sends_per_second,
        max_batch_delay=settings.ws_max_batch_delay_seconds,
    )


def start_background(hub: Hub, settings: Settings, redis: Any = None) -> list[asyncio.Task[None]]:
    """The hub's periodic work: online counts (summed across processes via ``redis``)."""
    tasks = [asyncio.create_task(run_online_ticker(hub, settings.online_interval_seconds))]
    if redis is not None:
        from openplace.realtime.online import report_online

        tasks.append(
            asyncio.create_task(report_online(hub, redis, settings.online_interval_seconds))
        )
    return tasks


async def run_realtime(settings: Settings) -> None:
    """Serve ``/ws`` on Redis + PostgreSQL until SIGINT or SIGTERM."""
    from openplace.realtime.server import serve
    from openplace.storage.distributed.feed import RedisFeed

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    feed = RedisFeed.from_urls(settings.redis_url or "", settings.database_url or "")
    await feed.open()
    hub = build_hub(settings, feed)
    await hub.start()
    tasks = start_background(hub, settings, feed.redis)
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
