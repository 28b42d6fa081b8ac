"""Moderation's durable part in distributed mode: PostgreSQL (migration 4), read by
every API process on every admin request."""

from __future__ import annotations

import asyncpg
import orjson

from openplace.core.audit import AuditEntry
from openplace.distributed.schema import migrate


class PostgresModeration:
    """:class:`~openplace.storage.base.Moderation` in PostgreSQL, on a small pool."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        async with self._pool.acquire() as conn:
            await migrate(conn)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("moderation is not open")
        return self._pool

    async def revoked_at(self, name: str) -> float | None:
        value = await self.pool.fetchval(
            "SELECT revoked_at FROM moderator_revocations WHERE name = $1", name
        )
        return None if value is None else float(value)

    async def revoke(self, name: str, at: float) -> None:
        await self.pool.execute(
            "INSERT INTO moderator_revocations VALUES ($1, $2) ON CONFLICT (name) "
            "DO UPDATE SET revoked_at = greatest(moderator_revocations.revoked_at, "
            "excluded.revoked_at)",
            name, at,
        )  # fmt: skip

    async def record(self, entry: AuditEntry) -> int:
        value = await self.pool.fetchval(
            "INSERT INTO audit (ts, actor, action, args, effect) "
            "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING id",
            entry.ts, entry.actor, entry.action,
            orjson.dumps(entry.args).decode(), orjson.dumps(entry.effect).decode(),
        )  # fmt: skip
        return int(value)

    async def audit(self, before: int | None, limit: int) -> list[AuditEntry]:
        rows = await self.pool.fetch(
            "SELECT id, ts, actor, action, args::text AS args, effect::text AS effect "
            "FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
            2**62 if before is None else before, limit,
        )  # fmt: skip
        return [_entry(r) for r in rows]


def _entry(r: asyncpg.Record) -> AuditEntry:
    args, effect = orjson.loads(r["args"]), orjson.loads(r["effect"])
    return AuditEntry(float(r["ts"]), r["actor"], r["action"], args, effect, int(r["id"]))
