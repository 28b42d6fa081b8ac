"""The lean websocket server of realtime processes, on an embedded store as its feed."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from harness.servers import free_port
from websockets.asyncio.client import connect

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.distributed.websocket_server import serve
from openplace.embedded.store import EmbeddedStore
from openplace.realtime.hub import Hub
from openplace.realtime.process import build_hub
from openplace.realtime.transport import TransportSubscriber
from tests.test_realtime import StreamClient


class Lean:
    def __init__(self, store: EmbeddedStore, hub: Hub, port: int) -> None:
        self.store, self.hub, self.port = store, hub, port
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    async def place(self, n: int, user: str = "u") -> None:
        await asyncio.gather(
            *[self.store.place(f"{user}{i}", i % 4000, i % 16, "127.0.0.1") for i in range(n)]
        )


async def start_lean(tmp_path: Path, **overrides: Any) -> tuple[Lean, asyncio.Server]:
    settings = Settings(data_dir=tmp_path, secret="x", width=100, height=80, **overrides)
    store = EmbeddedStore(tmp_path / "db.sqlite3", Geometry(100, 80), 0)
    await store.open()
    hub = build_hub(settings, store)
    await hub.start()
    port = free_port()
    server = await serve(
        hub,
        "127.0.0.1",
        port,
        max_message=settings.ws_max_message_bytes,
        trusted_proxies=settings.trusted_proxies,
    )
    return Lean(store, hub, port), server


@pytest.fixture
async def lean(tmp_path: Path) -> AsyncIterator[Lean]:
    lean_, server = await start_lean(tmp_path)
    yield lean_
    server.close()
    lean_.hub.stop()
    await lean_.store.close()


async def test_stream_and_resume(lean: Lean) -> None:
    await lean.place(10)
    async with connect(lean.ws_url + "?since=3") as ws:
        s = StreamClient(ws)
        s.last_seq = 3
        assert (await s.control("hello"))["head"] == 10
        await s.until(10)
        await lean.place(5, "v")
        await s.until(15)
        assert sorted(s.placements) == list(range(4, 16))
        assert (await s.control("online"))["count"] == 1


async def test_ping_pong_and_bad_messages(lean: Lean) -> None:
    async with connect(lean.ws_url) as ws:
        s = StreamClient(ws)
        await ws.send(json.dumps({"type": "ping", "id": 3}))
        assert (await s.control("pong"))["id"] == 3
        await ws.send(b"\x00")
        assert (await s.control("error"))["error"] == "bad_message"
        await ws.send("nonsense")
        assert (await s.control("error"))["error"] == "bad_message"
        pong = await ws.ping()  # websocket-level pings are answered too
        await asyncio.wait_for(pong, 5)


@pytest.mark.parametrize("query,code", [("since=x", "bad_since"), ("since=-2", "bad_since"),
                                        ("board=" + "b" * 70, "bad_board")])  # fmt: skip
async def test_bad_queries_are_refused_with_json(lean: Lean, query: str, code: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with connect(lean.ws_url + "?" + query):
            pass
    assert exc.value.response.status_code == 400
    assert json.loads(exc.value.response.body)["error"] == code


async def test_health_and_unknown_paths(lean: Lean) -> None:
    await lean.place(2)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{lean.port}/healthz")
        assert r.status_code == 200 and r.json()["seq"] == 2
        r = await c.get(f"http://127.0.0.1:{lean.port}/elsewhere")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await c.get(f"http://127.0.0.1:{lean.port}/ws")  # not an upgrade
        assert r.status_code == 426


async def test_oversized_client_message_closes_with_1009(lean: Lean) -> None:
    async with connect(lean.ws_url) as ws:
        await ws.send("x" * 5000)
        with pytest.raises(websockets.ConnectionClosed) as exc:
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    await asyncio.sleep(0.05)
    assert not lean.hub.subscribers and not lean.hub._per_ip  # slot given back


async def test_connections_per_ip_are_limited(tmp_path: Path) -> None:
    lean_, server = await start_lean(tmp_path, ws_max_connections_per_ip=2)
    try:
        async with connect(lean_.ws_url) as a, connect(lean_.ws_url) as b:
            await a.recv(), await b.recv()
            with pytest.raises(websockets.InvalidStatus) as exc:
                async with connect(lean_.ws_url):
                    pass
            assert exc.value.response.status_code == 429
        await asyncio.sleep(0.05)
        async with connect(lean_.ws_url) as c:
            assert json.loads(await c.recv())["type"] == "hello"
    finally:
        server.close()
        lean_.hub.stop()
        await lean_.store.close()


async def test_slow_client_is_dropped_with_4008(tmp_path: Path) -> None:
    lean_, server = await start_lean(tmp_path, ws_send_buffer_bytes=4000)
    try:
        sock = socket.create_connection(("127.0.0.1", lean_.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow = await connect(lean_.ws_url + "?since=0", sock=sock, max_queue=1)
        slow.transport.pause_reading()
        (sub,) = lean_.hub.subscribers
        assert isinstance(sub, TransportSubscriber)
        sub.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with connect(lean_.ws_url + "?since=0") as ws:
            fast = StreamClient(ws)
            for round_ in range(60):
                await lean_.place(200, f"r{round_}-")
                await fast.until(200 * (round_ + 1))
                if sub.closed:
                    break
            assert sub.closed and sub.close_reason == "too slow"
            assert sorted(fast.placements) == list(range(1, fast.last_seq + 1))
        slow.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as exc:
            async with asyncio.timeout(10):
                while True:
                    await slow.recv()
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 4008
    finally:
        server.close()
        lean_.hub.stop()
        await lean_.store.close()


async def test_clients_behind_the_local_proxy_are_counted_by_forwarded_address(
    tmp_path: Path,
) -> None:
    """Behind nginx every connection comes from 127.0.0.1; the limit is per client."""
    lean_, server = await start_lean(tmp_path, ws_max_connections_per_ip=2)

    def via(addr: str) -> connect:
        return connect(lean_.ws_url, additional_headers={"X-Forwarded-For": f"203.0.113.9, {addr}"})

    try:
        async with via("198.51.100.1") as a, via("198.51.100.1") as b, via("198.51.100.2") as c:
            await a.recv(), await b.recv(), await c.recv()
            with pytest.raises(websockets.InvalidStatus) as exc:
                async with via("198.51.100.1"):
                    pass
            assert exc.value.response.status_code == 429
    finally:
        server.close()
        lean_.hub.stop()
        await lean_.store.close()


def test_forwarded_address_is_believed_only_from_trusted_proxies() -> None:
    from openplace.realtime.session import client_address, trusted_hosts

    trusted = trusted_hosts("127.0.0.1")
    assert client_address("127.0.0.1", "1.2.3.4, 5.6.7.8", trusted) == "5.6.7.8"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("9.9.9.9", "5.6.7.8", trusted) == "9.9.9.9"  # spoofing
    # a network of proxies (an ingress controller's pods), as for the API
    pods = trusted_hosts("10.0.0.0/8")
    assert client_address("10.2.3.4", "198.51.100.7, 10.9.9.9", pods) == "198.51.100.7"
    assert client_address("198.51.100.7", "10.2.3.4", pods) == "198.51.100.7"


async def test_stopping_does_not_wait_forever_for_a_task_that_ignores_its_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A realtime process told to stop cancels its background tasks. One that swallows
    the cancellation (a Redis client waiting on a stuck connection was seen to) is left
    behind after the timeout, named in the log, so the process still stops."""
    from openplace.realtime.process import stop_tasks

    swallowing = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not swallowing:
                    raise

    async def polite() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"),
             asyncio.create_task(polite(), name="polite")]  # fmt: skip
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="openplace.realtime.process"):
        await stop_tasks(tasks, timeout=0.2)
    assert tasks[1].cancelled() and not tasks[0].done()
    assert "stopping without waiting for stubborn" in caplog.text
    await stop_tasks([], timeout=0.2)  # nothing to stop: returns at once
    swallowing = False  # the test's own cleanup
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
