"""What every realtime process tells its clients from Redis: the online count across
processes (one Redis hash), and moderation's public policy (``op:policy:public``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time

import orjson
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


async def follow_policy(hub: Hub, redis: aioredis.Redis, interval: float) -> None:
    """Every ``interval``: a newer public policy (frozen, protected areas) to the hub."""
    while True:
        try:
            raw = await redis.get(keys.POLICY_PUBLIC)
            if raw is not None:
                public = orjson.loads(raw)
                hub.set_policy(int(public.pop("version")), public)
        except (RedisError, OSError, ValueError) as exc:
            log.debug("policy not read: %s", exc)
        await asyncio.sleep(interval)
