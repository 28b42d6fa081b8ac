"""Moderation's durable part in distributed mode: PostgreSQL (migrations 4 and 5), read
by every API process on every admin request. PostgreSQL down or restarting is reported
as :class:`~openplace.core.placement.StoreUnavailable` (a 503)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg
import orjson

from openplace.core.audit import AuditEntry
from openplace.core.policy import Area, Ban, Policy, Rect, parse_network
from openplace.distributed.schema import migrate, pg_outage

T = TypeVar("T")
P = ParamSpec("P")


def _translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """PostgreSQL's errors as :class:`StoreUnavailable`."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with pg_outage("moderation's store cannot be reached"):
            return await method(*args, **kwargs)

    return call


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

    @_translated
    async def revoked_at(self, name: str) -> float | None:
        value = await self.pool.fetchval(
            "SELECT revoked_at FROM moderator_revocations WHERE name = $1", name
        )
        return None if value is None else float(value)

    @_translated
    async def revoke(self, name: str, at: float) -> None:
        await self.pool.execute(
            "INSERT INTO moderator_revocations VALUES ($1, $2) ON CONFLICT (name) "
            "DO UPDATE SET revoked_at = greatest(moderator_revocations.revoked_at, "
            "excluded.revoked_at)",
            name, at,
        )  # fmt: skip

    @_translated
    async def record(self, entry: AuditEntry) -> int:
        value = await self.pool.fetchval(
            "INSERT INTO audit (ts, actor, action, args, effect) "
            "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING id",
            entry.ts, entry.actor, entry.action,
            orjson.dumps(entry.args).decode(), orjson.dumps(entry.effect).decode(),
        )  # fmt: skip
        return int(value)

    @_translated
    async def audit(self, before: int | None, limit: int) -> list[AuditEntry]:
        rows = await self.pool.fetch(
            "SELECT id, ts, actor, action, args::text AS args, effect::text AS effect "
            "FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
            2**62 if before is None else before, limit,
        )  # fmt: skip
        return [_entry(r) for r in rows]

    # -- the policy ----------------------------------------------------------------

    @_translated
    async def policy(self) -> Policy:
        async with self.pool.acquire() as conn:
            return await _read_policy(conn)

    async def _change(
        self, change: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> tuple[T, Policy]:
        """Run ``change`` and bump the policy's version in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT value FROM policy WHERE key = 'version' FOR UPDATE")
            result = await change(conn)
            await conn.execute("UPDATE policy SET value = value + 1 WHERE key = 'version'")
            return result, await _read_policy(conn)

    @_translated
    async def ban(self, ban: Ban) -> Policy:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO bans VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, subject) "
                "DO UPDATE SET reason = excluded.reason, by = excluded.by, at = excluded.at, "
                "expires_at = excluded.expires_at",
                ban.kind, ban.subject, ban.reason, ban.by, ban.at, ban.expires_at,
            )  # fmt: skip

        return (await self._change(write))[1]

    @_translated
    async def unban(self, kind: str, subject: str) -> tuple[bool, Policy]:
        async def write(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "DELETE FROM bans WHERE kind = $1 AND subject = $2", kind, subject
            )
            return bool(status != "DELETE 0")

        return await self._change(write)

    @_translated
    async def protect(self, rect: Rect, by: str, at: float) -> tuple[Area, Policy]:
        async def write(conn: asyncpg.Connection) -> Area:
            area_id = await conn.fetchval(
                "INSERT INTO protected_areas (x, y, w, h, by, at) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                rect.x, rect.y, rect.w, rect.h, by, at,
            )  # fmt: skip
            return Area(int(area_id), rect)

        return await self._change(write)

    @_translated
    async def unprotect(self, area_id: int) -> tuple[bool, Policy]:
        async def write(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("DELETE FROM protected_areas WHERE id = $1", area_id)
            return bool(status != "DELETE 0")

        return await self._change(write)

    @_translated
    async def freeze(self, frozen: bool) -> Policy:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute("UPDATE policy SET value = $1 WHERE key = 'frozen'", int(frozen))

        return (await self._change(write))[1]

    # -- sessions ------------------------------------------------------------------

    @_translated
    async def record_session(self, user_id: str, address: str, at: float) -> None:
        try:
            parse_network(address)
        except ValueError:
            return  # no address to remember (a Unix socket, a test client)
        await self.pool.execute(
            "INSERT INTO sessions VALUES ($1, $2::inet, $3) ON CONFLICT DO NOTHING",
            user_id, address, datetime.fromtimestamp(at, UTC),
        )  # fmt: skip

    @_translated
    async def session_users(self, network: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT user_id FROM sessions WHERE addr <<= $1::cidr",
            str(parse_network(network)),
        )
        return [r["user_id"] for r in rows]


async def _read_policy(conn: asyncpg.Connection) -> Policy:
    flags = {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM policy")}
    bans = tuple(
        Ban(r["kind"], r["subject"], r["reason"], r["by"], r["at"], r["expires_at"])
        for r in await conn.fetch(
            "SELECT kind, subject, reason, by, at, expires_at FROM bans "
            "WHERE expires_at IS NULL OR expires_at > $1 ORDER BY at",
            time.time(),
        )
    )
    areas = tuple(
        Area(r["id"], Rect(r["x"], r["y"], r["w"], r["h"]))
        for r in await conn.fetch("SELECT id, x, y, w, h FROM protected_areas ORDER BY id")
    )
    return Policy(int(flags["version"]), bool(flags["frozen"]), areas, bans)


def _entry(r: asyncpg.Record) -> AuditEntry:
    args, effect = orjson.loads(r["args"]), orjson.loads(r["effect"])
    return AuditEntry(float(r["ts"]), r["actor"], r["action"], args, effect, int(r["id"]))
