"""The load: writers placing distinct pixels, and websocket clients following the board.

Writers share one counter of pixels, so every placement is on a pixel never used
before, with a colour from 1 to 15: the log can then be checked exactly (a pixel in it
twice was placed twice; a pixel missing from it was lost).

A :class:`Follower` is a client as ``docs/protocol.md`` describes one: it fetches the
board (through nginx's cache, so possibly a little stale), follows ``/ws?since=&board=``,
reconnects from its last seq after a gap or a dropped connection, and after ``resync``
reloads the board, refusing one older than the resync names (``?fresh=``), as the
bundled web client does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from openplace.auth.tokens import Identity, TokenSigner
from openplace.core.board import Board, Geometry
from openplace.core.wire import decode_frame
from tests.faults.history import History

SECRET = "test-secret"


class Writers:
    """``count`` users placing one pixel after another through ``url`` until stopped."""

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
    """A websocket client keeping a board; see the module docstring."""

    name: str
    url: str  # nginx, http://
    geometry: Geometry
    board: Board | None = None
    board_id: str = ""
    last: int = 0
    # what it went through
    board_loads: int = 0
    connects: int = 0
    resyncs: int = 0
    gaps: int = 0
    frames: int = 0
    errors: list[str] = field(default_factory=list)
    _fresh: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self) -> None:
        """Follow until cancelled."""
        backoff = 0.1
        want: tuple[str, int] | None = None  # board id and head named by a resync
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            while True:
                at_once = False
                try:
                    if self.board is None:
                        await self._load(http, want)
                        want = None
                    ws_url = self.url.replace("http", "ws", 1) + "/ws"
                    query = f"?since={self.last}&board={self.board_id}"
                    async with connect(ws_url + query, max_size=None, open_timeout=5,
                                       ping_interval=2, ping_timeout=4) as ws:  # fmt: skip
                        self.connects += 1
                        async for message in ws:
                            if isinstance(message, str):
                                control = json.loads(message)
                                if control["type"] == "hello":
                                    backoff = 0.1
                                elif control["type"] == "resync":
                                    self.resyncs += 1
                                    want = (str(control["board"]), int(control["head"]))
                                    self.board = None
                                    at_once = True
                                    break
                                continue
                            if not self._apply(message):
                                at_once = True  # a gap: resume from what we have
                                break
                except (OSError, WebSocketException, TimeoutError, httpx.HTTPError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if not at_once:
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, 2.0)

    def _apply(self, message: bytes) -> bool:
        """Apply one batch frame; False on a gap."""
        board = self.board
        assert board is not None
        first, items = decode_frame(message)
        self.frames += 1
        if first > self.last + 1:
            self.gaps += 1
            return False
        for j, (index, color) in enumerate(items):
            if first + j > self.last:
                board.set(index, color)
        self.last = max(self.last, first + len(items) - 1)
        return True

    async def _load(self, http: httpx.AsyncClient, want: tuple[str, int] | None) -> None:
        """GET /api/board; after a resync, refuse a board older than it names (up to 5
        times, then take what the server gives: it is the authority)."""
        delay = 0.1
        refused = 0
        fresh = want is not None
        while True:
            params = {"fresh": f"{self.name}-{next(self._fresh)}"} if fresh else {}
            r = await http.get("/api/board", params=params)
            if r.status_code == 200:
                board_id, seq = r.headers["x-board-id"], int(r.headers["x-seq"])
                older = want is not None and (board_id != want[0] or seq < want[1])
                if not older or refused >= 5:
                    self.board = Board(self.geometry, r.content)
                    self.board_id, self.last = board_id, seq
                    self.board_loads += 1
                    return
                refused += 1
            fresh = True  # after a refusal or an error, go past the cache
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
