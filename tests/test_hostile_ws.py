"""Hostile websocket clients, against both ``/ws`` servers: the embedded one (uvicorn
with ``WSProtocol`` and the ASGI endpoint) and the lean one of realtime processes.

Each test here failed before its fix. None measures time: waits are safety timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import websockets
from harness.servers import free_port
from websockets.asyncio.client import connect
from websockets.frames import Opcode
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.core.wire import decode_frame
from openplace.distributed.websocket_server import serve
from openplace.embedded.store import EmbeddedStore
from openplace.realtime.hub import Hub
from openplace.realtime.process import build_hub
from openplace.realtime.transport import TransportSubscriber
from openplace.state import state_of
from tests.conftest import LiveServer
from tests.test_realtime import StreamClient
from tests.wsraw import RawClient, frame, text, upgrade

KINDS = ["embedded", "lean"]


class Target:
    """One running ``/ws`` server with an embedded store to place on."""

    def __init__(self, kind: str, port: int, hub: Hub, store: EmbeddedStore) -> None:
        self.kind, self.port, self.hub, self.store = kind, port, hub, store
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self._placed = 0
        self._stop: Callable[[], Awaitable[None]] | None = None

    async def place(self, n: int) -> int:
        """``n`` placements by new users; the last seq."""
        base = self._placed
        self._placed += n
        done = await asyncio.gather(
            *[
                self.store.place(f"h{base + i}", (base + i) % 8000, i % 16, "127.0.0.1")
                for i in range(n)
            ]
        )
        return max(p.seq for p in done)

    async def stop(self) -> None:
        RawClient.abort_all()
        assert self._stop is not None
        await self._stop()


def _settings(tmp: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp, secret="test-secret", width=100, height=80,
                    cooldown_seconds=0, board_refresh_seconds=0, **overrides)  # fmt: skip


async def start_target(
    kind: str,
    tmp: Path,
    *,
    handshake_timeout: float = 10.0,
    trusted: str = "127.0.0.1",
    **overrides: Any,
) -> Target:
    settings = _settings(tmp, **overrides)
    if kind == "embedded":
        srv = await LiveServer(settings).start()
        state = state_of(srv.app)
        assert isinstance(state.store, EmbeddedStore)
        target = Target(kind, srv.port, state.hub, state.store)
        target._stop = srv.stop
        return target
    store = EmbeddedStore(tmp / "lean.sqlite3", Geometry(100, 80), 0)
    await store.open()
    hub = build_hub(settings, store)
    await hub.start()
    port = free_port()
    server = await serve(hub, "127.0.0.1", port, max_message=settings.ws_max_message_bytes,
                         max_handshake=settings.http_max_header_bytes,
                         handshake_timeout=handshake_timeout, trusted_proxies=trusted)  # fmt: skip
    target = Target(kind, port, hub, store)

    async def stop() -> None:
        server.close()
        hub.stop()
        await store.close()

    target._stop = stop
    return target


@pytest.fixture(params=KINDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    t = await start_target(request.param, tmp_path)
    yield t
    await t.stop()


class LogWatch(logging.Handler):
    """Records worth a look: errors and anything with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.fixture
def logwatch() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


async def only_subscriber(hub: Hub) -> TransportSubscriber:
    async with asyncio.timeout(10):
        while len(hub.subscribers) != 1:
            await asyncio.sleep(0.01)
    (sub,) = hub.subscribers
    assert isinstance(sub, TransportSubscriber)
    return sub


# -- protocol pings that are never read ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_unread_pongs_count_against_the_send_budget(kind: str, tmp_path: Path) -> None:
    """A client that pings and never reads is closed 4008 once its backlog is over the
    budget (before: every pong was buffered, 53 -> 389 MB in 40 s)."""
    budget = 64 * 1024
    t = await start_target(kind, tmp_path, ws_send_buffer_bytes=budget)
    try:
        c = await RawClient.open(t.port, rcvbuf=4096)
        await c.handshake()
        sub = await only_subscriber(t.hub)
        sub.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pings = frame(Opcode.PING.value, b"p" * 125) * 256
        sent = peak = 0
        while not sub.closed and sent < 32 * 1024 * 1024:  # 16x what closes it
            c.writer.write(pings)
            try:
                await asyncio.wait_for(c.writer.drain(), 10)
            except TimeoutError:
                break
            sent += len(pings)
            peak = max(peak, sub.transport.get_write_buffer_size())
        assert sub.closed and sub.close_reason == "too slow", f"{sent} bytes of pings"
        assert peak < budget + 512 * 1024
        peer = await c.until_closed(30)  # reading at last: the pongs, then 4008
        assert peer.close_code == 4008
    finally:
        await t.stop()


# -- the upgrade request ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "request_bytes",
    [upgrade("/ws?since=" + "1" * 9000), upgrade("/ws", extra=b"X-Big: " + b"a" * 9000 + b"\r\n")],
    ids=["request-line", "header-line"],
)
async def test_oversized_upgrade_is_answered_and_closed(
    kind: str, request_bytes: bytes, tmp_path: Path, logwatch: LogWatch
) -> None:
    """A line over 8 KiB gets an HTTP error at once (before: no answer, ever). The HTTP
    server's own header limit is raised, so that the websocket side is what answers."""
    t = await start_target(kind, tmp_path, http_max_header_bytes=64 * 1024)
    try:
        c = await RawClient.open(t.port)
        await c.send(request_bytes)
        peer = await c.until_closed()
        assert peer.status in (400, 414, 431), peer.head
        assert not t.hub._per_ip
        assert not logwatch.problems()
    finally:
        await t.stop()


async def test_lean_limits_the_whole_upgrade_request(tmp_path: Path) -> None:
    """Many header lines, each under 8 KiB, over ``http_max_header_bytes`` together: 431."""
    t = await start_target("lean", tmp_path)
    try:
        c = await RawClient.open(t.port)
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
        await c.send(upgrade(extra=many))
        peer = await c.until_closed()
        assert peer.status == 431 and json.loads(peer.body)["error"] == "headers_too_large"
    finally:
        await t.stop()


async def test_lean_counts_connections_per_address_from_accept(tmp_path: Path) -> None:
    """Connections that never finish their upgrade hold their address's slots (before:
    only completed handshakes were counted). A trusted proxy's connections are counted
    by the address they name, so from their handshake: not trusted here."""
    t = await start_target("lean", tmp_path, trusted="", ws_max_connections_per_ip=2)
    try:
        a, b = await RawClient.open(t.port), await RawClient.open(t.port)
        async with asyncio.timeout(10):
            while t.hub._per_ip.get("127.0.0.1") != 2:
                await asyncio.sleep(0.01)
        c = await RawClient.open(t.port)
        peer = await c.until_closed()
        assert peer.status == 429 and json.loads(peer.body)["error"] == "too_many_connections"
        a.abort()
        async with asyncio.timeout(10):
            while t.hub._per_ip.get("127.0.0.1") != 1:
                await asyncio.sleep(0.01)
        async with connect(t.ws_url) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        b.abort()
        async with asyncio.timeout(10):
            while t.hub._per_ip:
                await asyncio.sleep(0.01)
    finally:
        await t.stop()


async def test_lean_upgrade_must_arrive_in_time(tmp_path: Path) -> None:
    """A request trickled in (or never sent) gets 408 and is closed; its slot is freed."""
    t = await start_target("lean", tmp_path, handshake_timeout=0.2, trusted="")
    try:
        c = await RawClient.open(t.port)
        await c.send(upgrade()[:40])
        peer = await c.until_closed()
        assert peer.status == 408 and json.loads(peer.body)["error"] == "request_timeout"
        async with asyncio.timeout(10):
            while t.hub._per_ip:
                await asyncio.sleep(0.01)
    finally:
        await t.stop()


@pytest.mark.parametrize(
    "query,error",
    [
        ("since=" + "1" * 5000, "bad_since"),  # before: 500 (int max str digits)
        ("since=9223372036854775808", "bad_since"),
        ("since=%D9%A3", "bad_since"),  # a digit, but not an ASCII one
        ("since=1_0", "bad_since"),
        ("since=", "bad_since"),
        ("since=1&since=2", "bad_since"),
        ("board=a&board=b", "bad_board"),
        ("board=%00", "bad_board"),
        ("since=%FF", "bad_query"),
        ("&".join(f"k{i}=1" for i in range(40)), "bad_query"),
    ],
)
async def test_malformed_queries_get_400_json(
    target: Target, query: str, error: str, logwatch: LogWatch
) -> None:
    c = await RawClient.open(target.port)
    await c.send(upgrade("/ws?" + query))
    peer = await c.until_closed()
    assert peer.status == 400, peer.head
    assert json.loads(peer.body)["error"] == error
    assert not target.hub._per_ip and not logwatch.problems()


async def test_largest_since_is_accepted(target: Target) -> None:
    async with connect(target.ws_url + "?since=9223372036854775807") as ws:
        s = StreamClient(ws)
        assert (await s.control("resync"))["head"] == 0


# -- client messages -------------------------------------------------------------------


async def test_ping_ids_must_be_small_scalars(target: Target, logwatch: LogWatch) -> None:
    """A nested ``id`` gets an error and the connection stays (before: dropped without a
    close frame, and a traceback logged per message)."""
    async with connect(target.ws_url) as ws:
        s = StreamClient(ws)
        bad = ["[" * 300 + "]" * 300, '{"a": 1}', '"' + "x" * 65 + '"', "[1]"]
        for raw_id in bad:
            await ws.send('{"type": "ping", "id": ' + raw_id + "}")
            assert (await s.control("error"))["error"] == "bad_message"
        for good in [None, True, 1.5, -(2**63), 2**64 - 1, "x" * 64]:
            await ws.send(json.dumps({"type": "ping", "id": good}))
            assert (await s.control("pong"))["id"] == good
    assert not logwatch.problems()


async def test_fragmented_messages_are_reassembled(target: Target, logwatch: LogWatch) -> None:
    """The lean server answered a fragmented message from its first fragment."""
    async with connect(target.ws_url) as ws:
        s = StreamClient(ws)
        await ws.send(['{"type": ', '"ping", ', '"id": 7}'])
        pong = await s.control("pong")
        assert pong["id"] == 7 and not any(c["type"] == "error" for c in s.controls)
        await ws.send([b"\x00", b"\x01"])
        assert (await s.control("error"))["message"] == "binary frames not accepted"
        await ws.send(["x" * 600, "y" * 600])  # over 1 KiB in all
        with pytest.raises(websockets.ConnectionClosed) as exc:
            async with asyncio.timeout(10):
                while True:
                    await s.read_one()
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    assert not logwatch.problems()


@pytest.mark.parametrize("fragmented", [False, True])
async def test_invalid_utf8_closes_with_1007(
    target: Target, fragmented: bool, logwatch: LogWatch
) -> None:
    c = await RawClient.open(target.port)
    await c.handshake()
    if fragmented:  # a code point cut in two is fine; a bad one is not
        await c.send(text(b'{"id": "\xc3', fin=False) + frame(0, b'\xa9"}'))
        assert await c.until_text(lambda t: '"bad_message"' in t)
        await c.send(text(b"ok", fin=False) + frame(0, b"\xff"))
    else:
        await c.send(text(b"\xff\xfe"))
    peer = await c.until_closed()
    assert peer.close_code == 1007
    assert not logwatch.problems()


async def test_lean_health_answers_get_and_head_only(tmp_path: Path) -> None:
    t = await start_target("lean", tmp_path)
    try:
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            c = await RawClient.open(t.port)
            await c.send(f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            peer = await c.until_closed()
            assert peer.status == 405 and b"Allow: GET, HEAD" in peer.head, method
            assert json.loads(peer.body)["error"] == "method_not_allowed"
        c = await RawClient.open(t.port)
        await c.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = await c.until_closed()
        assert peer.status == 200 and peer.body == b"" and b"Content-Length: " in peer.head
        c = await RawClient.open(t.port)
        await c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        peer = await c.until_closed()
        assert peer.status == 200 and json.loads(peer.body)["status"] == "ok"
        c = await RawClient.open(t.port)
        await c.send(upgrade(method="POST"))
        assert (await c.until_closed()).status == 405
    finally:
        await t.stop()


# -- resources: thousands of clients that never read -----------------------------------


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture (the figures are the point of these tests)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


class Child:
    """``tests/ws_server_child.py`` in a process of its own."""

    def __init__(self, kind: str, tmp: Path, **env: object) -> None:
        self.port = free_port()
        self.stderr = tmp / "stderr.log"
        environ = {**os.environ, "OPENPLACE_DATA_DIR": str(tmp), "OPENPLACE_SECRET": "x",
                   "OPENPLACE_WIDTH": "100", "OPENPLACE_HEIGHT": "80",
                   "OPENPLACE_COOLDOWN_SECONDS": "0"}  # fmt: skip
        environ.update({k.upper() if k.startswith("child_") else f"OPENPLACE_{k.upper()}": str(v)
                        for k, v in env.items()})  # fmt: skip
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.ws_server_child", kind, str(self.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=Path(__file__).parent.parent, env=environ,
            )  # fmt: skip
        assert self._line() == "ready", self.stderr.read_text()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def stats(self) -> dict[str, int]:
        return cast(dict[str, int], json.loads(self.ask("stats")))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> str:
        """Stop it; what it wrote on stderr."""
        with contextlib.suppress(Exception):
            self.ask("quit")
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.stderr.read_text(errors="replace")


class Reader(threading.Thread):
    """A client that reads everything, checking that seqs arrive without a gap."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url + "?since=0"
        self.ws: SyncConnection | None = None
        self.connected = threading.Event()
        self.last = 0
        self.gaps: list[tuple[int, int]] = []

    def run(self) -> None:
        with (
            sync_connect(self.url, max_size=None, open_timeout=30) as ws,
            contextlib.suppress(websockets.ConnectionClosed),
        ):
            self.ws = ws
            self.connected.set()
            for message in ws:
                if isinstance(message, bytes):
                    first, items = decode_frame(message)
                    if first != self.last + 1:
                        self.gaps.append((self.last, first))
                    self.last = first + len(items) - 1


def _silent_client(port: int) -> socket.socket:
    """A websocket client that upgrades, then never reads (a small receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.parametrize("kind", KINDS)
def test_thousands_of_clients_that_never_read(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every placement reaches the client that reads, and the server's memory grows by
    at most the send budget per silent client (unbounded: every byte sent to them).
    ``OPENPLACE_TEST_SILENT_CLIENTS`` sets how many (2,000)."""
    n = int(os.environ.get("OPENPLACE_TEST_SILENT_CLIENTS", "2000"))
    rounds, per_round, budget = 50, 2000, 32 * 1024
    limits = {"ws_max_connections_per_ip": n + 10, "http_max_connections_per_ip": n + 100}
    child = Child(kind, tmp_path, ws_send_buffer_bytes=budget, child_sndbuf=4096, **limits)
    silent: list[socket.socket] = []
    reader: Reader | None = None
    try:
        started = child.rss()
        silent = [_silent_client(child.port) for _ in range(n)]
        reader = Reader(f"ws://127.0.0.1:{child.port}/ws")
        reader.start()
        assert reader.connected.wait(30)
        connected = peak = child.rss()
        head = 0
        for _ in range(rounds):
            head = int(child.ask(f"place {per_round}"))
            peak = max(peak, child.rss())
        deadline = time.monotonic() + 60
        while reader.last < head and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = child.stats()
        peak = max(peak, child.rss())
        assert reader.last == head and not reader.gaps, (reader.last, head, reader.gaps)
        # Clients still attached hold at most the budget plus the frame that crossed it.
        assert stats["largest"] <= budget + 5 * per_round + 1024, stats
        sent_each = head * 5
        # Generous (allocator slack, transients, the store's caches); unbounded would be
        # ``sent_each`` a client.
        bound = 32 * 2**20 + n * 3 * budget
        assert peak - connected < bound < n * sent_each, (peak - connected) / n
        mib, kib = 2**20, 1024
        _say(
            request.config,
            f"\n{kind}: {n} clients never reading, {head} placements "
            f"({sent_each // kib} KiB each); RSS {started / mib:.0f} MB at start, "
            f"{connected / mib:.0f} MB with them connected, peak {peak / mib:.0f} MB "
            f"(+{(peak - connected) / n / kib:.1f} KiB a client; budget {budget // kib} KiB); "
            f"still attached {stats['clients'] - 1}, backlog {stats['backlog'] // kib} KiB",
        )
    finally:
        if reader is not None and reader.ws is not None:
            reader.ws.close()
        for sock in silent:
            sock.close()
        errors = child.stop()
        assert "Traceback" not in errors, errors[-3000:]
