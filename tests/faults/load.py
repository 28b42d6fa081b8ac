"""The load: writers placing distinct pixels, and websocket clients following the board.

Writers share one counter of pixels, so every placement is on a pixel never used
before, with a colour from 1 to 15: the log can then be checked exactly (a pixel in it
twice was placed twice; a pixel missing from it was lost).

A :class:`Follower` is the Python client's :class:`~openplace.client.LiveBoard`, a client
as ``docs/protocol.md`` describes one: it fetches the board (through nginx's cache, so
possibly a little stale), follows ``/ws?since=&board=``, reconnects from its last seq
after a gap or a dropped connection, and after ``resync`` reloads the board, refusing
one older than the resync names (``?fresh=``), as the bundled web client does. The
check that every follower ends equal to the server's board is so also a check of the
client library under faults.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from openplace.auth.tokens import Identity, TokenSigner
from openplace.client import LiveBoard, Placement
from openplace.client.live import RETRYABLE
from openplace.core.board import Geometry
from tests.faults.history import History

SECRET = "test-secret"
NEVER = 1 << 62  # a seq no run reaches


class Writers:
    """``count`` users placing one pixel after another through ``url`` until stopped.

    They speak raw HTTP, not :class:`openplace.client.AsyncCanvas`: the history records
    each answer as it came (status and body, a 200 without a seq included) to classify it,
    where the client would turn it into a :class:`~openplace.client.Placed` or an error.
    """

    def __init__(
        self, url: str, geometry: Geometry, history: History, count: int, seed: int,
        timeout: float,
    ) -> None:  # fmt: skip
        self.url = url
        self.geometry = geometry
        self.history = history
        self.count = count
        self.seed = seed
        self.timeout = timeout
        self.stop = asyncio.Event()
        self.exhausted = False  # every pixel of the board was used
        self._pixels: Iterator[int] = iter(range(geometry.pixels))
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        limits = httpx.Limits(max_connections=self.count + 4, max_keepalive_connections=self.count)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, limits=limits)
        self._tasks = [asyncio.create_task(self._write(k)) for k in range(self.count)]

    async def finish(self) -> None:
        """Stop placing; wait for the requests in flight (each bounded by the timeout)."""
        self.stop.set()
        await asyncio.gather(*self._tasks)
        if self._http is not None:
            await self._http.aclose()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _write(self, k: int) -> None:
        http = self._http
        assert http is not None
        rng = random.Random(f"{self.seed}:{k}")
        headers = {"Authorization": "Bearer " + TokenSigner(SECRET).issue(Identity(f"fw{k}"))}
        while not self.stop.is_set():
            index = next(self._pixels, None)
            if index is None:
                self.exhausted = True
                return
            color = rng.randrange(1, 16)
            x, y = self.geometry.xy(index)
            op = self.history.invoke(k, index, color)
            try:
                r = await http.post(
                    "/api/pixel", json={"x": x, "y": y, "color": color}, headers=headers
                )
            except httpx.ConnectError as exc:  # nothing was sent
                self.history.fail(op, f"connect: {exc}")
            except httpx.HTTPError as exc:
                self.history.unknown(op, f"{type(exc).__name__}: {exc}")
            else:
                self.history.answer(op, r.status_code, r.content)
            if op.outcome != "ok":
                await asyncio.sleep(0.05)  # as a user would: wait a moment, try a new pixel


@dataclass
class Follower:
    """A websocket client keeping a board: :class:`openplace.client.LiveBoard` through
    nginx, with pings every 2 s (a paused realtime process is noticed in 4 s) and a
    backoff of 0.1 s doubling to 2 s; see the module docstring."""

    name: str
    url: str  # nginx, http://
    live: LiveBoard | None = None  # once its first fetch and connection succeeded
    starts: int = 0  # attempts at that first fetch and connection
    placements: int = 0  # applied from the stream
    errors: list[str] = field(default_factory=list)

    @property
    def board_id(self) -> str:
        return (self.live.board_id or "") if self.live is not None else ""

    @property
    def last(self) -> int:
        return self.live.seq if self.live is not None else 0

    @property
    def board_loads(self) -> int:
        """Fetches of the whole board: the first, then one after each resync."""
        return 0 if self.live is None else 1 + self.live.resyncs

    @property
    def resyncs(self) -> int:
        return 0 if self.live is None else self.live.resyncs

    @property
    def gaps(self) -> int:
        """Frames that skipped seqs: the server broke its promise of gapless streams."""
        return 0 if self.live is None else self.live.gaps

    def data(self) -> bytes | None:
        """The board it holds, in the bytes of ``GET /api/board``."""
        return self.live.board.packed() if self.live is not None else None

    def summary(self) -> str:
        live = self.live
        if live is None:
            return f"never started ({self.starts} attempts)"
        return (f"{self.board_loads} board loads, {live.reconnects} reconnects, "
                f"{live.resyncs} resyncs, {live.gaps} gaps, "
                f"{self.placements} placements applied")  # fmt: skip

    async def run(self) -> None:
        """Follow until cancelled. Raises if the live board stopped on a bug: the run
        reports the follower as crashed."""
        delay = 0.1
        while True:
            live = LiveBoard(self.url, backoff=(0.1, 2.0), ping_interval=2, ping_timeout=4,
                             open_timeout=5, timeout=10)  # fmt: skip
            self.starts += 1
            try:
                await live.start()
                break
            except RETRYABLE as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)
        self.live = live
        try:
            live.on_placement(self._count)
            await live.wait_for(NEVER)  # returns never; raises if the live board failed
        finally:
            await live.aclose()

    def _count(self, placement: Placement) -> None:
        self.placements += 1
