"""Embedded mode: one process, the board in memory, every placement in a SQLite log.

- :mod:`.store` - :class:`~.store.EmbeddedStore`, the store and the feed in one object.
- :mod:`.archive` - :class:`~.archive.SqliteArchive`, the history in the same file.
- :mod:`.moderation` - :class:`~.moderation.SqliteModeration`, revocations and the audit log.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.embedded.archive import SqliteArchive
from openplace.embedded.moderation import SqliteModeration
from openplace.embedded.store import EmbeddedStore
from openplace.services import Services


def build(settings: Settings, roles: Collection[str]) -> Services:
    """Every role on one :class:`EmbeddedStore` in ``OPENPLACE_DATA_DIR``."""
    path, geometry = database_path(settings), Geometry(settings.width, settings.height)
    store = EmbeddedStore(
        path, geometry, settings.cooldown_seconds, snapshot_every=settings.snapshot_every
    )
    archive = SqliteArchive(path, geometry)
    moderation = SqliteModeration(path, create=True)
    return Services(store=store, feed=store, archive=archive, moderation=moderation,
                    resources=[store, archive, moderation])  # fmt: skip


def database_path(settings: Settings) -> Path:
    """The SQLite file of the canvas in ``OPENPLACE_DATA_DIR``."""
    return settings.data_dir / "openplace.sqlite3"
