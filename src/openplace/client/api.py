"""The HTTP API without I/O: each method builds a :class:`Call` (the request to send and
how to read its answer); :mod:`openplace.client.canvas` sends it, sync or async.

This is the one place that knows paths, parameters and answer formats, so both clients
behave alike (the sans-I/O design of python-websockets and h11).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import orjson
from itsdangerous import BadPayload, URLSafeSerializer

from openplace.client.errors import error_from
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
    format_time,
    from_unix,
    parse_time,
)
from openplace.core.timeline import decode_history

T = TypeVar("T")
Params = dict[str, str | int]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reading of its answer. ``auth``: needs a token (the client
    makes a session first if it has none); ``geometry``: needs the board size (the client
    fetches :meth:`Api.info` first)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Params | None = None
    json: dict[str, Any] | None = None
    auth: bool = False
    geometry: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One answer of ``GET /api/history``; ``next`` is where the next page starts."""

    placements: list[Placement]
    next: int | None


def token_user(token: str) -> str | None:
    """The user id a session token names, read without checking its signature (only the
    server can; it refuses a forged one with 401). ``None`` if it names none."""
    payload = token.rpartition(".")[0]
    try:
        data = URLSafeSerializer("").load_payload(payload.encode("ascii"))
    except (BadPayload, UnicodeEncodeError):
        return None
    user = data.get("u") if isinstance(data, dict) else None
    return user if isinstance(user, str) else None


def _json(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


def _int_header(response: httpx.Response, name: str) -> int:
    value = response.headers.get(name)
    if value is None or not value.isdigit():
        raise ValueError(f"{response.request.url.path} answered without {name}")
    return int(value)


class Api:
    """The state a client keeps (its token, the canvas's size) and the calls it makes."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.user_id: str | None = None if token is None else token_user(token)
        self.canvas: CanvasInfo | None = None

    @property
    def ws_url(self) -> str:
        """The websocket's address: ``ws://`` (or ``wss://``) and ``/ws`` on the site."""
        if self.url.startswith("https://"):
            return "wss://" + self.url.removeprefix("https://") + "/ws"
        return "ws://" + self.url.removeprefix("http://") + "/ws"

    # -- sending and reading -----------------------------------------------------------

    def request(self, call: Call[Any]) -> httpx.Request:
        """The ``httpx.Request`` for ``call``."""
        headers = {"Authorization": f"Bearer {self.token}"} if call.auth and self.token else {}
        return httpx.Request(
            call.method, self.url + call.path, params=call.params, json=call.json,
            headers=headers,
        )  # fmt: skip

    def answer(self, call: Call[T], response: httpx.Response) -> T:
        """What ``call`` answered, or the typed :class:`~openplace.client.CanvasError`."""
        if not response.is_success:
            try:
                body = _json(response)
            except orjson.JSONDecodeError:
                body = None
            raise error_from(response.status_code, body, response.headers)
        return call.read(response)

    # -- the calls ---------------------------------------------------------------------

    def session(self) -> Call[Session]:
        def read(response: httpx.Response) -> Session:
            data = _json(response)
            self.token, self.user_id = data["token"], data["user_id"]
            return Session(data["token"], data["user_id"])

        return Call("POST", "/api/session", read)

    def info(self) -> Call[CanvasInfo]:
        def read(response: httpx.Response) -> CanvasInfo:
            data = _json(response)
            self.canvas = CanvasInfo(
                data["width"], data["height"], list(data["palette"]),
                float(data["cooldown_seconds"]),
            )  # fmt: skip
            return self.canvas

        return Call("GET", "/api/canvas", read)

    def place(self, x: int, y: int, color: int) -> Call[Placed]:
        def read(response: httpx.Response) -> Placed:
            data = _json(response)
            return Placed(data["seq"], parse_time(data.get("next_at")), x, y, color)

        body = {"x": x, "y": y, "color": color}
        return Call("POST", "/api/pixel", read, json=body, auth=True)

    def board(
        self, at: datetime | str | None = None, seq: int | None = None, fresh: bool = False
    ) -> Call[Snapshot]:
        params: Params = {}
        if seq is not None:
            params["seq"] = seq
        if at is not None:
            params["at"] = format_time(at)
        if fresh:  # past every cache (the bundled nginx skips its micro-cache)
            params["fresh"] = time.time_ns()

        def read(response: httpx.Response) -> Snapshot:
            assert self.canvas is not None
            seq = _int_header(response, "x-seq")
            board_id = response.headers.get("x-board-id")
            return Snapshot.from_packed(response.content, self.canvas.geometry, seq, board_id)

        return Call("GET", "/api/board", read, params=params or None, geometry=True)

    def pixel(self, x: int, y: int) -> Call[PixelInfo]:
        def read(response: httpx.Response) -> PixelInfo:
            d = _json(response)
            placed_at = parse_time(d.get("placed_at"))
            return PixelInfo(d["x"], d["y"], d["color"], d.get("user_id"), placed_at, d.get("seq"))

        return Call("GET", "/api/pixel", read, params={"x": x, "y": y})

    def pixel_history(self, x: int, y: int, limit: int) -> Call[list[PixelPlacement]]:
        def read(response: httpx.Response) -> list[PixelPlacement]:
            return [
                PixelPlacement(p["seq"], p["color"], p["user_id"], parse_time(p["placed_at"]))
                for p in _json(response)["placements"]
            ]

        params: Params = {"x": x, "y": y, "limit": limit}
        return Call("GET", "/api/pixel/history", read, params=params)

    def me(self) -> Call[Me]:
        def read(response: httpx.Response) -> Me:
            d = _json(response)
            self.user_id = d["user_id"]
            last, after = parse_time(d.get("last_placed_at")), parse_time(d.get("next_at"))
            return Me(d["user_id"], last, after)

        return Call("GET", "/api/me", read, auth=True)

    def policy(self) -> Call[Policy]:
        return Call("GET", "/api/policy", lambda r: Policy.from_json(_json(r)))

    def history(self, from_seq: int, to_seq: int | None) -> Call[HistoryPage]:
        params: Params = {"from": from_seq}
        if to_seq is not None:
            params["to"] = to_seq

        def read(response: httpx.Response) -> HistoryPage:
            assert self.canvas is not None
            log = decode_history(response.content)
            width = self.canvas.width
            assert log.times is not None
            rows = zip(log.indexes.tolist(), log.colors.tolist(), log.times.tolist(), strict=True)
            first = log.after + 1
            placements = [
                Placement(first + j, i % width, i // width, c, from_unix(t))
                for j, (i, c, t) in enumerate(rows)
            ]
            after = response.headers.get("x-next")
            return HistoryPage(placements, int(after) if after and after.isdigit() else None)

        return Call("GET", "/api/history", read, params=params, geometry=True)
