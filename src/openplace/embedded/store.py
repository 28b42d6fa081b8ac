"""Embedded store: the board in memory, every placement in a SQLite log.

A placement is acknowledged only after the transaction holding it has committed
(WAL, ``synchronous=FULL``). Commits are grouped: while one batch is being written
by the writer thread, newly accepted placements queue up and go in the next batch,
so many concurrent placements share one fsync. Periodic board snapshots keep restart
time independent of history length.

Sequence numbers and cooldowns are assigned synchronously on the event loop, which
makes the check-and-set atomic without locks. Should a commit fail, every placement
not yet committed is failed and rolled back (seq counter and cooldowns), so the log
stays gapless and no client ever sees a placement that is not durable.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from openplace.core.board import Board, Geometry
from openplace.core.placement import (
    BoardSnapshot,
    CooldownActive,
    PixelInfo,
    Placement,
    PlacementRefused,
    Run,
    StoreUnavailable,
    UserState,
    next_allowed,
)
from openplace.core.policy import Policy, client_key
from openplace.core.quota import SessionQuota
from openplace.core.timeline import KEYFRAME_CODEC, decode_keyframe, encode_keyframe
from openplace.core.wire import encode_record
from openplace.embedded.archive import SqliteArchive
from openplace.observe.metrics import SQLITE_COMMIT_BATCH, SQLITE_COMMIT_SECONDS
from openplace.storage.backfill import backfill_keyframes
from openplace.storage.base import Listener, ResetListener
from openplace.storage.durability import (
    check_complete,
    check_size,
    load_board,
    pending_migrations,
    size_text,
)

log = logging.getLogger(__name__)

# Numbered migrations; the database's schema version is SQLite's ``user_version``.
MIGRATIONS: list[str] = [
    # 1: the placement log, users' last placement, board snapshots, metadata.
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS placements (
        seq INTEGER PRIMARY KEY,
        idx INTEGER NOT NULL,
        color INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS placements_by_pixel ON placements (idx, seq);
    CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, last_placed REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS snapshots (seq INTEGER PRIMARY KEY, board BLOB NOT NULL);
    """,
    # 2: snapshots are the history's keyframes: all kept, stored compressed.
    """
    ALTER TABLE snapshots ADD COLUMN codec TEXT NOT NULL DEFAULT 'raw';
    """,
    # 3: moderation: revoked moderators and the audit log (embedded/moderation.py).
    """
    CREATE TABLE IF NOT EXISTS moderator_revocations (
        name TEXT PRIMARY KEY,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        args TEXT NOT NULL,
        effect TEXT NOT NULL
    );
    """,
    # 4: moderation's policy (bans, protected areas, the frozen flag, its version), the
    # address each session was made from, and placements by user (for rollbacks).
    """
    CREATE TABLE IF NOT EXISTS policy (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT OR IGNORE INTO policy VALUES ('version', 0), ('frozen', 0);
    CREATE TABLE IF NOT EXISTS bans (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        by TEXT NOT NULL,
        at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE IF NOT EXISTS protected_areas (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL,
        by TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sessions (
        user_id TEXT PRIMARY KEY,
        addr TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sessions_by_addr ON sessions (addr);
    CREATE INDEX IF NOT EXISTS placements_by_user ON placements (user_id, seq);
    """,
    # 5: a user's last placement is the newest of theirs in the log (placements_by_user):
    # the table that also kept it cost a second insert by user on every commit.
    """
    DROP TABLE IF EXISTS users;
    """,
]


# Clocks get adjusted: the log is read this much further back than the cooldown.
CLOCK_SLACK_SECONDS = 60.0


def recent_placers(db: sqlite3.Connection, since: float, head: int) -> dict[str, float]:
    """Each user's newest placement time, for the users who placed after ``since``.
    The log's times rise with its seqs (one writer, one clock), so the first seq after
    ``since`` (less a slack) is found by bisection, and only the log after it is read."""
    lo, hi = 1, head + 1  # the first seq whose time is after the bound, in [lo, hi]
    bound = since - CLOCK_SLACK_SECONDS
    while lo < hi:
        mid = (lo + hi) // 2
        row = db.execute(
            "SELECT ts FROM placements WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)
        ).fetchone()
        if row is None or row[0] > bound:
            hi = mid
        else:
            lo = mid + 1
    last: dict[str, float] = {}
    for user_id, ts in db.execute(
        "SELECT user_id, ts FROM placements WHERE seq >= ? ORDER BY seq", (lo,)
    ):
        if ts > since:
            last[user_id] = ts
    return last


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this database has not had, each in its own transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for number, sql in pending_migrations(MIGRATIONS, version):
        try:
            db.executescript(f"BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {number}; COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


class _Pending:
    __slots__ = ("address", "future", "placement", "previous", "previous_address")

    def __init__(
        self,
        placement: Placement,
        future: asyncio.Future[None],
        previous: float | None = None,
        address: str | None = None,
        previous_address: float | None = None,
    ) -> None:
        self.placement = placement
        self.future = future
        # The user's and the address's last placement before this one, for rollback.
        self.previous = previous
        self.address = address
        self.previous_address = previous_address


class EmbeddedStore:
    """Store and Feed for one process. See the module docstring."""

    def __init__(
        self,
        path: Path,
        geometry: Geometry,
        cooldown: float,
        *,
        snapshot_every: int = 25_000,
        cooldown_by: str = "user",
        sessions: SessionQuota | None = None,
        policy_source: Callable[[], Awaitable[Policy]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.geometry = geometry
        self.cooldown = cooldown
        self.by_user = cooldown_by in ("user", "both")
        self.by_address = cooldown_by in ("address", "both")
        self.sessions = sessions or SessionQuota(30, 300)
        self.policy_source = policy_source
        self._policy = Policy()
        self.policy_listeners: list[Callable[[Policy], None]] = []
        self.snapshot_every = snapshot_every
        self.clock = clock
        self.board_id = ""
        self._board = Board(geometry)
        self._head = 0  # last committed seq
        self._next_seq = 1  # next seq to assign
        self._snapshot_seq = 0
        self._snapshotting = False
        self._last_placed: dict[str, float] = {}
        self._address_placed: dict[str, float] = {}  # client_key -> last placement
        # The newest seq assigned to each pixel in this process's lifetime (0: none since
        # it started): a moderator's run leaves out pixels placed on after it was planned.
        self._pixel_seq = np.zeros(geometry.pixels, dtype=np.int64)
        self._queue: list[_Pending] = []
        self._flushing: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="openplace-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="openplace-reader")
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self._backfill: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_writer)
        await loop.run_in_executor(self._reader, self._open_reader)
        self._next_seq = self._head + 1
        if self.policy_source is not None:
            self._policy = await self.policy_source()
        self._backfill = asyncio.create_task(self._backfill_keyframes())
        log.info(
            "embedded store open",
            extra={"path": str(self.path), "seq": self._head, "snapshot_seq": self._snapshot_seq},
        )

    async def close(self) -> None:
        if self._backfill is not None:
            self._backfill.cancel()
            await asyncio.gather(self._backfill, return_exceptions=True)
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        loop = asyncio.get_running_loop()
        if self._wdb is not None and self._head > self._snapshot_seq:
            data, seq = self._board.snapshot(), self._head
            await loop.run_in_executor(self._writer, self._write_snapshot, seq, data)
        await loop.run_in_executor(self._writer, self._close_db, "_wdb")
        await loop.run_in_executor(self._reader, self._close_db, "_rdb")
        self._writer.shutdown()
        self._reader.shutdown()

    async def health(self) -> dict[str, str]:
        """What keeps the store from serving (see :mod:`openplace.observe.health`)."""
        if self._wdb is None or self._rdb is None:
            return {"store": "not open"}
        return {}

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._wdb = self._connect()
        migrate(db)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            self.board_id = secrets.token_hex(4)
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("board_id", self.board_id), ("size", size_text(self.geometry))],
            )
        else:
            check_size(meta["size"], self.geometry, str(self.path))
            self.board_id = meta["board_id"]
        row = db.execute(
            "SELECT seq, board, codec FROM snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        snapshot = (int(row[0]), decode_keyframe(row[1], row[2])) if row else None
        self._snapshot_seq = snapshot[0] if snapshot else 0
        tail = db.execute(
            "SELECT seq, idx, color FROM placements WHERE seq > ? ORDER BY seq",
            (self._snapshot_seq,),
        ).fetchall()
        seqs, indexes, colors = zip(*tail, strict=True) if tail else ((), (), ())
        self._board, self._head = load_board(self.geometry, snapshot, seqs, indexes, colors)
        self._last_placed = recent_placers(db, self.clock() - self.cooldown, self._head)

    def _open_reader(self) -> None:
        self._rdb = self._connect()

    def _close_db(self, attr: str) -> None:
        db = getattr(self, attr)
        if db is not None:
            db.close()
            setattr(self, attr, None)

    # -- placing -------------------------------------------------------------------

    async def place(self, user_id: str, index: int, color: int, address: str) -> Placement:
        now = self.clock()
        if self._policy.version:
            refusal = self._policy.refusal(user_id, address, *self.geometry.xy(index), now)
            if refusal is not None:
                raise PlacementRefused(refusal)
        previous = self._last_placed.get(user_id)
        key = client_key(address) if self.by_address else None
        previous_address = self._address_placed.get(key) if key is not None else None
        next_at = next_allowed(self.cooldown, now, previous if self.by_user else None,
                               previous_address)  # fmt: skip
        if next_at is not None:
            raise CooldownActive(next_at, now)
        placement = Placement(self._next_seq, index, color, user_id, now)
        self._next_seq += 1
        self._last_placed[user_id] = now
        if key is not None:
            self._address_placed[key] = now
        self._pixel_seq[index] = placement.seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(placement, future, previous, key, previous_address))
        await future
        return placement

    def _enqueue(self, *pending: _Pending) -> None:
        self._queue.extend(pending)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def write_run(self, user_id: str, changes: list[tuple[int, int]], after: int) -> Run:
        now = self.clock()
        pixel_seq = self._pixel_seq
        kept = [(i, c) for i, c in changes if pixel_seq[i] <= after]
        if not kept:
            return Run(None, 0, len(changes))
        first = self._next_seq
        pending = []
        loop = asyncio.get_running_loop()
        for offset, (index, color) in enumerate(kept):
            placement = Placement(first + offset, index, color, user_id, now)
            pixel_seq[index] = placement.seq
            pending.append(
                _Pending(placement, loop.create_future(), self._last_placed.get(user_id))
            )
        self._next_seq += len(kept)
        self._last_placed[user_id] = now
        self._enqueue(*pending)
        await asyncio.gather(*(p.future for p in pending))
        return Run(first, len(kept), len(changes) - len(kept))

    @property
    def policy(self) -> Policy:
        return self._policy

    async def current_policy(self) -> Policy:
        return self._policy

    async def apply_policy(self, policy: Policy) -> None:
        if policy.version <= self._policy.version:
            return
        self._policy = policy
        for listener in list(self.policy_listeners):
            try:
                listener(policy)
            except Exception:
                log.exception("policy listener failed")

    async def admit_session(self, user_id: str, address: str) -> float | None:
        return self.sessions.admit(client_key(address), self.clock())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            rows = [
                (
                    p.placement.seq,
                    p.placement.index,
                    p.placement.color,
                    p.placement.user_id,
                    p.placement.ts,
                )
                for p in batch
            ]
            try:
                await loop.run_in_executor(self._writer, self._commit, rows)
            except Exception as exc:
                log.exception("commit failed; rolling back %d placements", len(batch))
                self._roll_back(batch + self._queue, exc)
                self._queue = []
                return
            self._committed(batch)

    def _commit(self, rows: list[tuple[int, int, int, str, float]]) -> None:
        db = self._wdb
        assert db is not None
        started = time.perf_counter()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO placements VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            SQLITE_COMMIT_SECONDS.observe(time.perf_counter() - started)
            SQLITE_COMMIT_BATCH.observe(len(rows))
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _committed(self, batch: list[_Pending]) -> None:
        board = self._board
        records = bytearray()
        for p in batch:
            pl = p.placement
            board.set(pl.index, pl.color)
            records += encode_record(pl.index, pl.color)
        first = batch[0].placement.seq
        self._head = batch[-1].placement.seq
        for p in batch:
            if not p.future.done():
                p.future.set_result(None)
        data = bytes(records)
        for listener in list(self._listeners):
            try:
                listener(first, data)
            except Exception:
                log.exception("placement listener failed")
        if self._head - self._snapshot_seq >= self.snapshot_every and not self._snapshotting:
            self._snapshotting = True
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(
                self._writer, self._write_snapshot, self._head, board.snapshot()
            )
            job.add_done_callback(self._snapshot_done)

    def _roll_back(self, failed: list[_Pending], exc: BaseException) -> None:
        for p in reversed(failed):
            pl = p.placement
            if p.previous is None:
                self._last_placed.pop(pl.user_id, None)
            else:
                self._last_placed[pl.user_id] = p.previous
            if p.address is not None:
                if p.previous_address is None:
                    self._address_placed.pop(p.address, None)
                else:
                    self._address_placed[p.address] = p.previous_address
            if not p.future.done():
                p.future.set_exception(StoreUnavailable(f"placement could not be stored: {exc}"))
        if failed:
            self._next_seq = failed[0].placement.seq

    def _snapshot_done(self, job: asyncio.Future[int]) -> None:
        self._snapshotting = False
        if job.exception() is not None:
            log.error("snapshot failed (will retry): %s", job.exception())
        else:
            self._snapshot_seq = max(self._snapshot_seq, job.result())

    def _write_snapshot(self, seq: int, data: bytes) -> int:
        """A keyframe of the board after ``seq`` (all are kept: they are the history's)."""
        return self._write_keyframe(seq, encode_keyframe(data))

    def _write_keyframe(self, seq: int, frame: bytes) -> int:
        db = self._wdb
        assert db is not None
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT OR REPLACE INTO snapshots (seq, board, codec) VALUES (?, ?, ?)",
                (seq, frame, KEYFRAME_CODEC),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return seq

    async def _backfill_keyframes(self) -> None:
        """Keyframes for the history from before they were all kept (in the background:
        the canvas serves meanwhile; what is left is done at the next start)."""
        archive = SqliteArchive(self.path, self.geometry)
        loop = asyncio.get_running_loop()

        async def write(seq: int, frame: bytes) -> None:
            await loop.run_in_executor(self._writer, self._write_keyframe, seq, frame)

        try:
            have = [int(r[0]) for r in await self._read("SELECT seq FROM snapshots", ())]
            await backfill_keyframes(archive, have, self._head, self.snapshot_every, write)
        except Exception:
            log.exception("writing the history's keyframes failed; again at the next start")
        finally:
            await archive.close()

    # -- reading -------------------------------------------------------------------

    async def board(self) -> BoardSnapshot:
        return BoardSnapshot(self._board.snapshot(), self._head, self.board_id)

    async def pixel(self, index: int) -> PixelInfo:
        color = self._board.get(index)
        row = await self._read(
            "SELECT seq, user_id, ts FROM placements WHERE idx = ? AND seq <= ? "
            "ORDER BY seq DESC LIMIT 1",
            (index, self._head),
        )
        if not row:
            return PixelInfo(index, color)
        seq, user_id, ts = row[0]
        return PixelInfo(index, color, str(user_id), float(ts), int(seq))

    async def user(self, user_id: str, address: str) -> UserState:
        last = self._last_placed.get(user_id)
        if last is None:
            # Not placed since the store opened (each placement since is in memory).
            rows = await self._read(
                "SELECT ts FROM placements WHERE user_id = ? ORDER BY seq DESC LIMIT 1",
                (user_id,),
            )
            last = float(rows[0][0]) if rows else None
        by_address = self._address_placed.get(client_key(address)) if self.by_address else None
        next_at = next_allowed(self.cooldown, self.clock(), last if self.by_user else None,
                               by_address)  # fmt: skip
        return UserState(user_id, last, next_at)

    async def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            assert self._rdb is not None
            return self._rdb.execute(sql, params).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- Feed ----------------------------------------------------------------------

    async def head(self) -> int:
        return self._head

    async def records(self, after: int, upto: int) -> bytes:
        rows = await self._read(
            "SELECT seq, idx, color FROM placements WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, upto),
        )
        check_complete(after, min(upto, self._head), len(rows))
        return b"".join(encode_record(i, c) for _, i, c in rows)

    async def refresh(self) -> None:
        """Nothing to catch up with: this process is the source."""

    def listen(self, listener: Listener, on_reset: ResetListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
