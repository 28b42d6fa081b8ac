"""The persister: the one process that makes placements durable, and restores Redis.

It reads the Redis stream in seq order, commits each batch to PostgreSQL in one
transaction (``COPY`` into the log, upserts of the per-pixel and per-user state), then
announces the committed run on the feed channel: API processes acknowledge the
placements in it, realtime processes broadcast them. Because one process copies a
gapless stream in order, the log in PostgreSQL is gapless whichever API process
accepted a placement and whether or not it lived to acknowledge it.

It keeps the committed board in memory and snapshots it to PostgreSQL, so a restore
writes a whole board at once. When Redis comes back empty (or behind what is
committed), it restores the board, the seq counter, recent history and cooldowns from
PostgreSQL under a new epoch: placements Redis had accepted but not yet committed are
gone (never acknowledged), and every client is told to resync.

Only one persister is active at a time (a PostgreSQL advisory lock); others wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from openplace.config import address_in, networks
from openplace.core.board import Board, Geometry
from openplace.core.timeline import KEYFRAME_CODEC, decode_keyframe, encode_keyframe
from openplace.core.wire import encode_record
from openplace.distributed import keys
from openplace.distributed.acks import BoardId, continuing, restore_reason
from openplace.distributed.archive import PostgresArchive
from openplace.distributed.schema import PERSISTER_LOCK, PG_ERRORS, get_meta, migrate, set_meta
from openplace.observe import health, metrics, server
from openplace.storage.backfill import backfill_keyframes
from openplace.storage.durability import check_size, load_board, size_text

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)




class RedisPersists(ValueError):
    """Redis is configured to save its data; the persister will not use it."""


class Persister:
    def __init__(
        self,
        redis_url: str,
        database_url: str,
        geometry: Geometry,
        cooldown: float,
        *,
        batch: int = 10_000,
        snapshot_every: int = 25_000,
        stream_keep: int = 200_000,
        restore_history: int = 10_000,
    ) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.geometry = geometry
        self.cooldown_ms = int(cooldown * 1000)
        self.batch = batch
        self.snapshot_every = snapshot_every
        self.stream_keep = stream_keep
        self.restore_history = restore_history
        self.board = Board(geometry)
        self.committed = 0
        self.snapshot_seq = 0
        self.uid = ""
        self.epoch = 0
        self.restores = 0
        self.role = "starting"  # then "standby" (waiting for the lock) or "active"
        metrics.persister_role(self.role)
        self._pg: asyncpg.Connection | None = None
        self._redis: aioredis.Redis | None = None
        self._backfill: asyncio.Task[None] | None = None

    @property
    def board_id(self) -> BoardId:
        """The board this persister commits (and Redis must hold)."""
        return BoardId(self.uid, self.epoch)

    @property
    def epoch_id(self) -> str:
        return str(self.board_id)

    # -- lifecycle -----------------------------------------------------------------

    async def connect(
        self, *, wait_for_lock: bool = True, stop: asyncio.Event | None = None
    ) -> bool:
        """Connect, migrate and take the persister lock.

        Returns False, holding nothing, if the lock is busy and ``wait_for_lock`` is
        off, or if ``stop`` is set while standing by. While it waits for the lock, a
        PostgreSQL that goes away (a restart) is waited for too: a standby must
        outlive the outage it stands by for.
        """
        while True:
            try:
                return await self._connect_once(wait_for_lock=wait_for_lock, stop=stop)
            except PG_ERRORS as exc:
                self._set_role("starting")
                if not wait_for_lock or (stop is not None and stop.is_set()):
                    raise
                log.warning("postgresql unavailable (%s); connecting again", exc)
                await asyncio.sleep(0.5)

    async def _connect_once(self, *, wait_for_lock: bool, stop: asyncio.Event | None) -> bool:
        pg = await asyncpg.connect(self.database_url)
        try:
            await migrate(pg)
            said = False
            while not await pg.fetchval("SELECT pg_try_advisory_lock($1)", PERSISTER_LOCK):
                if not wait_for_lock or (stop is not None and stop.is_set()):
                    await pg.close()
                    return False
                if not said:
                    log.info("another persister is active; standing by")
                    self._set_role("standby")
                    said = True
                await asyncio.sleep(0.5)
            self._pg = pg
            if self._redis is None:
                self._redis = aioredis.from_url(
                    self.redis_url, socket_timeout=5, socket_connect_timeout=2
                )
            with contextlib.suppress(RedisError, OSError):  # down: checked before restoring
                await self._check_redis_keeps_nothing()
            await self._load()
            await self._announce_committed()
            if self._backfill is None or self._backfill.done():
                self._backfill = asyncio.create_task(self._backfill_keyframes())
            self._set_role("active")
            return True
        except BaseException:
            self._pg = None
            pg.terminate()  # the session, and with it the lock, ends here
            raise

    def _set_role(self, role: str) -> None:
        self.role = role
        metrics.persister_role(role)

    # -- observability -------------------------------------------------------------

    async def health(self) -> health.Problems:
        """Ready: connected, and active (PostgreSQL and Redis answer) or standing by."""
        if self.role == "starting":
            return {"postgresql": "connecting"}
        if self.role == "standby":
            return {}
        problems: health.Problems = {}
        if self._pg is None or self._pg.is_closed():
            problems["postgresql"] = "connection lost; reconnecting"
        metrics.dependency("postgresql", "postgresql" not in problems)
        if self._redis is not None:
            await health.dependency("redis", self._sample(), problems)
        return problems

    async def _sample(self) -> None:
        """The stream's length and Redis's seq, as gauges (read when scraped)."""
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.STREAM)
            pipe.get(keys.SEQ)
            length, seq = await pipe.execute()
        metrics.STREAM_LENGTH.set(int(length))
        metrics.ACCEPTED_SEQ.set(int(seq or 0))

    async def serve_http(self, host: str, port: int, metrics_from: str) -> asyncio.Server:
        """``/metrics`` (to ``metrics_from`` only), ``/livez`` and ``/readyz`` on ``port``."""
        allowed = networks(metrics_from)
        registry = metrics.registry(frozenset({"persister"}), True)

        async def metrics_route(peer: str) -> server.Answer:
            if not address_in(peer, allowed):
                return 404, b'{"error":"not_found"}', server.JSON
            health.record(await self.health())
            return 200, metrics.render(registry), metrics.CONTENT_TYPE

        async def livez(peer: str) -> server.Answer:
            return 200, health.LIVE, server.JSON

        async def readyz(peer: str) -> server.Answer:
            status, body = health.answer(await self.health())
            return status, body, server.JSON

        routes = {"/metrics": metrics_route, "/livez": livez, "/readyz": readyz}
        return await server.serve(host, port, routes)

    async def _check_redis_keeps_nothing(self) -> None:
        """Refuse a Redis that saves its data to disk.

        Redis is a cache of the log here. One restarted from its own RDB or AOF file
        would come back with the same board id and an older seq counter, and give
        out again seqs that the log holds for other placements.
        """
        assert self._redis is not None
        try:
            config = {**await self._redis.config_get("save"),
                      **await self._redis.config_get("appendonly")}  # fmt: skip
        except ResponseError as exc:  # CONFIG disabled (managed Redis): cannot tell
            log.warning("cannot read Redis's persistence settings (%s); it must keep "
                        "nothing on disk (save \"\", appendonly no)", exc)  # fmt: skip
            return
        values = {keys.text(k): keys.text(v) for k, v in config.items()}
        if values.get("save") or values.get("appendonly") == "yes":
            raise RedisPersists(
                f"Redis saves to disk (save {values.get('save')!r}, appendonly "
                f"{values.get('appendonly')!r}); run it with --save '' --appendonly no: "
                "PostgreSQL is the durable copy, and a Redis restarted from its own files "
                "would give out seqs again under the same board id"
            )

    async def _announce_committed(self) -> None:
        """A predecessor may have committed a run and died before announcing it: raise
        the watermark, so processes waiting on it catch up from the log."""
        assert self._redis is not None
        with contextlib.suppress(RedisError, OSError):
            epoch, committed = await self._redis.mget(keys.EPOCH, keys.COMMITTED)
            current = epoch is not None and BoardId.parse(epoch) == self.board_id
            if current and int(committed or 0) < self.committed:
                await self._redis.set(keys.COMMITTED, self.committed)

    async def close(self) -> None:
        from openplace.distributed.store import close_quietly

        if self._backfill is not None:
            self._backfill.cancel()
            await asyncio.gather(self._backfill, return_exceptions=True)
        if self._redis is not None:
            await close_quietly(self._redis.aclose())
        if self._pg is not None:
            await close_quietly(self._pg.close())

    async def _load(self, progress: Progress | None = None) -> None:
        """The committed board from PostgreSQL: the newest snapshot plus the log after it."""
        pg = self._pg
        assert pg is not None
        self.uid = await get_meta(pg, "board_uid") or ""
        if not self.uid:
            self.uid = secrets.token_hex(4)
            await set_meta(pg, "board_uid", self.uid)
            await set_meta(pg, "size", size_text(self.geometry))
        check_size(await get_meta(pg, "size") or "", self.geometry, "the database")
        self.epoch = int(await get_meta(pg, "epoch") or 0)
        row = await pg.fetchrow(
            "SELECT seq, board, codec FROM snapshots ORDER BY seq DESC LIMIT 1"
        )
        self.snapshot_seq = row["seq"] if row else 0
        if progress:
            progress(f"snapshot at seq {self.snapshot_seq}")
        tail = await pg.fetch(
            "SELECT seq, idx, color FROM placements WHERE seq > $1 ORDER BY seq", self.snapshot_seq
        )
        self.board, self.committed = load_board(
            self.geometry,
            (row["seq"], decode_keyframe(row["board"], row["codec"])) if row else None,
            [r[0] for r in tail], [r[1] for r in tail], [r[2] for r in tail],
        )  # fmt: skip
        metrics.COMMITTED_SEQ.set(self.committed)
        if progress:
            progress(f"applied {len(tail)} placements after it; committed seq {self.committed}")

    async def _backfill_keyframes(self) -> None:
        """Keyframes for the history from before they were all kept, on connections of
        its own, beside the commits (idempotent: a persister that takes over later
        writes what is still missing)."""
        archive = PostgresArchive(self.geometry, database_url=self.database_url)
        try:
            await archive.open()
            have = [int(r[0]) for r in await archive.pool.fetch("SELECT seq FROM snapshots")]

            async def write(seq: int, frame: bytes) -> None:
                await archive.pool.execute(
                    "INSERT INTO snapshots (seq, board, codec) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    seq, frame, KEYFRAME_CODEC,
                )  # fmt: skip

            await backfill_keyframes(archive, have, self.committed, self.snapshot_every, write)
        except Exception:
            log.exception("writing the history's keyframes failed; again when next active")
        finally:
            await archive.close()

    # -- main loop -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Commit placements until ``stop`` is set; restore Redis whenever it needs it.

        If PostgreSQL goes away, the lock goes with the session: reconnect, take the
        lock again (or stand by behind whoever took it) and reload what is committed.
        """
        while not stop.is_set():
            try:
                await self._run(stop)
            except PG_ERRORS as exc:
                log.warning("postgresql unavailable (%s); reconnecting", exc)
                self._set_role("starting")
                if self._pg is not None:
                    self._pg.terminate()
                    self._pg = None
                await asyncio.sleep(0.5)
                # Waits out the outage, and for the lock: a standby may have taken it.
                with contextlib.suppress(*PG_ERRORS):  # raised only once stop is set
                    await self.connect(stop=stop)

    async def _run(self, stop: asyncio.Event) -> None:
        redis = self._redis
        assert redis is not None
        checked = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now - checked > 0.25:
                    checked = now
                    if await self._needs_restore():
                        await self.restore()
                        continue
                entries = keys.xread_entries(
                    await redis.xread(
                        {keys.STREAM: f"{self.committed}-0"}, count=self.batch, block=100
                    )
                )
                if entries and not await self._commit(entries):
                    log.error("stream does not continue at seq %d; restoring", self.committed + 1)
                    await self.restore()
            except RedisError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                await asyncio.sleep(0.2)
                checked = 0.0

    async def _needs_restore(self) -> bool:
        redis = self._redis
        assert redis is not None
        epoch, seq, request = await redis.mget(keys.EPOCH, keys.SEQ, keys.RESTORE_REQUEST)
        board = BoardId.parse(epoch) if epoch is not None else None
        reason = restore_reason(
            board, self.board_id, int(seq or 0), self.committed, requested=request is not None
        )
        if reason is not None:
            log.info("restoring: %s", reason)
        return reason is not None

    async def _commit(self, entries: list[keys.StreamEntry]) -> bool:
        """Commit a contiguous run read from the stream and announce it.

        Returns False, committing nothing, if the run does not start right after
        :attr:`committed` (Redis lost entries: time to restore).
        """
        first = self.committed + 1
        n = continuing(self.committed, [e.seq for e in entries])
        if n == 0:
            return False
        rows = []
        for seq, entry in enumerate(entries[:n], start=first):
            index, color, user, ts = keys.parse_entry(entry.data)
            rows.append((seq, index, color, user, _dt(ts), self.epoch))
        started = time.perf_counter()
        await self._write_rows(rows)
        metrics.PG_COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.PG_COMMIT_BATCH.observe(len(rows))
        records = b"".join(encode_record(r[1], r[2]) for r in rows)
        self.board.apply_records(records)
        self.committed = rows[-1][0]
        metrics.COMMITTED_SEQ.set(self.committed)
        redis = self._redis
        assert redis is not None
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.COMMITTED, self.committed)
            pipe.publish(keys.FEED, keys.encode_feed(self.epoch, first, records))
            minid = f"{max(0, self.committed - self.stream_keep)}-0"
            pipe.xtrim(keys.STREAM, minid=minid, approximate=True)
            await pipe.execute()
        if self.committed - self.snapshot_seq >= self.snapshot_every:
            await self._snapshot()
        return True

    async def _write_rows(self, rows: list[tuple[int, int, int, str, datetime, int]]) -> None:
        """One transaction: the log rows, then the latest state per pixel and per user."""
        pg = self._pg
        assert pg is not None
        pixels: dict[int, tuple[int, int, int, str, datetime, int]] = {}
        users: dict[str, datetime] = {}
        for r in rows:
            pixels[r[1]] = r
            users[r[3]] = r[4]
        async with pg.transaction():
            await pg.copy_records_to_table(
                "placements",
                records=rows,
                columns=["seq", "idx", "color", "user_id", "ts", "epoch"],
            )
            px = list(pixels.values())
            await pg.execute(
                "INSERT INTO pixels (idx, color, user_id, ts, seq) "
                "SELECT * FROM unnest($1::int[], $2::smallint[], $3::text[], "
                "$4::timestamptz[], $5::bigint[]) "
                "ON CONFLICT (idx) DO UPDATE SET color = excluded.color, "
                "user_id = excluded.user_id, ts = excluded.ts, seq = excluded.seq",
                [p[1] for p in px], [p[2] for p in px], [p[3] for p in px],
                [p[4] for p in px], [p[0] for p in px],
            )  # fmt: skip
            await pg.execute(
                "INSERT INTO users (user_id, last_placed) "
                "SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
                "ON CONFLICT (user_id) DO UPDATE SET last_placed = excluded.last_placed",
                list(users), list(users.values()),
            )  # fmt: skip

    async def _snapshot(self) -> None:
        """A keyframe of the committed board (all are kept: they are the history's)."""
        pg = self._pg
        assert pg is not None
        seq = self.committed
        frame = await asyncio.to_thread(encode_keyframe, self.board.snapshot())
        await pg.execute(
            "INSERT INTO snapshots (seq, board, codec) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            seq, frame, KEYFRAME_CODEC,
        )  # fmt: skip
        self.snapshot_seq = seq

    # -- restore -------------------------------------------------------------------

    async def restore(self, progress: Progress | None = None) -> float:
        """Rebuild Redis from what is committed, under a new epoch. Returns seconds taken."""
        started = time.perf_counter()
        redis, pg = self._redis, self._pg
        assert redis is not None and pg is not None
        say = progress or (lambda m: log.info(m))
        await self._check_redis_keeps_nothing()
        # Stop new placements first, then commit whatever Redis still holds.
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(keys.EPOCH)
            while entries := keys.xread_entries(
                await redis.xread({keys.STREAM: f"{self.committed}-0"}, count=self.batch)
            ):
                if not await self._commit(entries):
                    break
        self.epoch += 1
        await set_meta(pg, "epoch", str(self.epoch))
        say(f"restoring board at seq {self.committed} as epoch {self.epoch_id}")
        recent = await pg.fetch(
            "SELECT seq, idx, color, user_id, (extract(epoch FROM ts) * 1000)::bigint "
            "FROM placements WHERE seq > $1 ORDER BY seq",
            max(0, self.committed - self.restore_history),
        )
        now_ms = int(time.time() * 1000)
        cooling = await pg.fetch(
            "SELECT user_id, (extract(epoch FROM last_placed) * 1000)::bigint FROM users "
            "WHERE last_placed > now() - make_interval(secs => $1)",
            self.cooldown_ms / 1000,
        )
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.STREAM, keys.BOARD, keys.SEQ, keys.COMMITTED, keys.RESTORE_REQUEST)
            pipe.set(keys.BOARD, self.board.snapshot())
            pipe.set(keys.SEQ, self.committed)
            pipe.set(keys.COMMITTED, self.committed)
            for seq, idx, color, user, ts in recent:
                pipe.xadd(keys.STREAM, {"d": f"{idx} {color} {user} {ts}"}, id=f"{seq}-0")
            for user, ts in cooling:
                left = ts + self.cooldown_ms - now_ms
                if left > 0:
                    pipe.set(keys.COOLDOWN + user, ts, px=left)
            pipe.set(keys.EPOCH, self.epoch_id)
            pipe.publish(keys.FEED, keys.encode_feed(self.epoch, self.committed + 1, b""))
            await pipe.execute()
        self.restores += 1
        metrics.RESTORES.inc()
        metrics.LAST_RESTORE.set_to_current_time()
        took = time.perf_counter() - started
        say(f"restored {len(recent)} recent placements, {len(cooling)} cooldowns in {took:.3f} s")
        return took
