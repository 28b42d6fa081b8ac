"""Hostile HTTP clients: oversized, slow, silent, duplicated and malformed requests.

Each limit is checked against a real server (the embedded one in-process unless said),
by what a client sees: an answer or a closed connection, within generous timeouts. The
timeouts in the settings are made short so that the tests are quick, never to measure.
Clients that must count as another address connect from 127.0.0.2 and up (loopback);
127.0.0.1 is the trusted proxy address.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from harness.servers import PostgresServer, RedisServer

from openplace.config import Settings
from openplace.distributed.cluster import Cluster, find_nginx, free_port, render_nginx
from openplace.state import state_of
from tests.conftest import LiveServer, ServerFactory, auth, mint_token

WAIT = 15.0  # generous: how long a client waits for something that must happen


async def connect(
    server: LiveServer | Port, source: str = "127.0.0.1", rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    return await asyncio.open_connection(sock=sock)


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length)."""
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (EOF or reset) within WAIT."""
    try:
        async with asyncio.timeout(WAIT):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    return True


def error_of(body: bytes) -> str:
    data = orjson.loads(body)
    assert data["message"]
    return str(data["error"])


async def canvas_ok(server: LiveServer, source: str = "127.0.0.1") -> bool:
    reader, writer = await connect(server, source)
    writer.write(b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, _ = await answer(reader)
    writer.close()
    return status == 200


async def seq_of_board(server: LiveServer) -> str:
    async with httpx.AsyncClient(base_url=server.url) as c:
        return (await c.get("/api/board")).headers["x-seq"]


Factory = ServerFactory


# -- request line and headers ---------------------------------------------------------


async def test_head_over_the_cap_is_a_431_without_waiting_for_its_end(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_max_header_bytes=8192))
    for start in (b"GET /api/canvas HTTP/1.1\r\nX-Pad: ", b"GET /api/canvas?pad="):
        reader, writer = await connect(srv)
        # 200 KB and never a line end: the server answers and reads on (dropping) a moment,
        # so that the answer is not lost to a reset
        writer.write(start + b"a" * 200_000)
        status, headers, body = await answer(reader)
        assert status == 431 and error_of(body) == "headers_too_large"
        assert headers["connection"] == "close" and await closed(reader)
        writer.close()
    assert await canvas_ok(srv)


async def test_head_of_exactly_the_cap_is_served_one_byte_more_is_not(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_max_header_bytes=2048))

    def request(size: int) -> bytes:
        head = b"GET /api/canvas HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n"
        return head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(head)))

    for size, status in ((2048, 200), (2049, 431)):
        reader, writer = await connect(srv)
        writer.write(request(size))  # in one write: the cap holds inside a chunk too
        assert (await answer(reader))[0] == status
        writer.close()


async def test_silent_connection_is_closed_and_a_slow_head_gets_a_408(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_header_timeout_seconds=0.3))
    reader, writer = await connect(srv)
    assert await closed(reader)  # sent nothing: closed without an answer
    writer.close()

    reader, writer = await connect(srv)
    writer.write(b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n")  # no blank line, ever
    status, _, body = await answer(reader)
    assert status == 408 and error_of(body) == "request_timeout" and await closed(reader)
    writer.close()


async def test_trickled_head_is_cut_at_the_header_deadline(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_header_timeout_seconds=0.3))
    reader, writer = await connect(srv)
    writer.write(b"GET /api/canvas HTTP/1.1\r\n")
    got = asyncio.create_task(answer(reader))
    for _ in range(200):  # 10 s of one byte every 50 ms: far past the deadline
        if got.done():
            break
        writer.write(b"X-Slow: a\r\n")
        await asyncio.sleep(0.05)
    status, _, body = await got
    assert status == 408 and error_of(body) == "request_timeout"
    writer.close()


# -- bodies ---------------------------------------------------------------------------


async def test_promised_body_that_never_arrives_gets_a_408_and_changes_nothing(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_body_timeout_seconds=0.3))
    body = b'{"x": 1, "y": 1, "color": 3}'
    for sent in (b"", body[:10]):
        reader, writer = await connect(srv)
        writer.write(
            b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
            + mint_token().encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + sent
        )
        status, _, answer_body = await answer(reader)
        assert status == 408 and error_of(answer_body) == "request_timeout"
        assert await closed(reader)
        writer.close()
    assert await seq_of_board(srv) == "0"


async def test_trickled_body_is_cut_at_the_body_deadline(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_body_timeout_seconds=0.3))
    reader, writer = await connect(srv)
    body = b'{"x": 1, "y": 1, "color": 3, "pad": "' + b" " * 150 + b'"}'
    writer.write(
        b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + mint_token().encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    got = asyncio.create_task(answer(reader))
    for i in range(len(body)):  # one byte every 50 ms: 9 s in all
        if got.done():
            break
        writer.write(body[i : i + 1])
        await asyncio.sleep(0.05)
    status, _, answer_body = await got
    assert status == 408 and error_of(answer_body) == "request_timeout"
    writer.close()
    assert await seq_of_board(srv) == "0"


# -- idle and unread connections ------------------------------------------------------


async def test_idle_keepalive_connection_is_closed(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_keepalive_timeout_seconds=0.3))
    reader, writer = await connect(srv)
    writer.write(b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await answer(reader))[0] == 200
    assert await closed(reader)
    writer.close()


def _connections(server: LiveServer) -> int:
    assert server._server is not None
    return len(server._server.server_state.connections)


async def wait_until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not cond():
            await asyncio.sleep(0.02)


async def test_client_that_never_reads_is_dropped_at_the_send_deadline(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(
        settings.with_(width=1000, height=1000, http_send_timeout_seconds=0.3,
                       http_keepalive_timeout_seconds=600)
    )  # fmt: skip
    _reader, writer = await connect(srv, rcvbuf=4096)
    # 40 pipelined board requests (500 KB each: more than the kernel buffers hold), and
    # no read: the server's buffer for this client fills up, and is dropped.
    writer.write(b"GET /api/board HTTP/1.1\r\nHost: t\r\nAccept-Encoding: identity\r\n\r\n" * 40)
    await wait_until(lambda: _connections(srv) == 1)
    await wait_until(lambda: _connections(srv) == 0)
    assert await canvas_ok(srv)
    writer.close()


# -- connections per address ----------------------------------------------------------


async def test_open_connections_per_address_are_capped(
    server_factory: Factory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(http_max_connections_per_ip=20))
    held = [await connect(srv, "127.0.0.2") for _ in range(20)]
    await wait_until(lambda: _connections(srv) == 20)
    reader, writer = await connect(srv, "127.0.0.2")
    status, headers, body = await answer(reader)
    assert status == 429 and error_of(body) == "too_many_connections"
    assert headers["retry-after"] == "1" and await closed(reader)
    writer.close()
    assert await canvas_ok(srv, "127.0.0.3")  # another address is served
    assert await canvas_ok(srv, "127.0.0.1")  # and so is the trusted proxy
    held.pop()[1].close()
    await wait_until(lambda: _connections(srv) == 19)
    assert await canvas_ok(srv, "127.0.0.2")  # a freed slot is free
    for _, w in held:
        w.close()


async def test_websocket_upgrade_gives_its_http_slot_back(
    server_factory: Factory, settings: Settings
) -> None:
    from websockets.asyncio.client import connect as ws_connect

    srv: LiveServer = await server_factory(settings.with_(http_max_connections_per_ip=2))
    sockets = [
        await ws_connect(srv.ws_url, local_addr=("127.0.0.2", 0), open_timeout=WAIT)
        for _ in range(4)
    ]
    assert await canvas_ok(srv, "127.0.0.2")
    for ws in sockets:
        await ws.close()


async def test_requests_in_progress_per_forwarded_address_are_capped(
    server_factory: Factory, settings: Settings
) -> None:
    """Through a trusted proxy, the forwarded client is counted, per request."""
    srv: LiveServer = await server_factory(settings.with_(http_max_connections_per_ip=2))

    def post_head(forwarded: str) -> bytes:
        return (
            b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: %s\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: 40\r\n\r\n"
            % (forwarded.encode(), mint_token().encode())
        )

    slow = []
    for _ in range(2):  # two requests in progress from 127.0.0.9, bodies not sent yet
        reader, writer = await connect(srv)
        writer.write(post_head("127.0.0.9"))
        slow.append((reader, writer))
    await asyncio.sleep(0.1)

    async def get(forwarded: str | None) -> int:
        reader, writer = await connect(srv)
        xff = b"X-Forwarded-For: %s\r\n" % forwarded.encode() if forwarded else b""
        writer.write(b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n" + xff + b"\r\n")
        status, _, body = await answer(reader)
        if status == 429:
            assert error_of(body) == "too_many_connections"
        writer.close()
        return status

    assert await get("127.0.0.9") == 429
    assert await get("127.0.0.8") == 200
    assert await get(None) == 200  # the proxy's own request
    reader, writer = slow.pop()
    writer.close()
    await wait_until(lambda: _connections(srv) == 1)
    assert await get("127.0.0.9") == 200
    for _, w in slow:
        w.close()


# -- one reading of each request ------------------------------------------------------


async def test_two_authorization_headers_are_a_400_everywhere(client: httpx.AsyncClient) -> None:
    good, other = mint_token(), mint_token()
    for pair in ((good, other), (good, "junk"), ("junk", good), (good, good)):
        headers = [("Authorization", f"Bearer {t}") for t in pair]
        me = await client.get("/api/me", headers=headers)
        placed = await client.post("/api/pixel", json={"x": 1, "y": 1, "color": 2},
                                   headers=headers)  # fmt: skip
        for r in (me, placed):
            assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
    assert (await client.get("/api/board")).headers["x-seq"] == "0"
    r = await client.post("/api/pixel", json={"x": 1, "y": 1, "color": 2}, headers=auth(good))
    assert r.status_code == 200  # no cooldown was started


async def test_described_body_is_exactly_the_accepted_body(client: httpx.AsyncClient) -> None:
    """``color: 0.0`` is not an integer in the description (OpenAPI 3.0, JSON Schema
    draft 4), and the server refuses it; unknown fields likewise."""
    import jsonschema_rs

    spec = (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.0.")
    described = jsonschema_rs.Draft4Validator(spec["components"]["schemas"]["PlaceRequest"])
    refused = [
        {"x": 1, "y": 1, "color": 0.0},
        {"x": 1.0, "y": 1, "color": 2},
        {"x": 1, "y": 1, "color": 2, "pad": "x"},
        {"x": 1, "y": 1, "color": 16},
        {"x": 1, "y": 80, "color": 2},
    ]
    for body in refused:
        assert not described.is_valid(body), body
        r = await client.post("/api/pixel", json=body, headers=auth(mint_token()))
        assert r.status_code == 400 and r.json()["error"].startswith("bad_"), body
    assert (await client.get("/api/board")).headers["x-seq"] == "0"
    body = {"x": 1, "y": 1, "color": 0}
    assert described.is_valid(body)
    r = await client.post("/api/pixel", json=body, headers=auth(mint_token()))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "x=1_0&y=1",
        "x=%D9%A1%D9%A2&y=1",  # Arabic-Indic digits
        "x=%EF%BC%91&y=1",  # fullwidth 1
        "x=%201&y=1",
        "x=1%20&y=1",
        "x=%2B1&y=1",
        "x=-0&y=1",
        "x=1&x=2&y=1",
        "x=1&y=",
        "x=" + "9" * 5000 + "&y=1",
        "x=0" + "0" * 30 + "100&y=1",
    ],
)
async def test_coordinates_are_ascii_decimal_digits_only(
    client: httpx.AsyncClient, query: str
) -> None:
    r = await client.get("/api/pixel?" + query)
    assert r.status_code == 400 and r.json()["error"] == "bad_coordinates"


async def test_leading_zeros_are_still_decimal(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/pixel?x=007&y=" + "0" * 40 + "1")
    assert r.status_code == 200 and (r.json()["x"], r.json()["y"]) == (7, 1)


async def test_wrong_method_on_pixel_names_every_allowed_one(client: httpx.AsyncClient) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        r = await client.request(method, "/api/pixel")
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
    assert (await client.head("/api/pixel?x=1&y=1")).status_code == 200


async def test_request_that_is_not_http_gets_a_json_400(server: LiveServer) -> None:
    for junk in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
        reader, writer = await connect(server)
        writer.write(junk)
        status, headers, body = await answer(reader)
        assert status == 400 and headers["content-type"] == "application/json"
        assert error_of(body) == "bad_request"
        writer.close()


# -- distributed: the store's servers down --------------------------------------------


async def test_pixel_and_me_answer_503_while_redis_or_postgresql_is_down(
    cluster: Cluster, redis_server: RedisServer, postgres: PostgresServer
) -> None:
    api = f"http://127.0.0.1:{cluster.api_ports[0]}"
    headers = auth(mint_token())

    async def reads(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await c.get(api + "/api/pixel", params={"x": 1, "y": 1}),
            await c.get(api + "/api/me", headers=headers),
        ]

    async with httpx.AsyncClient(timeout=WAIT) as c:
        assert [r.status_code for r in await reads(c)] == [200, 200]
        redis_server.kill()
        for r in await reads(c):
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            assert r.headers["retry-after"] == "1"
        redis_server.start()  # empty: the persister restores the board
        async with asyncio.timeout(30):
            while [r.status_code for r in await reads(c)] != [200, 200]:
                await asyncio.sleep(0.1)
        postgres.kill()
        try:
            for r in await reads(c):
                assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        finally:
            postgres.start_again()


async def test_store_read_that_does_not_answer_in_time_is_a_503(
    server_factory: Factory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv: LiveServer = await server_factory(settings.with_(store_read_timeout_seconds=0.2))

    async def stuck(*args: object) -> None:
        await asyncio.sleep(3600)

    store = state_of(srv.app).store
    for method in ("pixel", "user"):  # a paused server
        monkeypatch.setattr(store, method, stuck)
    async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT) as c:
        for r in (
            await c.get("/api/pixel?x=1&y=1"),
            await c.get("/api/me", headers=auth(mint_token())),
        ):
            assert r.status_code == 503 and r.json()["error"] == "unavailable"


# -- nginx (distributed/nginx.conf.template) -----------------------------------------


class Nginx:
    """nginx from the template, in front of API ports that may not listen yet."""

    def __init__(self, api_ports: list[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="op-nginx-"))
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(render_nginx(self.dir, f"127.0.0.1:{self.port}", api_ports, [free_port()]))
        self.proc = subprocess.Popen(
            [find_nginx(), "-c", str(conf), "-p", str(self.dir), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )

    async def started(self) -> Nginx:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return self
                except OSError:
                    assert self.proc.poll() is None, "nginx exited"
                    await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


NginxFactory = Callable[[list[int]], Awaitable[Nginx]]


@pytest.fixture
async def nginx_factory() -> AsyncIterator[NginxFactory]:
    started: list[Nginx] = []

    async def make(api_ports: list[int]) -> Nginx:
        started.append(Nginx(api_ports))
        return await started[-1].started()

    yield make
    for n in started:
        n.stop()


async def nginx_answer(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await answer(reader)
    finally:
        writer.close()


async def test_nginx_answers_its_own_refusals_in_json(nginx_factory: NginxFactory) -> None:
    nginx: Nginx = await nginx_factory([free_port()])
    body = b"x" * 8192
    cases = [
        (b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
         + body, 413, "body_too_large"),
        (b"GET /api/canvas HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
         431, "headers_too_large"),
        (b"GET /api/canvas?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
         431, "headers_too_large"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n", 503, "unavailable"),
        (b"GET /api/pixel?x=1&y=1 HTTP/1.1\r\nHost: t\r\n\r\n", 503, "unavailable"),
        # A backend that failed may have placed it: not "nothing changed".
        (b'POST /api/pixel HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}',
         503, "unconfirmed"),
    ]  # fmt: skip
    for request, status, code in cases:
        got, headers, answer_body = await nginx_answer(nginx.port, request)
        assert got == status and headers["content-type"] == "application/json", answer_body
        assert headers["x-content-type-options"] == "nosniff"
        assert error_of(answer_body) == code


async def test_nginx_early_requests_do_not_take_backends_out_of_the_pool(
    nginx_factory: NginxFactory,
) -> None:
    ports = [free_port(), free_port()]
    nginx: Nginx = await nginx_factory(ports)
    request = b"GET /api/canvas HTTP/1.1\r\nHost: t\r\n\r\n"
    status, _, body = await nginx_answer(nginx.port, request)  # no API process listens yet
    assert status == 503 and error_of(body) == "unavailable"

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")  # fmt: skip

    servers = [await asyncio.start_server(api, "127.0.0.1", p) for p in ports]
    try:  # now they listen: served at once, not after nginx's fail_timeout
        for _ in range(4):
            assert (await nginx_answer(nginx.port, request))[0] == 200
    finally:
        for server in servers:
            server.close()


# -- distributed: an API process has the same limits ----------------------------------


class Port:
    """A server address for :func:`connect` (an API process's port)."""

    def __init__(self, port: int) -> None:
        self.port = port


async def test_distributed_api_process_has_the_same_limits(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    from tests.conftest import cluster_env

    env = cluster_env(
        redis_server.url, await postgres.new_database(),
        OPENPLACE_HTTP_HEADER_TIMEOUT_SECONDS="0.5", OPENPLACE_HTTP_BODY_TIMEOUT_SECONDS="0.5",
        OPENPLACE_HTTP_MAX_CONNECTIONS_PER_IP="5",
    )  # fmt: skip
    cluster = Cluster(Settings.from_env(env), api=1, realtime=1, env=env)
    await asyncio.to_thread(cluster.start)
    try:
        api = Port(cluster.api_ports[0])
        reader, writer = await connect(api)
        writer.write(b"GET /api/canvas HTTP/1.1\r\nX-Pad: " + b"a" * 20_000)
        status, _, body = await answer(reader)
        assert status == 431 and error_of(body) == "headers_too_large"
        writer.close()

        reader, writer = await connect(api)
        assert await closed(reader)  # silent
        writer.close()
        reader, writer = await connect(api)
        writer.write(b"POST /api/pixel HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n{")
        status, _, body = await answer(reader)
        assert status == 408 and error_of(body) == "request_timeout"
        writer.close()

        held = [await connect(api, "127.0.0.2") for _ in range(5)]
        reader, writer = await connect(api, "127.0.0.2")
        status, _, body = await answer(reader)
        assert status == 429 and error_of(body) == "too_many_connections"
        writer.close()
        for _, w in held:
            w.close()
        async with httpx.AsyncClient(base_url=cluster.url, timeout=WAIT) as c:  # via nginx
            r = await c.get("/api/canvas", headers={"X-Pad": "a" * 9000})
            assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
            assert (await c.get("/api/canvas")).status_code == 200
    finally:
        await asyncio.to_thread(cluster.stop)
