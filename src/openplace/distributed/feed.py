"""The committed feed, as each process sees it: one subscription per process.

The persister publishes every committed run on ``op:feed``. :class:`RedisFeed`
subscribes once, delivers runs contiguously and in order (filling any gap from the
Redis stream, or from PostgreSQL when the stream has been trimmed), polls the
committed watermark while idle in case a message was lost, and reports a new epoch
(a restored board) as a reset. What each event means is decided by
:class:`~.acks.FeedCursor`; this module only does the reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from openplace.core.history import TooOld
from openplace.core.wire import RECORD_SIZE, encode_record
from openplace.distributed import keys
from openplace.distributed.acks import (
    BoardId,
    CatchUp,
    FeedCursor,
    FeedStep,
    Fetch,
    Reset,
    Take,
)
from openplace.storage.base import Listener, ResetListener
from openplace.storage.durability import check_complete

log = logging.getLogger(__name__)


class RedisFeed:
    """:class:`~openplace.storage.base.Feed` over Redis pub/sub, the stream and PostgreSQL."""

    def __init__(
        self, redis: aioredis.Redis | None, pg: asyncpg.Pool | None, *, poll: float = 0.25
    ) -> None:
        self._redis = redis
        self._pg = pg
        self.poll = poll
        self._urls: tuple[str, str] | None = None  # set: open() connects, close() closes
        self._cursor: FeedCursor | None = None
        self._listeners: list[tuple[Listener, ResetListener]] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_urls(cls, redis_url: str, database_url: str) -> RedisFeed:
        """A feed with connections of its own (a realtime process)."""
        feed = cls(None, None)
        feed._urls = (redis_url, database_url)
        return feed

    def bind(self, redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
        """Use connections its owner opened (an API process's store)."""
        self._redis, self._pg = redis, pg

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "feed not open"
        return self._redis

    @property
    def pg(self) -> asyncpg.Pool:
        assert self._pg is not None, "feed not open"
        return self._pg

    @property
    def board(self) -> BoardId:
        """The board this process follows."""
        assert self._cursor is not None, "feed not open"
        return self._cursor.board

    @property
    def board_id(self) -> str:
        return str(self._cursor.board) if self._cursor is not None else ""

    @property
    def last(self) -> int:
        """Seq of the newest committed placement delivered."""
        return self._cursor.last if self._cursor is not None else 0

    async def open(self, timeout: float = 30.0) -> None:
        """Wait until Redis holds a restored board, then follow the feed."""
        if self._urls is not None:
            from openplace.distributed.store import connect

            self._redis, self._pg = await connect(*self._urls)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    board, committed = await self._watermark()
                except (RedisError, OSError) as exc:
                    log.warning("waiting for redis: %s", exc)
                    board = None
                if board is not None:
                    break
                await asyncio.sleep(0.1)
        self._cursor = FeedCursor(board, committed)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A pub/sub connection to a Redis that went away can hang while closing.
            await asyncio.wait({self._task}, timeout=2.0)
        if self._urls is not None:
            from openplace.distributed.store import close_quietly

            if self._redis is not None:
                await close_quietly(self._redis.aclose())
            if self._pg is not None:
                await close_quietly(self._pg.close())

    # -- Feed ----------------------------------------------------------------------

    async def head(self) -> int:
        return self.last

    async def records(self, after: int, upto: int) -> bytes:
        if upto <= after:
            return b""
        n = upto - after
        entries = keys.xrange_entries(
            await self.redis.xrange(keys.STREAM, f"{after + 1}-0", f"{upto}-0")
        )
        if len(entries) == n and entries[0].seq == after + 1:
            out = bytearray()
            for entry in entries:
                index, color, _user, _ts = keys.parse_entry(entry.data)
                out += encode_record(index, color)
            return bytes(out)
        rows = await self.pg.fetch(
            "SELECT idx, color FROM placements WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            after, upto,
        )  # fmt: skip
        check_complete(after, upto, len(rows))
        return b"".join(encode_record(r[0], r[1]) for r in rows)

    async def refresh(self) -> None:
        """Read the epoch and watermark now, instead of at the next poll."""
        try:
            await self._catch_up()
        except (RedisError, OSError, TooOld) as exc:
            log.warning("feed refresh failed: %s", exc)

    def listen(self, listener: Listener, on_reset: ResetListener) -> Callable[[], None]:
        pair = (listener, on_reset)
        self._listeners.append(pair)
        return lambda: self._listeners.remove(pair)

    # -- following -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as ps:
                    await ps.subscribe(keys.FEED)
                    await self._catch_up()
                    while True:
                        msg = await ps.get_message(ignore_subscribe_messages=True,
                                                   timeout=self.poll)  # fmt: skip
                        if msg is None:
                            await self._catch_up()
                        elif msg["type"] == "message":
                            await self._on_message(msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TooOld) as exc:
                log.warning("feed interrupted (%s); resubscribing", exc)
                await asyncio.sleep(0.2)
            except Exception:
                log.exception("feed failed; resubscribing")
                await asyncio.sleep(0.5)

    async def _watermark(self) -> tuple[BoardId | None, int]:
        """The board id and its committed seq, read in one step."""
        raw_board, committed = await self.redis.mget(keys.EPOCH, keys.COMMITTED)
        board = BoardId.parse(raw_board) if raw_board is not None else None
        return board, int(committed or 0)

    async def _on_message(self, data: bytes) -> None:
        assert self._cursor is not None
        epoch, first, records = keys.decode_feed(data)
        await self._apply(self._cursor.on_announcement(epoch, first, len(records) // RECORD_SIZE),
                          first, records)  # fmt: skip

    async def _catch_up(self) -> None:
        assert self._cursor is not None
        board, committed = await self._watermark()
        await self._apply(self._cursor.on_watermark(board, committed), 0, b"")

    async def _apply(self, steps: list[FeedStep], first: int, records: bytes) -> None:
        """Carry out the cursor's decisions (``first``/``records``: the announced run)."""
        cursor = self._cursor
        assert cursor is not None
        for step in steps:
            if isinstance(step, Fetch):
                self._emit(step.after + 1, await self.records(step.after, step.upto))
            elif isinstance(step, Take):
                self._emit(first + step.skip, records[step.skip * RECORD_SIZE :])
            elif isinstance(step, CatchUp):
                await self._catch_up()
            elif isinstance(step, Reset):
                log.info("board restored as %s at seq %d", step.board, step.head)
                for _, on_reset in list(self._listeners):
                    on_reset(str(step.board), step.head)

    def _emit(self, first: int, records: bytes) -> None:
        cursor = self._cursor
        assert cursor is not None
        skip = cursor.last + 1 - first  # a concurrent catch-up may have delivered some
        count = len(records) // RECORD_SIZE - skip
        if skip < 0 or count <= 0:
            return
        first, records = first + skip, records[skip * RECORD_SIZE :]
        cursor.delivered(first, count)
        for listener, _ in list(self._listeners):
            try:
                listener(first, records)
            except Exception:
                log.exception("feed listener failed")
