"""Embedded mode: one process, the board in memory, every placement in a SQLite log.

- :mod:`.store` - :class:`~.store.EmbeddedStore`, the store and the feed in one object.
- :mod:`.archive` - :class:`~.archive.SqliteArchive`, the history in the same file.
- :mod:`.moderation` - :class:`~.moderation.SqliteModeration`, revocations and the audit log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.core.quota import SessionQuota
from openplace.embedded.archive import SqliteArchive
from openplace.embedded.moderation import SqliteModeration
from openplace.embedded.store import EmbeddedStore
from openplace.services import Services

if TYPE_CHECKING:
    from openplace.realtime.hub import Hub


def build(settings: Settings, roles: Collection[str]) -> Services:
    """Every role on one :class:`EmbeddedStore` in ``OPENPLACE_DATA_DIR``."""
    path, geometry = database_path(settings), Geometry(settings.width, settings.height)
    moderation = SqliteModeration(path, create=True)
    store = EmbeddedStore(
        path, geometry, settings.cooldown_seconds, snapshot_every=settings.snapshot_every,
        cooldown_by=settings.cooldown_by,
        sessions=SessionQuota(settings.sessions_per_ip_per_minute,
                              settings.sessions_per_address_per_day),
        policy_source=moderation.policy,
    )  # fmt: skip
    archive = SqliteArchive(path, geometry)

    def follow_policy(hub: Hub) -> list[asyncio.Task[None]]:
        hub.set_policy(store.policy.version, store.policy.public())
        store.policy_listeners.append(lambda p: hub.set_policy(p.version, p.public()))
        return []

    return Services(store=store, feed=store, archive=archive, moderation=moderation,
                    resources=[moderation, store, archive], background=follow_policy)  # fmt: skip


def database_path(settings: Settings) -> Path:
    """The SQLite file of the canvas in ``OPENPLACE_DATA_DIR``."""
    return settings.data_dir / "openplace.sqlite3"
