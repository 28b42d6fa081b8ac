"""The committed feed, as each process sees it: one subscription per process.

The persister publishes every committed run on ``op:feed``. :class:`RedisFeed`
subscribes once, delivers runs contiguously and in order (filling any gap from the
Redis stream, or from PostgreSQL when the stream has been trimmed), polls the
committed watermark while idle in case a message was lost, and reports a new epoch
(a restored board) as a reset.
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
from openplace.storage.base import Listener, ResetListener
from openplace.storage.distributed import keys

log = logging.getLogger(__name__)


class RedisFeed:
    """:class:`~openplace.storage.base.Feed` over Redis pub/sub, the stream and PostgreSQL."""

    def __init__(
        self, redis: aioredis.Redis | None, pg: asyncpg.Pool | None, *, poll: float = 0.25
    ) -> None:
        self.redis: aioredis.Redis = redis  # set by open() when None
        self.pg: asyncpg.Pool = pg
        self.poll = poll
        self._urls: tuple[str, str] | None = None  # set: open() connects, close() closes
        self.board_id = ""
        self.epoch = 0
        self.last = 0  # last seq delivered
        self._listeners: list[tuple[Listener, ResetListener]] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_urls(cls, redis_url: str, database_url: str) -> RedisFeed:
        """A feed with connections of its own (a realtime process)."""
        feed = cls(None, None)
        feed._urls = (redis_url, database_url)
        return feed

    async def open(self, timeout: float = 30.0) -> None:
        """Wait until Redis holds a restored board, then follow the feed."""
        if self._urls is not None:
            from openplace.storage.distributed.store import connect

            self.redis, self.pg = await connect(*self._urls)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    epoch, committed = await self.redis.mget(keys.EPOCH, keys.COMMITTED)
                except (RedisError, OSError) as exc:
                    log.warning("waiting for redis: %s", exc)
                    epoch = None
                if epoch is not None:
                    break
                await asyncio.sleep(0.1)
        self._set_epoch(epoch.decode())
        self.last = int(committed or 0)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A pub/sub connection to a Redis that went away can hang while closing.
            await asyncio.wait({self._task}, timeout=2.0)
        if self._urls is not None:
            from openplace.storage.distributed.store import close_quietly

            await close_quietly(self.redis.aclose())
            await close_quietly(self.pg.close())

    def _set_epoch(self, board_id: str) -> None:
        self.board_id = board_id
        self.epoch = int(board_id.rsplit(".", 1)[1])

    # -- Feed ----------------------------------------------------------------------

    async def head(self) -> int:
        return self.last

    async def records(self, after: int, upto: int) -> bytes:
        if upto <= after:
            return b""
        n = upto - after
        entries = await self.redis.xrange(keys.STREAM, f"{after + 1}-0", f"{upto}-0")
        if len(entries) == n and entries[0][0] == f"{after + 1}-0".encode():
            out = bytearray()
            for _, fields in entries:
                index, color, _user, _ts = keys.parse_entry(fields[b"d"])
                out += encode_record(index, color)
            return bytes(out)
        rows = await self.pg.fetch(
            "SELECT idx, color FROM placements WHERE seq > $1 AND seq <= $2 ORDER BY seq",
            after, upto,
        )  # fmt: skip
        if len(rows) != n:
            raise TooOld(f"placements {after + 1}..{upto} are not all held")
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

    async def _on_message(self, data: bytes) -> None:
        epoch, first, records = keys.decode_feed(data)
        if epoch != self.epoch:
            await self._catch_up()
            return
        await self._deliver(first, records)

    async def _catch_up(self) -> None:
        raw_epoch, committed = await self.redis.mget(keys.EPOCH, keys.COMMITTED)
        if raw_epoch is None:
            return  # being restored
        board_id = raw_epoch.decode()
        committed = int(committed or 0)
        if board_id != self.board_id:
            log.info("board restored as %s at seq %d", board_id, committed)
            self._set_epoch(board_id)
            self.last = committed
            for _, on_reset in list(self._listeners):
                on_reset(board_id, committed)
            return
        if committed > self.last:
            await self._deliver(self.last + 1, await self.records(self.last, committed))

    async def _deliver(self, first: int, records: bytes) -> None:
        last = first + len(records) // RECORD_SIZE - 1
        if last <= self.last:
            return
        if first > self.last + 1:  # a message went missing: fetch what it carried
            missing = await self.records(self.last, first - 1)
            self._emit(self.last + 1, missing)
        elif first <= self.last:
            records = records[(self.last + 1 - first) * RECORD_SIZE :]
            first = self.last + 1
        self._emit(first, records)

    def _emit(self, first: int, records: bytes) -> None:
        if not records:
            return
        self.last = first + len(records) // RECORD_SIZE - 1
        for listener, _ in list(self._listeners):
            try:
                listener(first, records)
            except Exception:
                log.exception("feed listener failed")
