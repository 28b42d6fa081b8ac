"""The hub built from the settings, and its periodic work; used by both modes."""

from __future__ import annotations

import asyncio

from openplace.config import Settings
from openplace.realtime.hub import Hub, run_online_ticker
from openplace.storage.base import Feed


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
