"""The online count across realtime processes, kept in one Redis hash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from openplace.distributed import keys
from openplace.realtime.hub import Hub

log = logging.getLogger(__name__)


async def report_online(hub: Hub, redis: aioredis.Redis, interval: float) -> None:
    """Every ``interval``: publish this process's count, read the total into the hub."""
    me = f"{os.getpid()}-{secrets.token_hex(3)}"
    total = 0
    hub.online = lambda: max(total, len(hub.subscribers))
    ttl_ms = int(max(interval * 3, 1) * 1000)
    try:
        while True:
            now = int(time.time() * 1000)
            try:
                await redis.hset(keys.ONLINE, me, f"{len(hub.subscribers)} {now + ttl_ms}")
                counts = await redis.hgetall(keys.ONLINE)
                fresh, stale = 0, []
                for proc, value in counts.items():
                    n, expires = keys.text(value).split(" ")
                    if int(expires) < now:
                        stale.append(proc)
                    else:
                        fresh += int(n)
                if stale:
                    await redis.hdel(keys.ONLINE, *stale)
                total = fresh
            except (RedisError, OSError) as exc:
                log.debug("online count not updated: %s", exc)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.hdel(keys.ONLINE, me)
