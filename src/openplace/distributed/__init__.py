"""Distributed mode: the board and the sequence in Redis, durability in PostgreSQL, many
stateless processes behind nginx. The only package that talks to Redis or PostgreSQL.

- :mod:`.acks` - what is committed and what may be acknowledged: the rules, no I/O.
- :mod:`.keys` - Redis key names, the placement Lua script, stream entries.
- :mod:`.schema` - PostgreSQL migrations and metadata.
- :mod:`.store` - :class:`DistributedStore`, an API process's store.
- :mod:`.archive` - :class:`PostgresArchive`, the history in PostgreSQL.
- :mod:`.moderation` - :class:`PostgresModeration`, revocations and the audit log.
- :mod:`.feed` - :class:`RedisFeed`, committed runs as one process sees them.
- :mod:`.persister` - the one process that makes placements durable and restores Redis.
- :mod:`.websocket_server`, :mod:`.fanout` - the lean websocket server of a realtime
  process, and that process.
- :mod:`.online` - the online count across realtime processes.
- :mod:`.cluster`, :mod:`.commands` - ``openplace cluster`` and the mode's commands;
  ``nginx.conf.template`` is package data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from openplace.config import Settings
from openplace.services import Services


def build(settings: Settings, roles: Collection[str]) -> Services:
    """An API process's store (``api``), a realtime process's feed (``realtime``); both
    roles in one process share the store's feed (one subscription per process)."""
    from openplace.core.board import Geometry
    from openplace.distributed.archive import PostgresArchive
    from openplace.distributed.feed import RedisFeed
    from openplace.distributed.moderation import PostgresModeration
    from openplace.distributed.online import follow_policy, report_online
    from openplace.distributed.store import DistributedStore

    redis_url, database_url = settings.redis_url or "", settings.database_url or ""
    services = Services()
    if "api" in roles:
        moderation = PostgresModeration(database_url)
        store = DistributedStore(
            redis_url, database_url, Geometry(settings.width, settings.height),
            settings.cooldown_seconds, ack_timeout=settings.ack_timeout_seconds,
            cooldown_by=settings.cooldown_by,
            sessions_per_minute=settings.sessions_per_ip_per_minute,
            sessions_per_day=settings.sessions_per_address_per_day,
            policy_source=moderation.policy,
        )  # fmt: skip
        services.store = store
        services.archive = PostgresArchive(
            Geometry(settings.width, settings.height), database_url=database_url
        )
        services.moderation = moderation
        services.resources += [moderation, store, services.archive]
    if "realtime" in roles:
        if services.store is not None:
            feed = store.feed
        else:
            feed = RedisFeed.from_urls(redis_url, database_url)
            services.resources.append(feed)
        services.feed = feed
        interval = settings.online_interval_seconds
        services.background = lambda hub: [
            asyncio.create_task(report_online(hub, feed.redis, interval), name="report_online"),
            asyncio.create_task(follow_policy(hub, feed.redis, interval), name="follow_policy"),
        ]
    return services
