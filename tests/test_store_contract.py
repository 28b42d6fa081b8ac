"""The storage contract, the same tests for both backends.

What storage/base.py promises, whichever backend keeps the board: gapless seqs,
an atomic cooldown, durable before acknowledged, a feed that delivers every committed
placement once and in order, replay of what was committed, and snapshots that make
a reopened store serve the same board.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest
from harness.servers import PostgresServer, RedisServer

from openplace.core.board import Board, Geometry
from openplace.core.placement import CooldownActive, Placement
from openplace.core.wire import RECORD_SIZE, encode_record
from openplace.storage.base import Archive, Feed, Store

if TYPE_CHECKING:
    from openplace.distributed.feed import RedisFeed
    from openplace.distributed.store import DistributedStore
    from openplace.embedded.store import EmbeddedStore

W, H = 40, 30
GEOMETRY = Geometry(W, H)


class Backend(Protocol):
    """One backend under test: stores (API side) and a feed (realtime side)."""

    name: str

    async def store(self) -> Store: ...
    async def feed(self) -> Feed: ...
    async def reopen(self) -> Store:
        """Every store and feed closed, then a new store on the same durable data."""
        ...

    async def snapshot_seqs(self) -> list[int]:
        """The seqs of the board snapshots the durable data holds, newest first."""
        ...

    async def archive(self) -> Archive:
        """The durable history, opened (closed with the backend)."""
        ...

    async def close(self) -> None: ...


class Embedded:
    name = "embedded"

    def __init__(self, path: Path, cooldown: float, snapshot_every: int) -> None:
        self.path, self.cooldown, self.snapshot_every = path, cooldown, snapshot_every
        self._open: list[EmbeddedStore] = []
        self._archives: list[Archive] = []

    async def store(self) -> EmbeddedStore:
        if self._open:  # one process, one store: it is also the feed
            return self._open[0]
        from openplace.embedded.store import EmbeddedStore

        s = EmbeddedStore(self.path, GEOMETRY, self.cooldown, snapshot_every=self.snapshot_every)
        await s.open()
        self._open.append(s)
        return s

    async def feed(self) -> Feed:
        return await self.store()

    async def reopen(self) -> Store:
        await self.close()
        return await self.store()

    async def snapshot_seqs(self) -> list[int]:
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return [r[0] for r in db.execute("SELECT seq FROM snapshots ORDER BY seq DESC")]

    async def archive(self) -> Archive:
        from openplace.embedded.archive import SqliteArchive

        a = SqliteArchive(self.path, GEOMETRY)
        await a.open()
        self._archives.append(a)
        return a

    async def close(self) -> None:
        for s in self._open:
            await s.close()
        self._open.clear()
        for a in self._archives:
            await a.close()
        self._archives.clear()


class Distributed:
    name = "distributed"

    def __init__(self, redis_url: str, db_url: str, cooldown: float, snapshot_every: int) -> None:
        self.redis_url, self.db_url, self.cooldown = redis_url, db_url, cooldown
        self.snapshot_every = snapshot_every
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        self._open: list[DistributedStore | RedisFeed | Archive] = []

    async def start(self) -> Distributed:
        from openplace.distributed.persister import Persister

        self.persister = Persister(self.redis_url, self.db_url, GEOMETRY, self.cooldown,
                                   snapshot_every=self.snapshot_every)  # fmt: skip
        assert await self.persister.connect()
        self._stop = asyncio.Event()
        self._running = asyncio.create_task(self.persister.run(self._stop))
        return self

    async def store(self) -> Store:
        from openplace.distributed.store import DistributedStore

        s = DistributedStore(self.redis_url, self.db_url, GEOMETRY, self.cooldown)
        await s.open()
        self._open.append(s)
        return s

    async def feed(self) -> Feed:
        from openplace.distributed.feed import RedisFeed

        f = RedisFeed.from_urls(self.redis_url, self.db_url)
        await f.open()
        self._open.append(f)
        return f

    async def reopen(self) -> Store:
        """Everything but PostgreSQL forgotten: processes stopped, Redis emptied."""
        import redis.asyncio as aioredis

        await self.close()
        r = aioredis.from_url(self.redis_url)
        await r.flushall()
        await r.aclose()
        await self.start()  # restores Redis from the log
        return await self.store()

    async def snapshot_seqs(self) -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(self.db_url)
        try:
            return [r[0] for r in await conn.fetch("SELECT seq FROM snapshots ORDER BY seq DESC")]
        finally:
            await conn.close()

    async def archive(self) -> Archive:
        from openplace.distributed.archive import PostgresArchive

        a = PostgresArchive(GEOMETRY, database_url=self.db_url)
        await a.open()
        self._open.append(a)
        return a

    async def close(self) -> None:
        for s in self._open:
            await s.close()
        self._open.clear()
        self._stop.set()
        if self._running is not None:
            await self._running
            self._running = None
            await self.persister.close()


class MakeBackend(Protocol):
    def __call__(self, cooldown: float = ..., snapshot_every: int = ...) -> Awaitable[Backend]: ...


@pytest.fixture(params=["embedded", "distributed"])
async def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeBackend]:
    made: list[Backend] = []

    async def make(cooldown: float = 300, snapshot_every: int = 100_000) -> Backend:
        backend: Backend
        if request.param == "embedded":
            backend = Embedded(tmp_path / "store.sqlite3", cooldown, snapshot_every)
        else:
            postgres: PostgresServer = request.getfixturevalue("postgres")
            redis_server: RedisServer = request.getfixturevalue("redis_server")
            db = await postgres.new_database()
            backend = await Distributed(redis_server.url, db, cooldown, snapshot_every).start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def replayed(placements: list[Placement]) -> bytes:
    board = Board(GEOMETRY)
    for p in sorted(placements, key=lambda p: p.seq):
        board.set(p.index, p.color)
    return board.snapshot()


async def test_seqs_are_gapless_and_each_acknowledged_once(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    stores = [await backend.store(), await backend.store()]  # two API processes
    placed = await asyncio.gather(*(
        stores[k % 2].place(f"user{k}", k, k % 16, "127.0.0.1") for k in range(60)
    ))  # fmt: skip
    assert sorted(p.seq for p in placed) == list(range(1, 61))
    assert {(p.user_id, p.index, p.color) for p in placed} == {
        (f"user{k}", k, k % 16) for k in range(60)
    }


async def test_cooldown_is_atomic_across_stores(make_backend: MakeBackend) -> None:
    backend = await make_backend(cooldown=300)
    stores = [await backend.store(), await backend.store()]
    results = await asyncio.gather(
        *(stores[k % 2].place("same-user", k, 3, "127.0.0.1") for k in range(20)),
        return_exceptions=True,
    )
    placed = [r for r in results if isinstance(r, Placement)]
    refused = [r for r in results if isinstance(r, CooldownActive)]
    assert len(placed) == 1 and len(refused) == 19, results
    state = await stores[0].user("same-user", "127.0.0.1")
    assert state.last_placed == pytest.approx(placed[0].ts, abs=0.01)
    assert state.next_at == pytest.approx(placed[0].ts + 300, abs=0.01)
    assert (await stores[0].board()).seq == 1


async def test_a_moderators_run_is_contiguous_and_leaves_what_was_placed_after_its_plan(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend(cooldown=0)
    store = await backend.store()
    for k in range(8):
        await store.place(f"u{k}", k, 1, "127.0.0.1")
    planned_at = (await store.board()).seq
    later = await store.place("late", 3, 9, "127.0.0.1")  # after the plan, before the run
    run = await store.write_run("mod:mia", [(i, 5) for i in range(6)], planned_at)
    assert (run.first, run.count, run.skipped) == (later.seq + 1, 5, 1)
    board = Board(GEOMETRY, (await store.board()).data)
    assert [board.get(i) for i in range(8)] == [5, 5, 5, 9, 5, 5, 1, 1]
    # durable when answered, and in the log as the moderator's, seq after seq
    archive = await backend.archive()
    log = await archive.log(later.seq, later.seq + 5)
    assert [int(i) for i in log.indexes] == [0, 1, 2, 4, 5]
    assert (await archive.pixel_history(5, 1))[0].user_id == "mod:mia"
    assert (await store.write_run("mod:mia", [], planned_at)).first is None


async def test_acknowledged_means_durable(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    store = await backend.store()
    placed = [await store.place(f"u{k}", 5 * k, k % 16, "127.0.0.1") for k in range(1, 9)]
    store = await backend.reopen()  # every process of it gone; only durable data remains
    snap = await store.board()
    assert snap.seq == 8 and snap.data == replayed(placed)
    info = await store.pixel(5 * 3)
    assert (info.color, info.user_id, info.seq) == (3, "u3", 3)
    assert (await store.user("u8", "127.0.0.1")).last_placed == pytest.approx(
        placed[-1].ts, abs=0.01
    )
    assert (await store.place("new", 0, 1, "127.0.0.1")).seq == 9  # the sequence continues


async def test_feed_delivers_every_committed_placement_once_in_order(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend(cooldown=0)
    store, feed = await backend.store(), await backend.feed()
    runs: list[tuple[int, bytes]] = []
    unsubscribe = feed.listen(lambda first, records: runs.append((first, records)),
                              lambda board, head: None)  # fmt: skip
    placed = await asyncio.gather(
        *(store.place(f"u{k}", k, k % 16, "127.0.0.1") for k in range(50))
    )
    async with asyncio.timeout(10):
        while sum(len(r) for _, r in runs) < 50 * RECORD_SIZE:
            await asyncio.sleep(0.01)
    unsubscribe()
    expect = 1
    delivered = b""
    for first, records in runs:
        assert first == expect, f"run starts at {first}, expected {expect}"
        expect += len(records) // RECORD_SIZE
        delivered += records
    by_seq = {p.seq: p for p in placed}
    assert delivered == b"".join(encode_record(by_seq[s].index, by_seq[s].color)
                                 for s in range(1, 51))  # fmt: skip
    assert await feed.head() == 50


async def test_replay_returns_exactly_what_was_committed(make_backend: MakeBackend) -> None:
    backend = await make_backend(cooldown=0)
    store = await backend.store()
    placed = [await store.place(f"u{k}", k * 7 % (W * H), k % 16, "127.0.0.1") for k in range(30)]
    feed = await backend.feed()
    async with asyncio.timeout(10):
        while await feed.head() < 30:
            await asyncio.sleep(0.01)
    for after, upto in ((0, 30), (10, 20), (29, 30), (30, 30)):
        want = b"".join(encode_record(p.index, p.color) for p in placed[after:upto])
        assert await feed.records(after, upto) == want


async def test_snapshots_keep_a_reopened_board_exact(make_backend: MakeBackend) -> None:
    backend = await make_backend(cooldown=0, snapshot_every=7)
    store = await backend.store()
    placed = [await store.place(f"u{k}", k * 13 % (W * H), k % 16, "127.0.0.1") for k in range(40)]
    async with asyncio.timeout(10):  # snapshots are written in the background
        while (await backend.snapshot_seqs())[:1] != [35]:
            await asyncio.sleep(0.02)
    # every keyframe is kept (the history's): one per 7 placements at least
    assert len(await backend.snapshot_seqs()) >= 40 // 7 - 1
    store = await backend.reopen()
    snap = await store.board()
    assert (snap.seq, snap.data) == (40, replayed(placed))
    placed.append(await store.place("after", 1, 15, "127.0.0.1"))
    store = await backend.reopen()
    assert (await store.board()).data == replayed(placed)


# -- the shared rules (storage/durability.py) -------------------------------------------


def test_board_loads_from_snapshot_and_tail_and_refuses_a_gap() -> None:
    from openplace.storage.durability import LogCorrupt, load_board

    base = Board(GEOMETRY)
    base.set(0, 5)
    board, head = load_board(GEOMETRY, (10, base.snapshot()), [11, 12], [1, 0], [7, 9])
    assert head == 12 and (board.get(0), board.get(1)) == (9, 7)
    assert load_board(GEOMETRY, None, [], [], [])[1] == 0
    for seqs in ([12, 13], [11, 13], [11, 11]):
        with pytest.raises(LogCorrupt, match="gap"):
            load_board(GEOMETRY, (10, base.snapshot()), seqs, [1, 2], [3, 4])


def test_size_check_and_migrations() -> None:
    from openplace.storage.durability import LogCorrupt, check_size, pending_migrations

    check_size("40x30", GEOMETRY, "here")
    with pytest.raises(LogCorrupt, match="here holds a 1000x1000 board, but 40x30"):
        check_size("1000x1000", GEOMETRY, "here")
    assert pending_migrations(["a", "b", "c"], 1) == [(2, "b"), (3, "c")]
    assert pending_migrations(["a"], 1) == []


async def test_an_embedded_database_from_before_versioning_is_upgraded(tmp_path: Path) -> None:
    """Databases made before migrations were numbered (user_version 0) keep their data."""
    import sqlite3

    from openplace.embedded.store import MIGRATIONS, EmbeddedStore

    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(MIGRATIONS[0])  # the tables as the unversioned code made them
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("board_id", "b0"), ("size", "40x30")])
        db.execute("INSERT INTO placements VALUES (1, 3, 4, 'u', 1.0)")
    store = EmbeddedStore(path, GEOMETRY, 0)
    await store.open()
    try:
        assert (await store.board()).seq == 1 and store.board_id == "b0"
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
