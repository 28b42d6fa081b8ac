"""Embedded mode: one process, the board in memory, every placement in a SQLite log.

- :mod:`.store` - :class:`~.store.EmbeddedStore`, the store and the feed in one object.
"""

from __future__ import annotations

from collections.abc import Collection

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.embedded.store import EmbeddedStore
from openplace.services import Services


def build(settings: Settings, roles: Collection[str]) -> Services:
    """Every role on one :class:`EmbeddedStore` in ``OPENPLACE_DATA_DIR``."""
    store = EmbeddedStore(
        settings.data_dir / "openplace.sqlite3",
        Geometry(settings.width, settings.height),
        settings.cooldown_seconds,
        snapshot_every=settings.snapshot_every,
    )
    return Services(store=store, feed=store, resources=[store])
