"""The live stream: order, gaplessness, resume, resync, limits, slow clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from openplace.config import Settings
from openplace.core.wire import decode_frame
from openplace.realtime import transport
from openplace.realtime.transport import TransportSubscriber
from openplace.state import state_of
from tests.conftest import LiveServer, ServerFactory, auth, mint_token


class StreamClient:
    """Reads the stream; collects placements by seq and control messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.placements: dict[int, tuple[int, int]] = {}
        self.controls: list[dict[str, Any]] = []
        self.last_seq = 0

    async def read_one(self, timeout: float = 5) -> None:
        msg = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(msg, bytes):
            first, items = decode_frame(msg)
            assert first == self.last_seq + 1, f"gap: expected {self.last_seq + 1}, got {first}"
            for k, item in enumerate(items):
                self.placements[first + k] = item
            self.last_seq = first + len(items) - 1
        else:
            self.controls.append(json.loads(msg))

    async def until(self, seq: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while self.last_seq < seq:
                await self.read_one()

    async def control(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for c in self.controls:
                    if c["type"] == kind:
                        self.controls.remove(c)
                        return c
                await self.read_one()


async def place_many(client: httpx.AsyncClient, n: int, offset: int = 0) -> list[int]:
    tokens = [mint_token() for _ in range(n)]
    rs = await asyncio.gather(
        *[
            client.post(
                "/api/pixel",
                json={
                    "x": (offset + i) % 100,
                    "y": (offset + i) // 100,
                    "color": (offset + i) % 16,
                },
                headers=auth(t),
            )
            for i, t in enumerate(tokens)
        ]
    )
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    return [r.json()["seq"] for r in rs]


async def test_live_placements_arrive_in_order_without_gaps(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with connect(server.ws_url + "?since=0") as ws:
        s = StreamClient(ws)
        hello = await s.control("hello")
        assert hello["head"] == 0
        await place_many(client, 30)
        await s.until(30)
        assert sorted(s.placements) == list(range(1, 31))
        # What the stream says equals what the board says.
        board = (await client.get("/api/board")).content
        for index, color in s.placements.values():
            assert (board[index // 2] >> 4 if index % 2 == 0 else board[index // 2] & 15) == color


async def test_resume_replays_exactly_what_was_missed(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    await place_many(client, 10)
    async with connect(server.ws_url + "?since=4") as ws:
        s = StreamClient(ws)
        s.last_seq = 4
        await s.until(10)
        assert sorted(s.placements) == list(range(5, 11))
        await place_many(client, 3, offset=50)
        await s.until(13)
    # Reconnect from the middle: no gap, no duplicates.
    async with connect(server.ws_url + "?since=11") as ws:
        s2 = StreamClient(ws)
        s2.last_seq = 11
        await s2.until(13)
        assert sorted(s2.placements) == [12, 13]
        assert s2.placements == {k: v for k, v in s.placements.items() if k > 11}


async def test_without_since_only_new_placements_arrive(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    await place_many(client, 5)
    async with connect(server.ws_url) as ws:
        s = StreamClient(ws)
        hello = await s.control("hello")
        s.last_seq = hello["head"]
        assert hello["head"] == 5
        await place_many(client, 2, offset=10)
        await s.until(7)
        assert sorted(s.placements) == [6, 7]


async def test_since_in_the_future_gets_resync(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    await place_many(client, 2)
    async with connect(server.ws_url + "?since=999") as ws:
        s = StreamClient(ws)
        resync = await s.control("resync")
        assert resync["head"] == 2


async def test_too_far_behind_gets_resync(
    server_factory: ServerFactory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(replay_limit=5))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        await place_many(c, 8)
        async with connect(srv.ws_url + "?since=1") as ws:
            s = StreamClient(ws)
            assert (await s.control("resync"))["head"] == 8
        async with connect(srv.ws_url + "?since=3") as ws:  # exactly at the limit: replayed
            s = StreamClient(ws)
            s.last_seq = 3
            await s.until(8)
            assert not any(c["type"] == "resync" for c in s.controls)


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=1.5", "since=+5",
                                   "since=1&board=" + "x" * 65])  # fmt: skip
async def test_bad_query_is_refused_with_a_json_error(server: LiveServer, query: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with connect(server.ws_url + "?" + query) as ws:
            await ws.recv()
    assert exc.value.response.status_code == 400
    assert json.loads(exc.value.response.body)["error"] in {"bad_since", "bad_board"}


async def test_stale_board_id_gets_resync(server: LiveServer, client: httpx.AsyncClient) -> None:
    await place_many(client, 3)
    board = (await client.get("/api/board")).headers["x-board-id"]
    async with connect(server.ws_url + f"?since=3&board={board}") as ws:
        s = StreamClient(ws)
        assert (await s.control("hello"))["board"] == board
        await place_many(client, 1, offset=10)
        s.last_seq = 3
        await s.until(4)
        assert not any(c["type"] == "resync" for c in s.controls)
    async with connect(server.ws_url + "?since=3&board=someotherboard") as ws:
        s = StreamClient(ws)
        assert (await s.control("resync"))["board"] == board


async def test_ping_pong_and_bad_client_messages(server: LiveServer) -> None:
    async with connect(server.ws_url) as ws:
        s = StreamClient(ws)
        await ws.send(json.dumps({"type": "ping", "id": 7}))
        assert (await s.control("pong"))["id"] == 7
        await ws.send("not json")
        assert (await s.control("error"))["error"] == "bad_message"
        await ws.send(b"\x01\x02")
        assert (await s.control("error"))["error"] == "bad_message"
        await ws.send(json.dumps({"type": "ping"}))  # still served
        await s.control("pong")


async def test_oversized_client_frame_closes_connection(server: LiveServer) -> None:
    async with connect(server.ws_url) as ws:
        await ws.send("x" * 10_000)
        with pytest.raises(websockets.ConnectionClosed) as exc:
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009


async def test_online_count_follows_connections(server: LiveServer) -> None:
    async with connect(server.ws_url) as a:
        sa = StreamClient(a)
        assert (await sa.control("online"))["count"] == 1
        async with connect(server.ws_url) as b:
            sb = StreamClient(b)
            assert (await sb.control("online"))["count"] == 2
            while (await sa.control("online"))["count"] != 2:
                pass
        while (await sa.control("online"))["count"] != 1:
            pass


async def test_connections_per_ip_are_limited(
    server_factory: ServerFactory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(ws_max_connections_per_ip=2))
    async with connect(srv.ws_url) as a, connect(srv.ws_url) as b:
        await a.recv(), await b.recv()
        with pytest.raises(websockets.InvalidStatus) as exc:
            async with connect(srv.ws_url) as c:
                await c.recv()
        assert exc.value.response.status_code == 429
    async with connect(srv.ws_url) as d:  # slots are given back
        assert json.loads(await d.recv())["type"] == "hello"


async def test_slow_client_is_dropped_with_4008_and_others_keep_up(
    server_factory: ServerFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops reading fills its socket, then its buffer: it is dropped."""
    import socket

    # The close frame waits behind the backlog until the client reads again below; on a
    # busy machine that can be later than the 5 s after which the socket is aborted.
    monkeypatch.setattr(transport, "ABORT_AFTER_CLOSE_SECONDS", 120.0)

    srv: LiveServer = await server_factory(settings.with_(ws_send_buffer_bytes=4_000,
                                                          cooldown_seconds=0))  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow network
    # No keepalive pings: a client that does not read never sees the pong, and after
    # ping_timeout (20 s; a slow machine's run outlasts it) it would close by itself
    # with 1011 instead of receiving the server's 4008 (rcvd None).
    slow = await connect(srv.ws_url + "?since=0", sock=sock, max_queue=1, ping_interval=None)
    slow.transport.pause_reading()  # and a client that stopped reading
    (slow_sub,) = state_of(srv.app).hub.subscribers
    assert isinstance(slow_sub, TransportSubscriber)
    server_sock = slow_sub.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with (
        httpx.AsyncClient(base_url=srv.url, timeout=30) as c,
        connect(srv.ws_url + "?since=0") as ws,
    ):
        fast = StreamClient(ws)
        token, total = mint_token(), 0
        for round_ in range(40):
            rs = await asyncio.gather(*[
                c.post("/api/pixel", json={"x": i % 100, "y": round_ % 80, "color": i % 16},
                       headers=auth(token)) for i in range(50)
            ])  # fmt: skip
            total = max(r.json()["seq"] for r in rs)
            await fast.until(total)
            if slow_sub.closed:
                break
        assert slow_sub.closed and slow_sub.close_reason == "too slow"
        assert sorted(fast.placements) == list(range(1, total + 1))
        assert slow_sub not in state_of(srv.app).hub.subscribers
    slow.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as exc:
        async with asyncio.timeout(60):  # a bound, not a measure: a busy CI machine is slow
            while True:
                await slow.recv()
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 4008


async def test_connections_per_forwarded_address_are_limited(
    server_factory: ServerFactory, settings: Settings
) -> None:
    """Through a trusted proxy (here 127.0.0.1), the cap counts the forwarded client."""
    srv: LiveServer = await server_factory(settings.with_(ws_max_connections_per_ip=1))

    def via(address: str) -> Any:
        return connect(srv.ws_url, additional_headers={"X-Forwarded-For": address})

    async with via("198.51.100.7") as a, via("198.51.100.8") as b:
        await a.recv(), await b.recv()
        with pytest.raises(websockets.InvalidStatus) as exc:
            async with via("203.0.113.1, 198.51.100.7") as c:  # the proxy appended .7
                await c.recv()
        assert exc.value.response.status_code == 429
