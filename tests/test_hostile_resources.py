"""Resource exhaustion from one address: thousands of idle sockets, bodies trickled a
byte at a time, responses never read. Other clients must still be answered (within a
generous timeout, never a timing threshold), and the server's memory per hostile
connection must stay small (RSS of a server subprocess, bound generously).

Hostile clients connect from 127.0.0.2 and up (loopback; 127.0.0.1 is the trusted
proxy address).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from openplace.config import Settings
from openplace.distributed.cluster import free_port, wait_http
from tests.conftest import LiveServer, ServerFactory, auth, mint_token

WAIT = 30.0
IDLE = 2000  # idle sockets from one address
TRICKLERS = 100  # bodies sent a byte at a time
UNREAD = 50  # connections that pipeline board requests and never read


class ServerProcess:
    """``openplace serve`` in a subprocess, so its RSS is its own."""

    def __init__(self, **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="op-res-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "OPENPLACE_DATA_DIR": str(self.dir),
            "OPENPLACE_SECRET": "test-secret",
            "OPENPLACE_WIDTH": "100",
            "OPENPLACE_HEIGHT": "80",
            "OPENPLACE_COOLDOWN_BY": "user",  # many clients share 127.0.0.1
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openplace.cli", "--log-level", "WARNING", "serve",
             "--port", str(self.port)],
            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(self.url + "/healthz", WAIT)
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        OPENPLACE_HTTP_MAX_CONNECTIONS_PER_IP=str(IDLE + 100),
        OPENPLACE_HTTP_HEADER_TIMEOUT_SECONDS="600",  # the hostile sockets stay while measured
        OPENPLACE_HTTP_BODY_TIMEOUT_SECONDS="600",
        OPENPLACE_HTTP_SEND_TIMEOUT_SECONDS="600",
    )
    yield srv
    srv.stop()


async def open_socket(port: int, source: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def served(url: str, source: str = "127.0.0.1") -> None:
    """A whole visit from another client: canvas, session, placement, board."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=url, timeout=WAIT, transport=transport) as c:
        assert (await c.get("/api/canvas")).status_code == 200
        token = (await c.post("/api/session")).json()["token"]
        x = int(source.rsplit(".", 1)[1])
        r = await c.post("/api/pixel", json={"x": x, "y": 0, "color": 3}, headers=auth(token))
        assert r.status_code == 200, r.text
        assert (await c.get("/api/board")).status_code == 200


@pytest.fixture
async def sockets() -> AsyncIterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


async def wait_for_fds(ps: psutil.Process, at_least: int) -> None:
    async with asyncio.timeout(3 * WAIT):  # thousands of accepts, on a busy machine too
        while ps.num_fds() < at_least:
            await asyncio.sleep(0.05)


async def test_idle_trickling_and_unread_clients_do_not_starve_others_or_grow_memory(
    server_process: ServerProcess, sockets: list[socket.socket]
) -> None:
    srv = server_process
    await served(srv.url)  # warm: every code path has run once
    fds, base = srv.ps.num_fds(), srv.rss()

    for _ in range(IDLE):
        sockets.append(await open_socket(srv.port, "127.0.0.2"))
    # Less a few: the warm-up visit's own connection may still be open in ``fds`` and
    # close meanwhile (on a busy machine it did, and the count never got there).
    await wait_for_fds(srv.ps, fds + IDLE - 8)
    idle_rss = srv.rss()
    per_idle = (idle_rss - base) / IDLE
    await served(srv.url)
    await served(srv.url, "127.0.0.5")

    body = b'{"x": 1, "y": 1, "color": 3}' + b" " * 970
    head = (
        b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n"
    )
    tricklers = []
    for _ in range(TRICKLERS):
        s = await open_socket(srv.port, "127.0.0.3")
        s.send(head % (mint_token().encode(), len(body)))
        tricklers.append(s)
    sockets.extend(tricklers)
    board = b"GET /api/board HTTP/1.1\r\nHost: t\r\nAccept-Encoding: identity\r\n\r\n"
    for _ in range(UNREAD):
        s = await open_socket(srv.port, "127.0.0.4", rcvbuf=4096)
        s.send(board * 200)  # 800 KB of answers that are never read
        sockets.append(s)
    for i in range(20):  # the bodies creep on, a byte per connection per round
        for s in tricklers:
            s.send(body[i : i + 1])
        await served(srv.url)
        await asyncio.sleep(0.05)
    await served(srv.url, "127.0.0.6")
    hostile = IDLE + TRICKLERS + UNREAD
    per_hostile = (srv.rss() - base) / hostile
    print(
        f"\nidle sockets: {IDLE}, {per_idle / 1024:.1f} KiB each; with {TRICKLERS} trickling "
        f"and {UNREAD} unread: {per_hostile / 1024:.1f} KiB per hostile connection"
    )
    assert per_idle < 64 * 1024
    assert per_hostile < 64 * 1024
    assert (await asyncio.to_thread(lambda: srv.proc.poll())) is None


async def test_one_address_cannot_hold_more_than_its_cap(
    server_factory: ServerFactory, settings: Settings, sockets: list[socket.socket]
) -> None:
    """With the default cap, a flood of idle sockets from one address is refused past
    256 and closed at once: the server keeps its file descriptors for others."""
    srv: LiveServer = await server_factory(settings)
    assert srv._server is not None
    connections = srv._server.server_state.connections
    cap = Settings().http_max_connections_per_ip
    for _ in range(4 * cap):
        sockets.append(await open_socket(srv.port, "127.0.0.2"))

    def held() -> int:
        # Not every protocol in uvicorn's union has .client (the auto-dispatching one has not).
        peers = (getattr(c, "client", None) for c in connections)
        return sum(1 for peer in peers if peer and peer[0] == "127.0.0.2")

    async with asyncio.timeout(WAIT):  # the refused ones are closed within a second
        while held() > cap:
            await asyncio.sleep(0.05)
    await served(srv.url, "127.0.0.3")
    await served(srv.url)
    assert held() == cap


def test_servers_raise_their_open_file_limit_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, hard, 256)
    code = (
        "import resource; from openplace.api.limits import raise_fd_limit; "
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    ).stdout.split()  # fmt: skip
    expected = hard if hard != resource.RLIM_INFINITY else low
    assert [int(v) for v in out] == [expected, expected]
