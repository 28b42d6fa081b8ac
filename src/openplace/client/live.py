""":class:`LiveBoard`: the board kept equal to the server's, from one fetch and the
websocket stream, resuming after every disconnect (docs/protocol.md, "client
algorithm")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from openplace.client.canvas import AsyncCanvas
from openplace.client.errors import CanvasError
from openplace.client.models import Colors, Placement, Policy, Snapshot
from openplace.client.stream import Gap, Hello, LiveState, Online, Resync

log = logging.getLogger("openplace.client")

CLOSE_TOO_SLOW = 4008  # the server dropped our backlog: resume at once
# What a lost connection or a server that is down looks like; anything else is a bug.
RETRYABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, httpx.HTTPError, CanvasError, WebSocketException, ValueError,
)  # fmt: skip
RESYNC_REFETCHES = 5  # a board older than a resync said is fetched again this often
MAX_MESSAGE_BYTES = 1 << 20  # the largest frame is 163,849 bytes


def backoff(attempt: int, low: float, high: float) -> float:
    """The wait before reconnection ``attempt`` (0, 1, ...): ``low`` doubling up to
    ``high``, of which a random half (jitter, so clients do not come back at once)."""
    step = min(high, low * 2.0 ** min(attempt, 32))
    return step / 2 + random.random() * step / 2


class Placements:
    """The placements a :class:`LiveBoard` applies from now on, as an async iterator.
    It ends when the live board is closed."""

    def __init__(self, live: LiveBoard) -> None:
        self._live = live
        self._queue: asyncio.Queue[Placement | None] = asyncio.Queue()
        live._subscriptions.add(self)

    def __aiter__(self) -> Placements:
        return self

    async def __anext__(self) -> Placement:
        if self._live.closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._live._raise_failure()
            raise StopAsyncIteration
        return item


class LiveBoard:
    """The canvas's board, kept equal to the server's::

        async with LiveBoard("http://127.0.0.1:8000") as live:
            async for p in live:
                print(p.seq, p.x, p.y, p.color)

    It fetches the board, opens the websocket with ``since`` and ``board``, and applies
    every batch once, in order. On a ``resync`` (the board was replaced, or this client
    fell too far behind) it fetches the board again. On a disconnect it reconnects with
    capped exponential backoff and jitter, and resumes with ``since``; a gap in the seqs
    makes it resume too. ``colors`` (``colors[y, x]``), ``seq`` and ``board_id`` are
    always one consistent state of the server's board.

    A placement reaches the iterators and callbacks once it is applied. Placements
    skipped by a resync are not reported one by one: the board jumps (``resyncs`` counts
    those jumps).
    """

    def __init__(
        self,
        url: str,
        *,
        backoff: tuple[float, float] = (0.5, 10.0),
        ping_interval: float | None = 25.0,
        ping_timeout: float | None = 10.0,
        open_timeout: float = 10.0,
        **httpx_args: Any,
    ) -> None:
        self.url = url
        self.backoff = backoff
        self._ping = (ping_interval, ping_timeout)
        self._open_timeout = open_timeout
        self._canvas = AsyncCanvas(url, **httpx_args)
        self._state: LiveState | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()
        self._callbacks: list[Callable[[Placement], object]] = []
        self._policy_callbacks: list[Callable[[Policy], object]] = []
        self._subscriptions: weakref.WeakSet[Placements] = weakref.WeakSet()
        self._attempt = 0
        self._failure: BaseException | None = None
        self.closed = False
        self.connected = False
        """Whether the websocket is open and past its ``hello``."""
        self.online: int | None = None
        """People online, as the server last said."""
        self.policy: Policy | None = None
        """The moderators' policy, when the server sent it (frozen or protected areas)."""
        self.reconnects = 0
        """How often the stream came back (a ``hello`` after the first one)."""
        self.resyncs = 0
        """How often the server said ``resync`` and the board was fetched again."""
        self.gaps = 0
        """How often a frame skipped seqs (the stream was then resumed from :attr:`seq`);
        a correct server never causes one."""

    # -- the state ---------------------------------------------------------------------

    @property
    def _live(self) -> LiveState:
        if self._state is None:
            raise RuntimeError("the live board is not started: use `async with LiveBoard(url)`")
        return self._state

    @property
    def colors(self) -> Colors:
        """The board, ``colors[y, x]`` a palette index; updated in place."""
        return self._live.colors

    @property
    def seq(self) -> int:
        """The last placement applied to :attr:`colors`."""
        return self._live.seq

    @property
    def board_id(self) -> str | None:
        """The board :attr:`seq` belongs to."""
        return self._live.board_id

    @property
    def board(self) -> Snapshot:
        """A copy of the board as it is now, with its seq and board id."""
        return self._live.snapshot()

    # -- starting and stopping -----------------------------------------------------------

    async def __aenter__(self) -> LiveBoard:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Fetch the board and connect; returns once the stream is live (raises if the
        first fetch or connection fails)."""
        try:
            self._state = LiveState(await self._canvas.board())
            self._first = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name=f"LiveBoard({self.url})")
            await self._first
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Disconnect; iterators end, waiters raise."""
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._canvas.aclose()
        self.connected = False
        for sub in list(self._subscriptions):
            sub._queue.put_nowait(None)
        self._notify()

    # -- what users wait on ----------------------------------------------------------------

    def on_placement(self, callback: Callable[[Placement], object]) -> Callable[[], None]:
        """Call ``callback(placement)`` for each placement applied from now on; returns a
        function that stops it. A callback that raises is logged and kept."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def on_policy(self, callback: Callable[[Policy], object]) -> Callable[[], None]:
        """Call ``callback(policy)`` whenever the server sends the moderators' policy (on a
        change, and on connecting while the canvas is frozen or has protected areas);
        returns a function that stops it."""
        self._policy_callbacks.append(callback)
        return lambda: self._policy_callbacks.remove(callback)

    def placements(self) -> Placements:
        """An async iterator of the placements applied from now on."""
        return Placements(self)

    def __aiter__(self) -> Placements:
        return self.placements()

    async def wait_for(
        self, seq: int, *, board_id: str | None = None, timeout: float | None = None
    ) -> Snapshot:
        """Wait until :attr:`seq` is at least ``seq`` (and the board is ``board_id``, if
        given); the board then."""
        async with asyncio.timeout(timeout):
            while self._live.seq < seq or (board_id is not None and self.board_id != board_id):
                if self.closed:
                    self._raise_failure()
                    raise RuntimeError("the live board is closed")
                await self._changed.wait()
        return self.board

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError("the live board stopped") from self._failure

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _publish(self, placements: list[Placement]) -> None:
        self._notify()
        for sub in list(self._subscriptions):
            for p in placements:
                sub._queue.put_nowait(p)
        for callback in list(self._callbacks):
            for p in placements:
                try:
                    callback(p)
                except Exception:
                    log.exception("openplace.client: a placement callback failed")

    # -- the I/O -------------------------------------------------------------------------

    def _ws_url(self) -> str:
        state = self._live
        url = f"{self._canvas._api.ws_url}?since={state.seq}"
        if state.board_id is not None:
            url += "&board=" + quote(state.board_id, safe="")
        return url

    async def _run(self) -> None:
        expect: Resync | None = None
        last_resync = -1e9
        try:
            while True:
                delay: float | None = None
                try:
                    if expect is not None:
                        await self._reload(expect)
                        expect = None
                    code = await self._listen()
                    if code == CLOSE_TOO_SLOW:
                        delay = random.random() * 0.1
                except Resync as resync:
                    log.info("openplace.client: %s", resync)
                    self.resyncs += 1
                    expect = resync
                    now = time.monotonic()
                    if now - last_resync > 5:  # at once, unless it keeps happening
                        delay = 0
                    last_resync = now
                except Gap as gap:
                    log.warning("openplace.client: %s; resuming", gap)
                    self.gaps += 1
                    delay = random.random() * 0.1
                except RETRYABLE as exc:
                    if self._first is not None and not self._first.done():
                        self._first.set_exception(exc)
                        return
                    log.info("openplace.client: %r; reconnecting", exc)
                self.connected = False
                if delay is None:
                    delay = backoff(self._attempt, *self.backoff)
                    self._attempt += 1
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: waiters and iterators learn of it
            self._failure = exc
            if self._first is not None and not self._first.done():
                self._first.set_exception(exc)
            self.closed = True
            for sub in list(self._subscriptions):
                sub._queue.put_nowait(None)
            self._notify()
            raise

    async def _reload(self, expect: Resync) -> None:
        """Fetch the board after a resync. A board older than the resync said (an HTTP
        cache may hold one from before a restore) is fetched again past the caches, a few
        times; then the server's answer is taken as it is."""
        snapshot = await self._canvas.board()
        pause = 0.1
        for _ in range(RESYNC_REFETCHES):
            if (expect.board_id is None or snapshot.board_id == expect.board_id) and (
                snapshot.seq >= expect.head
            ):
                break
            await asyncio.sleep(pause)
            pause *= 2
            snapshot = await self._canvas.board(fresh=True)
        self._live.load(snapshot)
        self._notify()

    async def _listen(self) -> int | None:
        """One connection, until it closes; its close code."""
        ping_interval, ping_timeout = self._ping
        state = self._live
        async with connect(
            self._ws_url(),
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            open_timeout=self._open_timeout,
            close_timeout=1,
            max_size=MAX_MESSAGE_BYTES,
        ) as ws:
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        placements = state.frame(message)
                        if placements:
                            self._publish(placements)
                        continue
                    control = state.control(message)
                    if isinstance(control, Hello):
                        self._hello()
                    elif isinstance(control, Online):
                        self.online = control.count
                    elif isinstance(control, Policy):
                        self.policy = control
                        self._policy_changed(control)
            except ConnectionClosed:
                pass
            return _close_code(ws)

    def _policy_changed(self, policy: Policy) -> None:
        self._notify()
        for callback in list(self._policy_callbacks):
            try:
                callback(policy)
            except Exception:
                log.exception("openplace.client: a policy callback failed")

    def _hello(self) -> None:
        self.connected = True
        self._attempt = 0
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        else:
            self.reconnects += 1


def _close_code(ws: ClientConnection) -> int | None:
    return ws.close_code
