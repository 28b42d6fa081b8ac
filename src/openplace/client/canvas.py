"""The HTTP clients: :class:`AsyncCanvas` (on ``httpx.AsyncClient``) and :class:`Canvas`
(on ``httpx.Client``). Both are thin shells around :class:`~openplace.client.api.Api`,
which builds every request and reads every answer."""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from openplace.client.api import Api, Call
from openplace.client.models import (
    CanvasInfo,
    Me,
    PixelInfo,
    PixelPlacement,
    Placed,
    Placement,
    Policy,
    Session,
    Snapshot,
)

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0  # a placement may wait up to 10 s to be confirmed durable


class _Base:
    def __init__(self, url: str, token: str | None = None) -> None:
        self._api = Api(url, token)

    @property
    def url(self) -> str:
        """The site's root, e.g. ``http://127.0.0.1:8000``."""
        return self._api.url

    @property
    def token(self) -> str | None:
        """The session token in use (from :meth:`session`, or given); save it to come back
        as the same user."""
        return self._api.token

    @property
    def user_id(self) -> str | None:
        """The user of this client's token: read from a token given to the constructor,
        else from :meth:`session` (``None`` before a token is known)."""
        return self._api.user_id


class AsyncCanvas(_Base):
    """An asyncio client of one canvas::

        async with AsyncCanvas("http://127.0.0.1:8000") as canvas:
            placed = await canvas.place(3, 2, 5)  # makes a session first if needed

    Refusals raise :class:`~openplace.client.CanvasError` subclasses. Extra keyword
    arguments go to ``httpx.AsyncClient``.
    """

    def __init__(self, url: str, token: str | None = None, **httpx_args: Any) -> None:
        super().__init__(url, token)
        httpx_args.setdefault("timeout", DEFAULT_TIMEOUT)
        self._http = httpx.AsyncClient(**httpx_args)

    async def __aenter__(self) -> AsyncCanvas:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        if call.auth and self._api.token is None:
            await self.session()
        if call.geometry and self._api.canvas is None:
            await self.info()
        response = await self._http.send(self._api.request(call))
        return self._api.answer(call, response)

    async def session(self) -> Session:
        """A new anonymous user (``POST /api/session``); its token is used from now on."""
        return await self._send(self._api.session())

    async def info(self) -> CanvasInfo:
        """The board's size, palette and cooldown (``GET /api/canvas``)."""
        return await self._send(self._api.info())

    async def place(self, x: int, y: int, color: int) -> Placed:
        """Place colour ``color`` (a palette index) at (x, y), once it is durable."""
        return await self._send(self._api.place(x, y, color))

    async def board(
        self, at: datetime | str | None = None, seq: int | None = None, *, fresh: bool = False
    ) -> Snapshot:
        """The board now, or after placement ``seq``, or at time ``at`` (a datetime, naive
        meaning UTC, or an ISO string). ``fresh`` asks past HTTP caches."""
        return await self._send(self._api.board(at, seq, fresh))

    async def pixel(self, x: int, y: int) -> PixelInfo:
        """Who placed pixel (x, y) last, and when."""
        return await self._send(self._api.pixel(x, y))

    async def pixel_history(self, x: int, y: int, limit: int = 20) -> list[PixelPlacement]:
        """The newest ``limit`` (1..1000) placements on pixel (x, y), newest first."""
        return await self._send(self._api.pixel_history(x, y, limit))

    async def me(self) -> Me:
        """This user's last placement and when it may place next."""
        return await self._send(self._api.me())

    async def policy(self) -> Policy:
        """Whether the canvas is frozen, and its protected areas."""
        return await self._send(self._api.policy())

    async def history(self, from_seq: int = 1, to_seq: int | None = None) -> list[Placement]:
        """The placements ``from_seq .. to_seq`` (inclusive; ``None``: the newest), with
        their times, fetched page by page."""
        out: list[Placement] = []
        start: int | None = from_seq
        while start is not None:
            page = await self._send(self._api.history(start, to_seq))
            out += page.placements
            start = page.next
        return out


class Canvas(_Base):
    """The blocking client, with the same methods as :class:`AsyncCanvas`::

        with Canvas("http://127.0.0.1:8000") as canvas:
            print(canvas.board().seq)
    """

    def __init__(self, url: str, token: str | None = None, **httpx_args: Any) -> None:
        super().__init__(url, token)
        httpx_args.setdefault("timeout", DEFAULT_TIMEOUT)
        self._http = httpx.Client(**httpx_args)

    def __enter__(self) -> Canvas:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        if call.auth and self._api.token is None:
            self.session()
        if call.geometry and self._api.canvas is None:
            self.info()
        response = self._http.send(self._api.request(call))
        return self._api.answer(call, response)

    def session(self) -> Session:
        return self._send(self._api.session())

    def info(self) -> CanvasInfo:
        return self._send(self._api.info())

    def place(self, x: int, y: int, color: int) -> Placed:
        return self._send(self._api.place(x, y, color))

    def board(
        self, at: datetime | str | None = None, seq: int | None = None, *, fresh: bool = False
    ) -> Snapshot:
        return self._send(self._api.board(at, seq, fresh))

    def pixel(self, x: int, y: int) -> PixelInfo:
        return self._send(self._api.pixel(x, y))

    def pixel_history(self, x: int, y: int, limit: int = 20) -> list[PixelPlacement]:
        return self._send(self._api.pixel_history(x, y, limit))

    def me(self) -> Me:
        return self._send(self._api.me())

    def policy(self) -> Policy:
        return self._send(self._api.policy())

    def history(self, from_seq: int = 1, to_seq: int | None = None) -> list[Placement]:
        out: list[Placement] = []
        start: int | None = from_seq
        while start is not None:
            page = self._send(self._api.history(start, to_seq))
            out += page.placements
            start = page.next
        return out
