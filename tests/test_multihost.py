"""Several hosts, for real: the distributed stack across Linux network namespaces.

Every "host" is a network namespace with one veth link to a bridge (the switch) that
lives in a namespace of its own, on 10.77.0.0/24; nothing is added to the root
namespace. Each process runs inside its host (``ip netns exec``) and listens on that
host's own address:

==========  ===========  ==================================================
host        address      runs
==========  ===========  ==================================================
data        10.77.0.2    Redis (:6379), PostgreSQL (:5432), the persister
api1, api2  10.77.0.11,  ``openplace api`` (:8000)
            10.77.0.12
rt1, rt2    10.77.0.21,  ``openplace realtime`` (:8000)
            10.77.0.22
nginx       10.77.0.30   nginx (:80), upstreams by address
client1     10.77.0.41   the test's HTTP and websocket clients
client2     10.77.0.42   a second client host (per-address limits)
==========  ===========  ==================================================

The test's clients run in threads that joined a client namespace
(:func:`harness.servers.in_netns`), so their sockets are the client host's. Namespaces
are named with a random suffix, so parallel runs do not clash; the fixture removes
every namespace (and with it every veth and the bridge) and stops every process, also
on failure. Where namespaces cannot be made (not root, no ``ip``, EPERM) it skips and
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from harness.servers import PostgresServer, RedisServer, in_netns, netns_prefix
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from openplace.core.board import Board, Geometry
from openplace.core.wire import decode_frame
from openplace.distributed.cluster import find_nginx, render_nginx, wait_http

SUBNET = "10.77.0"
HOSTS = {"data": 2, "api1": 11, "api2": 12, "rt1": 21, "rt2": 22, "nginx": 30,
         "client1": 41, "client2": 42}  # fmt: skip
PORT = 8000  # API and realtime processes: every host has its own port space
W, H = 64, 40
SESSIONS_PER_MINUTE = 5
PING_EVERY, PONG_TIMEOUT = 0.5, 3.0  # the resume client's dead-connection detection


def addr(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


class NamespacesUnavailable(Exception):
    pass


class Lab:
    """The hosts (namespaces), their links and the switch."""

    def __init__(self) -> None:
        self.prefix = f"op{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @staticmethod
    def ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def _add_ns(self, name: str) -> None:
        self.ip("netns", "add", name)
        self.made.append(name)
        self.ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NamespacesUnavailable("network namespaces need root (running as uid "
                                        f"{os.geteuid()})")  # fmt: skip
        try:
            self._add_ns(self.switch)
        except RuntimeError as exc:
            raise NamespacesUnavailable(f"cannot create a network namespace: {exc}") from None
        self.ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.switch, "link", "set", "br0", "up")
        for host in HOSTS:
            name = self.ns(host)
            self._add_ns(name)
            port = f"p-{host}"  # the switch's end; the host's end is its eth0
            self.ip("-n", self.switch, "link", "add", port, "type", "veth",
                    "peer", "name", "eth0", "netns", name)  # fmt: skip
            self.ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            self.ip("-n", name, "addr", "add", f"{addr(host)}/24", "dev", "eth0")
            self.ip("-n", name, "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Take the host's link down, on the host's side: its peers hear nothing more."""
        self.ip("-n", self.ns(host), "link", "set", "eth0", "down")

    def destroy(self) -> None:
        """Remove every namespace made; their veths and the bridge go with them."""
        for name in reversed(self.made):
            with contextlib.suppress(RuntimeError):
                self.ip("netns", "del", name)
        self.made.clear()


class Stack:
    """Redis, PostgreSQL, persister, API, realtime processes and nginx on the lab's hosts."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.run_dir = Path(tempfile.mkdtemp(prefix="openplace-multihost-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        self.env: dict[str, str] = {}
        self.failed = False

    def _spawn(self, name: str, host: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.run_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [*netns_prefix(self.lab.ns(host)), *cmd],
                env={**os.environ, **env}, stdout=log, stderr=log,
            )  # fmt: skip

    def _openplace(self, name: str, host: str, *args: str, **extra: str) -> None:
        self._spawn(name, host, [sys.executable, "-m", "openplace.cli", *args],
                    {**self.env, **extra})  # fmt: skip

    def start(self) -> None:
        data = self.lab.ns("data")
        self.redis = RedisServer(host=addr("data"), port=6379, netns=data)
        self.redis.start()
        self.postgres = PostgresServer(host=addr("data"), port=5432, netns=data)
        self.postgres.start()
        db = asyncio.run(self.postgres.new_database())
        self.env = {
            "OPENPLACE_REDIS_URL": self.redis.url,
            "OPENPLACE_DATABASE_URL": db,
            "OPENPLACE_SECRET": "multihost-secret",
            "OPENPLACE_DATA_DIR": str(self.run_dir / "data"),
            "OPENPLACE_WIDTH": str(W),
            "OPENPLACE_HEIGHT": str(H),
            # No cooldown: the client host places many pixels from one address; the
            # per-address limit tested is the session cap.
            "OPENPLACE_COOLDOWN_SECONDS": "0",
            "OPENPLACE_SESSIONS_PER_IP_PER_MINUTE": str(SESSIONS_PER_MINUTE),
            "OPENPLACE_TRUSTED_PROXIES": addr("nginx"),
            "OPENPLACE_BOARD_REFRESH_SECONDS": "0",
            "OPENPLACE_ONLINE_INTERVAL_SECONDS": "0.2",
        }
        self._openplace("persister", "data", "persister")
        for host in ("api1", "api2"):
            self._openplace(host, host, "api", "--port", str(PORT), OPENPLACE_HOST=addr(host))
        for host in ("rt1", "rt2"):
            self._openplace(host, host, "realtime", "--port", str(PORT),
                            OPENPLACE_HOST=addr(host))  # fmt: skip
        conf = self.run_dir / "nginx.conf"
        upstreams = {t: [f"{addr(h)}:{PORT}" for h in (f"{t}1", f"{t}2")] for t in ("api", "rt")}
        conf.write_text(render_nginx(self.run_dir, f"{addr('nginx')}:80", upstreams["api"],
                                     upstreams["rt"]))  # fmt: skip
        self._spawn("nginx", "nginx",
                    [find_nginx(), "-c", str(conf), "-p", str(self.run_dir), "-g", "daemon off;"],
                    {})  # fmt: skip
        urls = [f"http://{addr(h)}:{PORT}/healthz" for h in ("api1", "api2", "rt1", "rt2")]
        urls.append(f"http://{addr('nginx')}/healthz")
        deadline = time.monotonic() + 40

        def ready() -> None:  # from the client host: every address is reachable from there
            for url in urls:
                wait_http(url, max(1.0, deadline - time.monotonic()), check=self._check_alive)

        try:
            in_netns(self.lab.ns("client1"), ready)
        except TimeoutError as exc:
            raise RuntimeError(f"the stack did not come up: {exc}") from None
        # Each service listens on its own host's address (not 0.0.0.0, not loopback).
        for host, port in [("data", 6379), ("data", 5432), ("api1", PORT), ("api2", PORT),
                           ("rt1", PORT), ("rt2", PORT), ("nginx", 80)]:  # fmt: skip
            assert self.listening(host, port) == {addr(host)}, (host, port)

    def listening(self, host: str, port: int) -> set[str]:
        """The addresses that listen on TCP ``port`` in ``host``."""
        out = subprocess.run([*netns_prefix(self.lab.ns(host)), "ss", "-ltnH"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        local = [line.split()[3].rpartition(":") for line in out.splitlines()]
        return {a for a, _, p in local if p == str(port)}

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.run_dir / f"{name}.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.failed:
            print(f"multihost: logs kept in {self.run_dir}")
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    lab = Lab()
    s: Stack | None = None
    try:
        try:
            lab.build()
        except NamespacesUnavailable as exc:
            print(f"test_multihost skipped: {exc}")
            pytest.skip(str(exc))
        s = Stack(lab)
        s.start()
        yield s
    except BaseException:
        if s is not None:
            s.failed = True
        raise
    finally:
        try:
            if s is not None:
                s.failed = s.failed or request.session.testsfailed > 0
                s.stop()
        finally:
            lab.destroy()


class ResumeClient:
    """The client algorithm of docs/protocol.md: a board fetched through nginx, then the
    stream from its X-Seq with its board id; JSON pings to notice a dead connection; on
    any failure, the next URL of ``urls`` with ``since`` = the last seq applied."""

    def __init__(self, name: str, urls: list[str], http: httpx.AsyncClient) -> None:
        self.name, self.urls, self.http = name, urls, http
        self.board = Board(Geometry(W, H))
        self.last = 0
        self.board_id = ""
        self.applied: list[int] = []  # seqs, in the order applied
        self.items: dict[int, tuple[int, int]] = {}
        self.connected: list[str] = []  # the URL of every connection that said hello
        self.current = ""
        self.gaps = self.resyncs = 0
        self.errors: list[str] = []

    async def fetch_board(self) -> None:
        r = await self.http.get("/api/board", params={"fresh": secrets.token_hex(4)})
        r.raise_for_status()
        self.board = Board(Geometry(W, H), r.content)
        self.last, self.board_id = int(r.headers["x-seq"]), r.headers["x-board-id"]

    async def run(self, stop: asyncio.Event) -> None:
        await self.fetch_board()
        turn = 0
        while not stop.is_set():
            url = self.urls[turn % len(self.urls)]
            try:
                await self._connection(url, stop)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.errors.append(f"{url}: {exc!r}")
            if not stop.is_set():
                turn += 1  # the next host (the same, for a single URL such as nginx's)
                await asyncio.sleep(0.1)

    async def _connection(self, url: str, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        query = f"?since={self.last}&board={self.board_id}"
        async with connect(url + query, open_timeout=3, close_timeout=0.5,
                           ping_interval=None) as ws:  # fmt: skip
            ping_id, sent_at, next_ping = 0, 0.0, loop.time()
            waiting = False
            while not stop.is_set():
                now = loop.time()
                if waiting and now - sent_at > PONG_TIMEOUT:
                    raise TimeoutError(f"no pong within {PONG_TIMEOUT} s")
                if not waiting and now >= next_ping:
                    ping_id += 1
                    await ws.send(json.dumps({"type": "ping", "id": ping_id}))
                    waiting, sent_at = True, now
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.1)
                except TimeoutError:
                    continue
                if isinstance(msg, str):
                    control: dict[str, Any] = json.loads(msg)
                    if control["type"] == "hello":
                        self.current = url
                        self.connected.append(url)
                    elif control["type"] == "pong" and control["id"] == ping_id:
                        waiting, next_ping = False, now + PING_EVERY
                    elif control["type"] == "resync":  # our seq means nothing: reload
                        self.resyncs += 1
                        await self.fetch_board()
                        return
                    continue
                first, records = decode_frame(msg)
                if first > self.last + 1:  # something was lost: resume from what we have
                    self.gaps += 1
                    return
                for j, (index, color) in enumerate(records):
                    seq = first + j
                    if seq <= self.last:
                        continue  # already applied
                    self.board.set(index, color)
                    self.applied.append(seq)
                    self.items[seq] = (index, color)
                self.last = max(self.last, first + len(records) - 1)


async def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def session_from(host: str, lab: Lab) -> httpx.Response:
    """``POST /api/session`` through nginx from another client host."""

    def post() -> httpx.Response:
        with httpx.Client(base_url=f"http://{addr('nginx')}", timeout=10) as c:
            return c.post("/api/session")

    return in_netns(lab.ns(host), post)


async def place_many(
    http: httpx.AsyncClient, tokens: list[str], first: int, n: int
) -> dict[int, tuple[int, int]]:
    """``n`` placements through nginx, concurrently; seq -> (index, colour) of each."""

    async def one(k: int) -> tuple[int, tuple[int, int]]:
        index, color = (k * 37) % (W * H), k % 16
        body = {"x": index % W, "y": index // W, "color": color}
        headers = {"Authorization": f"Bearer {tokens[k % len(tokens)]}"}
        r = await http.post("/api/pixel", json=body, headers=headers)
        assert r.status_code == 200, r.text
        return int(r.json()["seq"]), (index, color)

    return dict(await asyncio.gather(*[one(k) for k in range(first, first + n)]))


async def scenario(stack: Stack) -> None:
    lab = stack.lab
    nginx = f"http://{addr('nginx')}"
    rt1, rt2 = (f"ws://{addr(h)}:{PORT}/ws" for h in ("rt1", "rt2"))
    async with httpx.AsyncClient(base_url=nginx, timeout=20) as http:
        # (b) The session cap counts the client host's address through nginx, across
        # both API processes: client1 gets its 5 a minute, then 429 from the app; client2,
        # another address, still gets one. (Within one clock minute: the cap's window.)
        if time.time() % 60 > 54:
            await asyncio.sleep(60.5 - time.time() % 60)
        minute = int(time.time()) // 60
        tokens = []
        for _ in range(SESSIONS_PER_MINUTE):
            r = await http.post("/api/session")
            assert r.status_code == 201, r.text
            tokens.append(r.json()["token"])
        over = await http.post("/api/session")
        assert over.status_code == 429, over.text
        assert "too many new sessions from this address" in over.json()["message"]  # the app's
        other = await asyncio.to_thread(session_from, "client2", lab)
        assert other.status_code == 201, other.text
        red = aioredis.from_url(stack.env["OPENPLACE_REDIS_URL"])
        try:
            counted = {k.decode(): int(await red.get(k) or 0)
                       async for k in red.scan_iter("op:sessions:m:*")}  # fmt: skip
        finally:
            await red.aclose()
        if int(time.time()) // 60 == minute:
            assert counted == {
                f"op:sessions:m:{addr('client1')}:{minute}": SESSIONS_PER_MINUTE,
                f"op:sessions:m:{addr('client2')}:{minute}": 1,
            }, counted
        else:  # the minute turned meanwhile (a slow machine): the addresses still count
            assert {k.split(":")[3] for k in counted} == {addr("client1"), addr("client2")}

        # (a) Websocket clients on both realtime hosts, directly and through nginx.
        stop = asyncio.Event()
        direct1 = ResumeClient("direct-rt1", [rt1, rt2], http)
        direct2 = ResumeClient("direct-rt2", [rt2, rt1], http)
        clients = [direct1, direct2]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]

        async def rt_clients(host: str) -> int:
            r = await http.get(f"http://{addr(host)}:{PORT}/healthz")
            return int(r.json()["clients"])

        # Through nginx until rt1 holds one of them too (nginx balances each worker's
        # connections round-robin).
        via_nginx: list[ResumeClient] = []
        for k in range(8):
            c = ResumeClient(f"nginx-{k}", [nginx.replace("http", "ws") + "/ws"], http)
            via_nginx.append(c)
            clients.append(c)
            tasks.append(asyncio.create_task(c.run(stop)))
            await wait_until(lambda: all(c.connected for c in clients), 15, "hello")
            if k >= 1 and await rt_clients("rt1") >= 2 and await rt_clients("rt2") >= 2:
                break
        try:
            acked = await place_many(http, tokens, 0, 40)
            assert sorted(acked) == list(range(1, 41))
            await wait_until(lambda: all(c.last >= 40 for c in clients), 15, "placements 1..40")
            for c in clients:
                assert c.applied == list(range(1, 41)), (c.name, c.applied)
                assert c.items == acked and c.gaps == c.resyncs == 0, c.name
            before = {c.name: len(c.connected) for c in clients}
            assert all(n == 1 for n in before.values()), before

            # (c) rt1's link goes down while placements go on: its clients notice (no
            # pong), resume on rt2 (directly, or as nginx gives up on rt1) and lose nothing.
            lab.cut("rt1")
            cut_at = time.monotonic()
            acked |= await place_many(http, tokens, 40, 40)
            assert sorted(acked) == list(range(1, 81))
            await wait_until(lambda: all(c.last >= 80 for c in clients), 25, "placements 1..80")
            resumed_in = time.monotonic() - cut_at
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        board = await http.get(f"http://{addr('api1')}:{PORT}/api/board")
        assert int(board.headers["x-seq"]) == 80
        for c in clients:
            assert c.applied == list(range(1, 81)), (c.name, c.applied)
            assert c.items == acked, c.name
            assert c.resyncs == 0, c.name
            assert bytes(c.board.data) == board.content, c.name
            assert c.board_id == board.headers["x-board-id"], c.name
        # The direct client of rt1 moved to rt2; rt2's stayed where it was; at least one
        # of nginx's clients was on rt1 and came back through nginx.
        assert direct1.connected[0] == rt1 and direct1.current == rt2, direct1.connected
        assert direct2.connected == [rt2], (direct2.connected, direct2.errors)
        moved = [c.name for c in via_nginx if len(c.connected) > 1]
        assert moved, "no client through nginx was on rt1"
        nginx_log = (stack.run_dir / "nginx-error.log").read_text()
        timeouts = nginx_log.count("upstream timed out")
        print(f"multihost: {len(clients)} websocket clients, {len(moved)} through nginx and "
              f"1 direct resumed on rt2 within {resumed_in:.1f} s of the cut; "
              f"client errors: {[e for c in clients for e in c.errors]}; "
              f"nginx logged {timeouts} upstream timeouts")  # fmt: skip


def test_stack_across_hosts(stack: Stack) -> None:
    """Placements from the client host reach clients of both realtime hosts; per-address
    limits see the client host's address through nginx; cutting a realtime host's link
    makes its clients resume on the other without loss."""
    in_netns(stack.lab.ns("client1"), lambda: asyncio.run(scenario(stack)))
