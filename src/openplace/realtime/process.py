"""The hub built from the settings, and its periodic work started and stopped; used by
both modes."""

from __future__ import annotations

import asyncio
import logging

from openplace.config import Settings
from openplace.realtime.hub import Hub, run_online_ticker
from openplace.storage.base import Feed

log = logging.getLogger(__name__)
TASKS_STOP_SECONDS = 2.0


def build_hub(settings: Settings, feed: Feed) -> Hub:
    return Hub(
        feed,
        replay_limit=settings.replay_limit,
        send_buffer=settings.ws_send_buffer_bytes,
        max_per_ip=settings.ws_max_connections_per_ip,
        send_share=settings.ws_send_share,
        max_batch_delay=settings.ws_max_batch_delay_seconds,
    )


def start_background(hub: Hub, settings: Settings) -> list[asyncio.Task[None]]:
    """The hub's periodic work: telling clients the online count when it changes."""
    ticker = run_online_ticker(hub, settings.online_interval_seconds)
    return [asyncio.create_task(ticker, name="online_ticker")]


async def stop_tasks(tasks: list[asyncio.Task[None]], timeout: float = TASKS_STOP_SECONDS) -> None:
    """Cancel ``tasks`` and wait for them, at most ``timeout``: a client library that
    swallows a cancellation must not keep the process from stopping."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        log.warning("stopping without waiting for %s: still running %.0f s after cancel",
                    ", ".join(sorted(t.get_name() for t in pending)), timeout)  # fmt: skip
