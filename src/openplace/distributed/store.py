"""The API processes' store: Redis for the atomic step, PostgreSQL for durability.

``place`` joins the placements requested in the same event-loop turn into one Lua
script call (per placement: cooldown check and set, seq, pixel write, stream entry),
then waits until the persister announces that its seq is committed to PostgreSQL.
Many requests wait on one feed subscription, so durability costs no round trip of
its own per placement, and Redis sees one call per batch, not per request.

Which answer each placement gets is decided by :class:`~.acks.Acks`: a seq is
confirmed only together with the board it was accepted under. A placement of a board
that Redis has since lost is looked up in PostgreSQL's log, and answered 200 only if
the log holds that very placement.

The Redis client never retries a command by itself: a retried ``EVALSHA`` whose
reply was lost would be a second placement. A lost reply is answered 503
``unconfirmed`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openplace.core.board import Geometry
from openplace.core.placement import (
    BoardSnapshot,
    CooldownActive,
    PixelInfo,
    Placement,
    PlacementRefused,
    Run,
    StaleRun,
    StoreUnavailable,
    UserState,
    next_allowed,
)
from openplace.core.policy import Policy, client_key
from openplace.core.quota import DAY, MINUTE, window_end
from openplace.core.wire import RECORD_SIZE
from openplace.distributed import keys
from openplace.distributed.acks import Accepted, Acks, BoardId, LogRow, Outcome
from openplace.distributed.feed import RedisFeed
from openplace.distributed.schema import PG_ERRORS, migrate
from openplace.observe import health
from openplace.observe.metrics import watch_acks

log = logging.getLogger(__name__)


async def connect(redis_url: str, database_url: str) -> tuple[aioredis.Redis, asyncpg.Pool]:
    """A Redis client and a small PostgreSQL pool, with the schema migrated."""
    redis = aioredis.from_url(
        redis_url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    return redis, pool


# index, color, user, address, and the future for (seq, now_ms, board)
_Request = tuple[int, int, str, str, "asyncio.Future[tuple[int, int, BoardId]]"]
_Waiter = asyncio.Future[None]


async def close_quietly(closing: Awaitable[object], timeout: float = 2.0) -> None:
    """Close a client without hanging shutdown on a server that is gone."""
    try:
        await asyncio.wait_for(closing, timeout)
    except Exception as exc:
        log.warning("closing a connection failed: %s", exc)


async def dependency_problems(
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    feed: RedisFeed,
    board_id: str | None = None,
    watermark: Callable[[int], None] | None = None,
) -> health.Problems:
    """Redis and PostgreSQL answer, Redis holds a restored board (``board_id``, if
    given, is the one the caller serves) and ``feed`` follows it. ``watermark`` is told
    the committed seq read from Redis, when it is of that board."""
    problems: health.Problems = {}
    read: list[object] = []

    async def read_epoch() -> None:
        read.extend(await redis.mget(keys.EPOCH, keys.COMMITTED))

    if await health.dependency("redis", read_epoch(), problems):
        epoch, committed = read
        if epoch is None:
            problems["board"] = "Redis is being restored"
        elif board_id is not None and keys.text(epoch) != board_id:
            problems["board"] = f"serving {board_id}; Redis holds {keys.text(epoch)}"
        elif watermark is not None:
            watermark(int(keys.text(committed or 0)))
    await health.dependency("postgresql", pg.fetchval("SELECT 1"), problems)
    following = feed._task  # the feed's reader (this package's own)
    if following is None or following.done():
        problems["feed"] = "not following the committed placements"
    return problems


def _fail(batch: list[_Request], message: str, *, maybe_placed: bool = False) -> None:
    """Fail every request of a batch (each with its own exception)."""
    for *_, future in batch:
        if not future.done():
            future.set_exception(StoreUnavailable(message, maybe_placed=maybe_placed))


# A server down or restarting, as each client library reports it.
_OUTAGES = (
    OSError, RedisConnectionError, RedisTimeoutError,
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)  # fmt: skip


@contextlib.contextmanager
def _outage() -> Iterator[None]:
    """Report Redis or PostgreSQL being unreachable as :class:`StoreUnavailable`."""
    try:
        yield
    except _OUTAGES as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _redis_call() -> Iterator[None]:
    """As :func:`_outage`, and any other Redis error as :class:`StoreUnavailable` too."""
    with _outage():
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc


def _answer(waiter: _Waiter, outcome: Outcome) -> None:
    if waiter.done():
        return
    if outcome is Outcome.CONFIRMED:
        waiter.set_result(None)
    else:
        waiter.set_exception(StoreUnavailable("lost in a Redis failure; not placed"))


def _time_out(waiter: _Waiter) -> None:
    if not waiter.done():
        waiter.set_exception(
            StoreUnavailable(
                "accepted but not confirmed durable in time; it may still appear",
                maybe_placed=True,
            )
        )


class DistributedStore:
    """:class:`~openplace.storage.base.Store` on Redis + PostgreSQL."""

    def __init__(
        self,
        redis_url: str,
        database_url: str,
        geometry: Geometry,
        cooldown: float,
        *,
        ack_timeout: float = 10.0,
        cooldown_by: str = "user",
        sessions_per_minute: int = 30,
        sessions_per_day: int = 300,
        policy_source: Callable[[], Awaitable[Policy]] | None = None,
        policy_poll: float = 1.0,
    ) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.geometry = geometry
        self.cooldown = cooldown
        self.ack_timeout = ack_timeout
        cooldown_ms = int(cooldown * 1000)
        self._user_cooldown_ms = cooldown_ms if cooldown_by in ("user", "both") else 0
        self._address_cooldown_ms = cooldown_ms if cooldown_by in ("address", "both") else 0
        self.sessions_per_minute = sessions_per_minute
        self.sessions_per_day = sessions_per_day
        self.policy_source = policy_source
        self.policy_poll = policy_poll
        self._policy = Policy()
        self._policy_lock = asyncio.Lock()
        self._policy_task: asyncio.Task[None] | None = None
        self._acks: Acks[_Waiter] = Acks()
        self._checking: asyncio.Task[None] | None = None
        self._batch: list[_Request] = []  # placements for the next script call
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_batch = 1000
        self._redis: aioredis.Redis | None = None
        self._pg: asyncpg.Pool | None = None
        self.feed = RedisFeed(None, None)  # on this store's connections, from open()
        watch_acks(lambda: len(self._acks))

    async def open(self) -> None:
        self._redis, self._pg = await connect(self.redis_url, self.database_url)
        self._place = self._redis.register_script(keys.PLACE_LUA)
        self._run_script = self._redis.register_script(keys.RUN_LUA)
        self._policy_script = self._redis.register_script(keys.POLICY_LUA)
        self._session_script = self._redis.register_script(keys.SESSION_LUA)
        self._board = self._redis.register_script(keys.BOARD_LUA)
        if self.policy_source is not None:
            with contextlib.suppress(StoreUnavailable):  # Redis down: at the first placement
                await self._reload_policy()
            self._policy_task = asyncio.create_task(self._follow_policy())
        self.feed.bind(self._redis, self._pg)
        self.feed.listen(self._committed, self._reset)
        await self.feed.open()
        self._acks.reset(self.feed.board, self.feed.last)

    async def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
        if self._policy_task is not None:
            self._policy_task.cancel()
            await asyncio.gather(self._policy_task, return_exceptions=True)
        await self.feed.close()
        if self._redis is not None:
            await close_quietly(self._redis.aclose())
        if self._pg is not None:
            await close_quietly(self._pg.close())

    async def health(self) -> health.Problems:
        """What keeps this API process from serving: Redis, PostgreSQL, a restored
        board, the feed (see :mod:`openplace.observe.health`)."""
        if self._redis is None or self._pg is None:
            return {"store": "not open"}
        return await dependency_problems(self._redis, self._pg, self.feed)

    # -- placing -------------------------------------------------------------------

    async def place(self, user_id: str, index: int, color: int, address: str) -> Placement:
        try:
            self._check_policy(user_id, address, index)
        except PlacementRefused:
            # Refused by the policy this process holds: is it still the one in force? (One
            # that allows is checked by the placement script; one that refuses, here.)
            await self.current_policy()
            self._check_policy(user_id, address, index)
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[tuple[int, int, BoardId]] = loop.create_future()
        self._queue((index, color, user_id, address, accepted))
        seq, now_ms, board = await accepted
        placement = Placement(seq, index, color, user_id, now_ms / 1000)
        return await self._durable(placement, board)

    def _check_policy(self, user_id: str, address: str, index: int) -> None:
        policy = self._policy
        if policy.version:
            refusal = policy.refusal(user_id, address, *self.geometry.xy(index), time.time())
            if refusal is not None:
                raise PlacementRefused(refusal)

    def _queue(self, *requests: _Request) -> None:
        self._batch.extend(requests)
        if len(self._batch) == len(requests):
            asyncio.get_running_loop().call_soon(self._send_batch)

    async def _durable(self, placement: Placement, board: BoardId) -> Placement:
        """``placement`` once it is committed to PostgreSQL, or ``StoreUnavailable``."""
        loop = asyncio.get_running_loop()
        seq, index, color, user_id = (placement.seq, placement.index, placement.color,
                                      placement.user_id)  # fmt: skip
        waiter: _Waiter = loop.create_future()
        outcome = self._acks.accepted(waiter, Accepted(seq, board, index, color, user_id))
        if outcome is Outcome.CONFIRMED:
            return placement
        if outcome is Outcome.CHECK:
            self._start_checking()
        # A timer of the loop's, not wait_for: that costs a task's worth per request.
        timer = loop.call_later(self.ack_timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._acks.forget(waiter)
        return placement

    def _send_batch(self) -> None:
        """One script call for every placement requested since the last one."""
        batch, self._batch = self._batch[: self.max_batch], self._batch[self.max_batch :]
        if self._batch:
            asyncio.get_running_loop().call_soon(self._send_batch)
        task = asyncio.create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[_Request]) -> None:
        keys_ = [keys.BOARD, keys.SEQ, keys.STREAM, keys.EPOCH, keys.POLICY]
        policy = self._policy
        args: list[int | str] = [self._user_cooldown_ms, self._address_cooldown_ms,
                                 policy.version]  # fmt: skip
        for index, color, user, address, _ in batch:
            keys_ += (keys.COOLDOWN + user, keys.ADDRESS_COOLDOWN + client_key(address))
            args += (index, color, user)
        try:
            result = await self._place(keys=keys_, args=args)
        except (RedisError, OSError) as exc:
            # A timeout means the script may have run; a refused connection that it did not.
            maybe = isinstance(exc, RedisTimeoutError | TimeoutError)
            _fail(batch, f"redis: {exc}", maybe_placed=maybe)
            return
        if result[0] == -1:
            _fail(batch, "the board is being restored")
            return
        if result[0] == -2:  # a moderator changed the policy: check again under it
            await self._recheck(batch, policy)
            return
        board_id, now_ms = BoardId.parse(result[0]), int(result[1])
        now = time.time()
        for (*_, future), r in zip(batch, result[2:], strict=True):
            if future.done():
                continue
            if r > 0:
                future.set_result((int(r), now_ms, board_id))
            else:
                future.set_exception(CooldownActive(-int(r) / 1000, now))

    async def _recheck(self, batch: list[_Request], checked: Policy) -> None:
        try:
            if self._policy is checked:
                await self._reload_policy()
        except StoreUnavailable as exc:
            _fail(batch, f"the policy cannot be read: {exc}")
            return
        again = []
        for request in batch:
            index, _, user, address, future = request
            try:
                self._check_policy(user, address, index)
            except PlacementRefused as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                again.append(request)
        if again:
            self._queue(*again)

    def _committed(self, first: int, records: bytes) -> None:
        upto = first + len(records) // RECORD_SIZE - 1
        for waiter in self._acks.committed_upto(self.feed.board, upto):
            _answer(waiter, Outcome.CONFIRMED)

    def _reset(self, board_id: str, head: int) -> None:
        """Redis holds a new board, committed up to ``head``: placements of older boards
        are looked up in the log (the feed may have missed a restore or two, so no seq
        of theirs can be judged by the new board's numbers)."""
        confirmed, check = self._acks.reset(BoardId.parse(board_id), head)
        for waiter in confirmed:
            _answer(waiter, Outcome.CONFIRMED)
        if check:
            self._start_checking()

    def _start_checking(self) -> None:
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_log())

    async def _check_log(self) -> None:
        """Answer placements of finished boards from PostgreSQL's log, one query a round."""
        assert self._pg is not None
        while waiters := self._acks.pending_checks():
            seqs = []
            for waiter in waiters:
                accepted = self._acks.placement(waiter)
                if accepted is not None:
                    seqs.append(accepted.seq)
            try:
                rows = await self._pg.fetch(
                    "SELECT seq, epoch, idx, color, user_id FROM placements "
                    "WHERE seq = ANY($1::bigint[])",
                    seqs,
                )
            except PG_ERRORS as exc:
                log.warning("cannot look placements up in the log yet: %s", exc)
                await asyncio.sleep(0.5)
                continue
            found = {r["seq"]: LogRow(r["seq"], r["epoch"], r["idx"], r["color"], r["user_id"])
                     for r in rows}  # fmt: skip
            for waiter in waiters:
                accepted = self._acks.placement(waiter)
                if accepted is not None:
                    _answer(waiter, self._acks.checked(waiter, found.get(accepted.seq)))

    # -- moderation ----------------------------------------------------------------

    async def write_run(self, user_id: str, changes: list[tuple[int, int]], after: int) -> Run:
        if not changes:
            return Run(None, 0)
        assert self._redis is not None
        args: list[int | str] = [after, user_id]
        for index, color in changes:
            args += (index, color)
        try:
            result = await self._run_script(
                keys=[keys.BOARD, keys.SEQ, keys.STREAM, keys.EPOCH], args=args
            )
        except (RedisError, OSError) as exc:
            maybe = isinstance(exc, RedisTimeoutError | TimeoutError)
            raise StoreUnavailable(f"redis: {exc}", maybe_placed=maybe) from exc
        if result[0] == -1:
            raise StoreUnavailable("the board is being restored")
        if result[0] == -3:
            raise StaleRun(after)
        board, (now_ms, first, count, *last) = BoardId.parse(result[0]), map(int, result[1:])
        run = Run(first if count else None, count, len(changes) - count)
        if run.last is not None:  # durable once its newest placement is
            index, color = last
            await self._durable(Placement(run.last, index, color, user_id, now_ms / 1000), board)
        return run

    @property
    def policy(self) -> Policy:
        return self._policy

    async def current_policy(self) -> Policy:
        if not await self._policy_current():
            await self._reload_policy()
        return self._policy

    async def apply_policy(self, policy: Policy) -> None:
        in_force = await self._publish_policy(policy)
        if in_force == policy.version and policy.version > self._policy.version:
            self._policy = policy
        elif in_force > self._policy.version:
            await self._reload_policy()

    async def _publish_policy(self, policy: Policy) -> int:
        public = orjson.dumps({"version": policy.version, **policy.public()})
        with _redis_call():
            return int(await self._policy_script(keys=[keys.POLICY, keys.POLICY_PUBLIC],
                                                 args=[policy.version, public]))  # fmt: skip

    async def _reload_policy(self) -> None:
        """Read the policy from PostgreSQL and put it in force in Redis (Redis may have
        lost it, or a moderator changed it in another process). One at a time."""
        if self.policy_source is None:
            raise StoreUnavailable("this store has no policy source, and Redis holds a policy")
        async with self._policy_lock:
            for _ in range(10):
                with _outage():
                    policy = await self.policy_source()
                in_force = await self._publish_policy(policy)
                if in_force <= policy.version:
                    self._policy = policy
                    return
            raise StoreUnavailable("the policy keeps changing; try again")

    async def _policy_current(self) -> bool:
        assert self._redis is not None
        with _redis_call():
            return int(await self._redis.get(keys.POLICY) or 0) == self._policy.version

    async def _follow_policy(self) -> None:
        """Notice another process's policy change even while nobody places here (the
        placement script notices at once when someone does)."""
        while True:
            await asyncio.sleep(self.policy_poll)
            try:
                await self.current_policy()
            except StoreUnavailable as exc:
                log.debug("policy not checked: %s", exc)

    async def admit_session(self, user_id: str, address: str) -> float | None:
        assert self._redis is not None
        key, now = client_key(address), time.time()
        minute = f"{keys.SESSIONS}m:{key}:{int(now) // MINUTE}"
        day = f"{keys.SESSIONS}d:{key}:{int(now) // DAY}"
        with _redis_call():
            over = await self._session_script(
                keys=[minute, day], args=[self.sessions_per_minute, self.sessions_per_day]
            )
        if over == 0:
            return None
        return window_end(now, DAY if over == 2 else MINUTE) - now

    # -- reading -------------------------------------------------------------------

    async def board(self) -> BoardSnapshot:
        assert self._redis is not None
        try:
            data, seq, epoch = await self._board(keys=[keys.BOARD, keys.SEQ, keys.EPOCH])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        if epoch is None:
            raise StoreUnavailable("the board is being restored")
        data = (data or b"").ljust(self.geometry.nbytes, b"\0")
        return BoardSnapshot(data, int(seq or 0), epoch.decode())

    async def pixel(self, index: int) -> PixelInfo:
        assert self._pg is not None and self._redis is not None
        with _outage():
            row = await self._pg.fetchrow(
                "SELECT color, user_id, ts, seq FROM pixels WHERE idx = $1", index
            )
            if row is not None:
                ts: datetime = row["ts"]
                return PixelInfo(index, row["color"], row["user_id"], ts.timestamp(), row["seq"])
            (color,) = await self._redis.bitfield(keys.BOARD).get("u4", f"#{index}").execute()
        return PixelInfo(index, int(color or 0))

    async def user(self, user_id: str, address: str) -> UserState:
        assert self._pg is not None and self._redis is not None
        with _outage():
            raw, by_address = await self._redis.mget(
                keys.COOLDOWN + user_id, keys.ADDRESS_COOLDOWN + client_key(address)
            )
            if raw is not None:
                last: float | None = int(raw) / 1000
            else:
                ts = await self._pg.fetchval(
                    "SELECT last_placed FROM users WHERE user_id = $1", user_id
                )
                last = ts.timestamp() if ts is not None else None
        address_last = int(by_address) / 1000 if by_address is not None else None
        next_at = next_allowed(self.cooldown, time.time(),
                               last if self._user_cooldown_ms else None,
                               address_last if self._address_cooldown_ms else None)  # fmt: skip
        return UserState(user_id, last, next_at)
