"""PostgreSQL schema, applied as numbered migrations on start."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from openplace.core.placement import StoreUnavailable
from openplace.storage.durability import pending_migrations

# PostgreSQL down, restarting or refusing, as asyncpg reports it.
PG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@contextlib.contextmanager
def pg_outage(what: str) -> Iterator[None]:
    """PostgreSQL's errors as :class:`StoreUnavailable` (a 503, not a 500): ``what``
    could not be done."""
    try:
        yield
    except PG_ERRORS as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


MIGRATIONS: list[str] = [
    # 1: the placement log, latest state per pixel, users, board snapshots, metadata.
    """
    CREATE TABLE placements (
        seq BIGINT PRIMARY KEY,
        idx INTEGER NOT NULL,
        color SMALLINT NOT NULL,
        user_id TEXT NOT NULL,
        ts TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE pixels (
        idx INTEGER PRIMARY KEY,
        color SMALLINT NOT NULL,
        user_id TEXT NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        seq BIGINT NOT NULL
    );
    CREATE TABLE users (user_id TEXT PRIMARY KEY, last_placed TIMESTAMPTZ NOT NULL);
    CREATE TABLE snapshots (seq BIGINT PRIMARY KEY, board BYTEA NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: the board (restore epoch) each placement was accepted under: a seq identifies a
    # placement only together with it (see distributed/acks.py).
    """
    ALTER TABLE placements ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: snapshots are the history's keyframes (all kept, stored compressed); a pixel's
    # history is read by pixel.
    """
    ALTER TABLE snapshots ADD COLUMN codec TEXT NOT NULL DEFAULT 'raw';
    CREATE INDEX placements_by_pixel ON placements (idx, seq);
    """,
    # 4: moderation: revoked moderators and the audit log (distributed/moderation.py).
    """
    CREATE TABLE moderator_revocations (
        name TEXT PRIMARY KEY,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        args JSONB NOT NULL,
        effect JSONB NOT NULL
    );
    """,
    # 5: moderation's policy (bans, protected areas, the frozen flag, its version), the
    # address each session was made from, and placements by user (for rollbacks).
    """
    CREATE TABLE policy (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO policy VALUES ('version', 0), ('frozen', 0);
    CREATE TABLE bans (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        by TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE protected_areas (
        id BIGSERIAL PRIMARY KEY,
        x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL,
        by TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE sessions (
        user_id TEXT PRIMARY KEY,
        addr INET NOT NULL,
        created TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX sessions_by_addr ON sessions USING gist (addr inet_ops);
    CREATE INDEX placements_by_user ON placements (user_id, seq);
    """,
]

# Serialises migrations between processes starting at once.
_MIGRATION_LOCK = 0x6F70_6D69  # "opmi"
PERSISTER_LOCK = 0x6F70_7065  # "oppe": held by the one active persister


async def migrate(conn: asyncpg.Connection) -> None:
    """Apply the migrations this database has not seen yet."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        for number, sql in pending_migrations(MIGRATIONS, version):
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def get_meta(conn: asyncpg.Connection, key: str) -> str | None:
    return await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)  # type: ignore[no-any-return]


async def set_meta(conn: asyncpg.Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO meta VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        value,
    )
