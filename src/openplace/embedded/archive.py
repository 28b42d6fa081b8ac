"""The history of an embedded canvas, read from its SQLite file.

:class:`SqliteArchive` reads with its own connection on its own thread, so the server's
placements never wait for a history query, and the CLI (``openplace export``,
``openplace timelapse``) can read the file while ``openplace serve`` writes it (WAL).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from openplace.core.board import Geometry
from openplace.core.placement import PixelInfo
from openplace.core.policy import Rect
from openplace.core.rollback import PixelFacts, undo_changes, undone
from openplace.core.timeline import LogSlice, decode_keyframe
from openplace.embedded.sqlite_thread import SqliteThread


class SqliteArchive:
    """:class:`~openplace.storage.base.Archive` over an embedded store's SQLite file."""

    def __init__(self, path: Path, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self._sqlite = SqliteThread("archive", self._connect)
        self._run = self._sqlite.run

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise FileNotFoundError(f"no canvas at {self.path}")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def open(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        await self._sqlite.close()

    async def committed(self) -> tuple[int, float | None]:
        row = await self._run(
            lambda db: db.execute(
                "SELECT seq, ts FROM placements ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        )
        return (0, None) if row is None else (int(row[0]), float(row[1]))

    async def keyframe_seqs(self) -> list[int]:
        rows = await self._run(
            lambda db: db.execute("SELECT seq FROM snapshots ORDER BY seq").fetchall()
        )
        return [int(r[0]) for r in rows]

    async def keyframe(self, seq: int) -> tuple[int, bytes] | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT seq, board, codec FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                (seq,),
            ).fetchone()
        )
        if row is None:
            return None
        return int(row[0]), decode_keyframe(row[1], row[2])

    async def log(self, after: int, upto: int, *, times: bool = False) -> LogSlice:
        columns = "idx, color, ts" if times else "idx, color"

        def read(db: sqlite3.Connection) -> LogSlice:
            rows = db.execute(
                f"SELECT {columns} FROM placements WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, upto),
            ).fetchall()
            if not rows:
                return LogSlice.of(after, [], [], [] if times else None)
            arr = np.array(rows, dtype=np.float64 if times else np.int64)
            return LogSlice.of(after, arr[:, 0], arr[:, 1], arr[:, 2] if times else None)

        return await self._run(read)

    async def seq_at(self, ts: float) -> int:
        # Times grow with seqs: binary search on the primary key, no index on ts.
        def search(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT max(seq) FROM placements").fetchone()
            lo, hi = 0, int(row[0] or 0)  # answer in lo..hi
            while lo < hi:
                mid = (lo + hi + 1) // 2
                t = db.execute("SELECT ts FROM placements WHERE seq = ?", (mid,)).fetchone()
                if t is not None and float(t[0]) <= ts:
                    lo = mid
                else:
                    hi = mid - 1
            return lo

        return await self._run(search)

    async def pixel_history(self, index: int, limit: int) -> list[PixelInfo]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT seq, color, user_id, ts FROM placements WHERE idx = ? "
                "ORDER BY seq DESC LIMIT ?",
                (index, limit),
            ).fetchall()
        )
        return [PixelInfo(index, int(c), str(u), float(t), int(s)) for s, c, u, t in rows]

    async def undo_plan(
        self, users: list[str], after: int, rect: Rect | None
    ) -> tuple[int, list[tuple[int, int]], int]:
        targets = frozenset(users)
        geometry = self.geometry

        def plan(db: sqlite3.Connection) -> tuple[int, list[tuple[int, int]], int]:
            db.execute("BEGIN")  # one snapshot of the log (WAL)
            try:
                head = int(db.execute("SELECT max(seq) FROM placements").fetchone()[0] or 0)
                touched: dict[int, int] = {}
                for user in targets:
                    for (index,) in db.execute(
                        "SELECT idx FROM placements WHERE user_id = ? AND seq > ? AND seq <= ?",
                        (user, after, head),
                    ):
                        if rect is None or rect.contains(*geometry.xy(index)):
                            touched[index] = touched.get(index, 0) + 1
                facts = []
                for index in touched:
                    rows = db.execute(
                        "SELECT seq, color, user_id FROM placements WHERE idx = ? AND seq <= ? "
                        "ORDER BY seq DESC",
                        (index, head),
                    )
                    newest = next(rows)
                    restore = next(
                        (c for s, c, u in rows if not undone(u, s, targets, after)), None
                    )
                    if not undone(newest[2], newest[0], targets, after):
                        restore = newest[1]
                    facts.append(PixelFacts(index, newest[0], newest[1], newest[2], restore))
            finally:
                db.execute("COMMIT")
            return head, undo_changes(facts, targets, after), sum(touched.values())

        return await self._run(plan)
