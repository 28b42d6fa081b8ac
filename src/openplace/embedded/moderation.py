"""Moderation's durable part in embedded mode: the canvas's SQLite file (schema from
:data:`openplace.embedded.store.MIGRATIONS`), on a connection and thread of its own, so
``openplace admin`` can write it while ``openplace serve`` runs."""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson

from openplace.core.audit import AuditEntry
from openplace.core.policy import Area, Ban, Network, Policy, Rect, parse_network
from openplace.embedded.sqlite_thread import SqliteThread
from openplace.embedded.store import migrate

T = TypeVar("T")


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

    # -- the policy ----------------------------------------------------------------

    async def policy(self) -> Policy:
        return await self._run(_read_policy)

    async def _change(self, change: Callable[[sqlite3.Connection], T]) -> tuple[T, Policy]:
        """Run ``change`` and bump the policy's version in one transaction."""

        def run(db: sqlite3.Connection) -> tuple[T, Policy]:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = change(db)
                db.execute("UPDATE policy SET value = value + 1 WHERE key = 'version'")
                policy = _read_policy(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result, policy

        return await self._run(run)

    async def ban(self, ban: Ban) -> Policy:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO bans VALUES (?, ?, ?, ?, ?, ?)",
                (ban.kind, ban.subject, ban.reason, ban.by, ban.at, ban.expires_at),
            )

        return (await self._change(write))[1]

    async def unban(self, kind: str, subject: str) -> tuple[bool, Policy]:
        return await self._change(
            lambda db: (
                db.execute(
                    "DELETE FROM bans WHERE kind = ? AND subject = ?", (kind, subject)
                ).rowcount
                > 0
            )
        )

    async def protect(self, rect: Rect, by: str, at: float) -> tuple[Area, Policy]:
        def write(db: sqlite3.Connection) -> Area:
            cursor = db.execute(
                "INSERT INTO protected_areas (x, y, w, h, by, at) VALUES (?, ?, ?, ?, ?, ?)",
                (rect.x, rect.y, rect.w, rect.h, by, at),
            )
            return Area(int(cursor.lastrowid or 0), rect)

        return await self._change(write)

    async def unprotect(self, area_id: int) -> tuple[bool, Policy]:
        return await self._change(
            lambda db: (
                db.execute("DELETE FROM protected_areas WHERE id = ?", (area_id,)).rowcount > 0
            )
        )

    async def freeze(self, frozen: bool) -> Policy:
        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE policy SET value = ? WHERE key = 'frozen'", (int(frozen),))

        return (await self._change(write))[1]

    # -- sessions ------------------------------------------------------------------

    async def record_session(self, user_id: str, address: str, at: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO sessions VALUES (?, ?, ?)", (user_id, address, at)
            )
        )

    async def session_users(self, network: str) -> list[str]:
        net = parse_network(network)

        def find(db: sqlite3.Connection) -> list[str]:
            if net.num_addresses == 1:
                rows = db.execute(
                    "SELECT user_id, addr FROM sessions WHERE addr = ?", (str(net.network_address),)
                ).fetchall()
            else:  # SQLite has no address type: every session's address is looked at
                rows = db.execute("SELECT user_id, addr FROM sessions").fetchall()
            return [str(u) for u, a in rows if _within(a, net)]

        return await self._run(find)


def _within(address: str, net: Network) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == net.version and ip in net


def _read_policy(db: sqlite3.Connection) -> Policy:
    flags = dict(db.execute("SELECT key, value FROM policy").fetchall())
    now = time.time()
    bans = tuple(
        Ban(kind, subject, reason, by, float(at), None if exp is None else float(exp))
        for kind, subject, reason, by, at, exp in db.execute(
            "SELECT kind, subject, reason, by, at, expires_at FROM bans "
            "WHERE expires_at IS NULL OR expires_at > ? ORDER BY at",
            (now,),
        )
    )
    areas = tuple(
        Area(int(id_), Rect(int(x), int(y), int(w), int(h)))
        for id_, x, y, w, h in db.execute("SELECT id, x, y, w, h FROM protected_areas ORDER BY id")
    )
    return Policy(int(flags["version"]), bool(flags["frozen"]), areas, bans)
