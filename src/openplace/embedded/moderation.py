"""Moderation's durable part in embedded mode: the canvas's SQLite file (schema from
:data:`openplace.embedded.store.MIGRATIONS`), on a connection and thread of its own, so
``openplace admin`` can write it while ``openplace serve`` runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from openplace.core.audit import AuditEntry
from openplace.embedded.sqlite_thread import SqliteThread
from openplace.embedded.store import migrate


class SqliteModeration:
    """:class:`~openplace.storage.base.Moderation` in the canvas's SQLite file."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        self.create = create  # False: the canvas must exist (the CLI)
        self._sqlite = SqliteThread("moderation", self._connect)
        self._run = self._sqlite.run

    def _connect(self) -> sqlite3.Connection:
        if not self.create and not self.path.exists():
            raise FileNotFoundError(
                f"no canvas at {self.path} (start `openplace serve` once first)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        migrate(db)
        return db

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        await self._sqlite.close()

    async def revoked_at(self, name: str) -> float | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT revoked_at FROM moderator_revocations WHERE name = ?", (name,)
            ).fetchone()
        )
        return None if row is None else float(row[0])

    async def revoke(self, name: str, at: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO moderator_revocations VALUES (?, ?) ON CONFLICT (name) "
                "DO UPDATE SET revoked_at = max(revoked_at, excluded.revoked_at)",
                (name, at),
            )
        )

    async def record(self, entry: AuditEntry) -> int:
        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO audit (ts, actor, action, args, effect) VALUES (?, ?, ?, ?, ?)",
                (entry.ts, entry.actor, entry.action, orjson.dumps(entry.args).decode(),
                 orjson.dumps(entry.effect).decode()),
            )  # fmt: skip
            return int(cursor.lastrowid or 0)

        return await self._run(insert)

    async def audit(self, before: int | None, limit: int) -> list[AuditEntry]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT id, ts, actor, action, args, effect FROM audit WHERE id < ? "
                "ORDER BY id DESC LIMIT ?",
                (2**62 if before is None else before, limit),
            ).fetchall()
        )
        return [
            AuditEntry(float(ts), actor, action, orjson.loads(args), orjson.loads(effect), id_)
            for id_, ts, actor, action, args, effect in rows
        ]
