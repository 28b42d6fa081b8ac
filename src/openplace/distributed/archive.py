"""The history of a distributed canvas, read from PostgreSQL (the persister's log and
keyframes). Only committed placements are history: what Redis holds beyond them is not
yet, and may still be lost with Redis."""

from __future__ import annotations

import asyncpg
import numpy as np

from openplace.core.board import Geometry
from openplace.core.placement import PixelInfo
from openplace.core.policy import Rect
from openplace.core.rollback import PixelFacts, undo_changes
from openplace.core.timeline import LogSlice, decode_keyframe
from openplace.distributed.schema import pg_outage

HISTORY = "the history cannot be read"


class PostgresArchive:
    """:class:`~openplace.storage.base.Archive` over a connection pool: an API
    process's own (``pool``), or one it opens from ``database_url`` (the CLI)."""

    def __init__(
        self,
        geometry: Geometry,
        *,
        pool: asyncpg.Pool | None = None,
        database_url: str | None = None,
    ) -> None:
        if (pool is None) == (database_url is None):
            raise ValueError("give a pool or a database URL")
        self.geometry = geometry
        self.database_url = database_url
        self._pool = pool
        self._own = pool is None

    def bind(self, pool: asyncpg.Pool) -> None:
        """Read through ``pool`` (an API process's, once its store is open)."""
        self._pool = pool

    async def open(self) -> None:
        if self._own and self._pool is None:
            self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)

    async def close(self) -> None:
        if self._own and self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the archive is not open")
        return self._pool

    async def committed(self) -> tuple[int, float | None]:
        with pg_outage(HISTORY):
            row = await self.pool.fetchrow(
                "SELECT seq, extract(epoch FROM ts)::float8 AS t FROM placements "
                "ORDER BY seq DESC LIMIT 1"
            )
            return (0, None) if row is None else (int(row["seq"]), float(row["t"]))

    async def keyframe_seqs(self) -> list[int]:
        with pg_outage(HISTORY):
            return [
                int(r[0]) for r in await self.pool.fetch("SELECT seq FROM snapshots ORDER BY seq")
            ]

    async def keyframe(self, seq: int) -> tuple[int, bytes] | None:
        with pg_outage(HISTORY):
            row = await self.pool.fetchrow(
                "SELECT seq, board, codec FROM snapshots WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
                seq,
            )
            if row is None:
                return None
            return int(row["seq"]), decode_keyframe(row["board"], row["codec"])

    async def log(self, after: int, upto: int, *, times: bool = False) -> LogSlice:
        with pg_outage(HISTORY):
            # Arrays, not rows: one value to decode per column instead of a record per row.
            row = await self.pool.fetchrow(
                "SELECT array_agg(idx ORDER BY seq) AS i, array_agg(color ORDER BY seq) AS c, "
                "array_agg(extract(epoch FROM ts)::float8 ORDER BY seq) FILTER (WHERE $3) AS t "
                "FROM placements WHERE seq > $1 AND seq <= $2",
                after, upto, times,
            )  # fmt: skip
            if row is None or row["i"] is None:
                return LogSlice.of(after, [], [], [] if times else None)
            ts = np.array(row["t"], dtype=np.float64) if times else None
            return LogSlice.of(after, row["i"], row["c"], ts)

    async def seq_at(self, ts: float) -> int:
        with pg_outage(HISTORY):
            # Times grow with seqs: binary search on the primary key (no index on ts to keep
            # up on every commit), some 25 lookups on one connection for 10 million rows.
            async with self.pool.acquire() as conn:
                lo, hi = 0, int(await conn.fetchval("SELECT max(seq) FROM placements") or 0)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    t = await conn.fetchval(
                        "SELECT extract(epoch FROM ts)::float8 FROM placements WHERE seq = $1", mid
                    )
                    if t is not None and float(t) <= ts:
                        lo = mid
                    else:
                        hi = mid - 1
            return lo

    async def pixel_history(self, index: int, limit: int) -> list[PixelInfo]:
        with pg_outage(HISTORY):
            rows = await self.pool.fetch(
                "SELECT seq, color, user_id, extract(epoch FROM ts)::float8 AS t FROM placements "
                "WHERE idx = $1 ORDER BY seq DESC LIMIT $2",
                index, limit,
            )  # fmt: skip
            return [
                PixelInfo(index, int(r["color"]), str(r["user_id"]), float(r["t"]), int(r["seq"]))
                for r in rows
            ]

    async def undo_plan(
        self, users: list[str], after: int, rect: Rect | None
    ) -> tuple[int, list[tuple[int, int]], int]:
        geometry = self.geometry
        with pg_outage(HISTORY):
            async with (
                self.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                head = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM placements"))
                touched: dict[int, int] = {}
                for r in await conn.fetch(
                    "SELECT idx, count(*) AS n FROM placements "
                    "WHERE user_id = ANY($1::text[]) AND seq > $2 AND seq <= $3 GROUP BY idx",
                    users, after, head,
                ):  # fmt: skip
                    if rect is None or rect.contains(*geometry.xy(r["idx"])):
                        touched[r["idx"]] = r["n"]
                rows = await conn.fetch(
                    """
                    SELECT p.idx, n.seq, n.color, n.user_id,
                           (SELECT r.color FROM placements r
                             WHERE r.idx = p.idx AND r.seq <= $1
                               AND NOT (r.seq > $2 AND r.user_id = ANY($3::text[]))
                             ORDER BY r.seq DESC LIMIT 1) AS restore
                      FROM unnest($4::int[]) AS p(idx)
                      CROSS JOIN LATERAL (
                            SELECT seq, color, user_id FROM placements
                             WHERE idx = p.idx AND seq <= $1 ORDER BY seq DESC LIMIT 1) n
                    """,
                    head, after, users, list(touched),
                )  # fmt: skip
        facts = [PixelFacts(r["idx"], r["seq"], r["color"], r["user_id"], r["restore"])
                 for r in rows]  # fmt: skip
        return head, undo_changes(facts, frozenset(users), after), sum(touched.values())
