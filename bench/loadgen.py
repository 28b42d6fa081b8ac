"""The load generator: simulated users placing pixels, and websocket listeners.

Runs as its own process (``python -m bench.loadgen ...``) so that it does not share an
interpreter with what it measures, and prints one JSON object of results on stdout.

- ``place``: users with their own signed tokens place pixels in a closed loop (each
  waits out its cooldown on 429). Reports acknowledged placements per second and
  latency percentiles, and the wall-clock time each sampled seq was acknowledged.
- ``event``: a real event's load: every placement from a user who has not placed yet,
  from an address of its own, over a few keep-alive connections.
- ``listen``: many websocket clients. Most only count bytes (a raw asyncio protocol
  after the handshake); a sample decode every frame, check that the sequence is
  gapless and record when each seq arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from typing import Any, TypedDict, cast
from urllib.parse import urlsplit

from openplace.auth.tokens import Identity, TokenSigner
from openplace.core.wire import decode_frame


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    if not values:
        return {f"p{int(p)}": float("nan") for p in ps}
    s = sorted(values)
    return {f"p{int(p)}": s[min(len(s) - 1, int(len(s) * p / 100))] for p in ps}


# -- placing -------------------------------------------------------------------------


class HTTPConnection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client: one request in flight, responses parsed
    just enough for status and JSON body. Far cheaper per request than a general client,
    so one process can drive thousands of requests per second."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio hands create_connection's protocol a read-write transport, typed as the base
        # (uvloop's is not even a subclass of asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Client:
    """One keep-alive connection, opened again when it is lost."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = HTTPConnection()

    async def open(self) -> Client:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(HTTPConnection, self.host, self.port)
        return self

    async def timed(self, data: bytes) -> tuple[int, bytes, float] | None:
        """``(status, body, seconds)``; ``None`` if the connection was lost (a new one is
        open for the next request)."""
        t0 = time.perf_counter()
        try:
            status, body = await self.conn.request(data)
        except ConnectionError:
            await self.open()
            return None
        return status, body, time.perf_counter() - t0

    def close(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.close()


class Pacer:
    """Spaces the requests of all connections evenly at ``rate``/s (0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def place(args: argparse.Namespace) -> dict[str, Any]:
    signer = TokenSigner(args.secret)
    rng = random.Random(args.seed)
    tokens = [signer.issue(Identity(f"bench-{args.seed}-{i}")) for i in range(args.users)]
    latencies: list[float] = []
    acks: dict[int, float] = {}
    counts = {"ok": 0, "cooldown": 0, "error": 0}
    parts = urlsplit(args.url)
    start = time.monotonic()
    deadline = start + args.duration
    warmup_end = start + args.warmup

    pace = Pacer(args.rate)

    async def user(token: str) -> None:
        client = await Client(parts.hostname or "", parts.port or 80).open()
        head = (
            f"POST /api/pixel HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        while time.monotonic() < deadline:
            body = b'{"x":%d,"y":%d,"color":%d}' % (
                rng.randrange(args.width),
                rng.randrange(args.height),
                rng.randrange(16),
            )
            data = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            await pace.wait()
            answer = await client.timed(data)
            if answer is None:
                counts["error"] += 1
                continue
            status, payload, took = answer
            measuring = time.monotonic() >= warmup_end
            if status == 200:
                if measuring:
                    counts["ok"] += 1
                    latencies.append(took)
                    if args.ack_sample and rng.random() < args.ack_sample:
                        acks[json.loads(payload)["seq"]] = time.time()
            elif status == 429:
                counts["cooldown"] += measuring
                await asyncio.sleep(float(json.loads(payload).get("retry_after", 0.1)))
            else:
                counts["error"] += measuring
                await asyncio.sleep(0.05)
        client.close()

    await asyncio.gather(*(user(t) for t in tokens))
    measured = args.duration - args.warmup
    return {
        "placed_per_s": counts["ok"] / measured,
        **counts,
        "latency_ms": {k: v * 1000 for k, v in percentiles(latencies).items()},
        "acks": acks,
    }


async def event(args: argparse.Namespace) -> dict[str, Any]:
    """A real event's load: every placement from a user who has not placed yet, from an
    address of its own (``X-Forwarded-For``, believed from this trusted host), over
    ``--connections`` keep-alive connections, as fast as the server answers or at
    ``--rate`` placements/s. The tokens are signed before the clock starts."""
    signer = TokenSigner(args.secret)
    tokens = [signer.issue(Identity(f"ev-{args.seed}-{i}")) for i in range(args.users)]
    parts = urlsplit(args.url)
    latencies: list[float] = []
    counts = {"ok": 0, "ok_total": 0, "cooldown": 0, "error": 0}
    rng = random.Random(args.seed)
    fresh = iter(range(len(tokens)))
    start = time.monotonic()
    deadline = start + args.duration
    warmup_end = start + args.warmup
    exhausted = False
    pace = Pacer(args.rate)
    cpu_start = time.process_time()  # this generator's own share of the machine

    async def connection() -> None:
        nonlocal exhausted
        client = await Client(parts.hostname or "", parts.port or 80).open()
        while time.monotonic() < deadline:
            i = next(fresh, None)
            if i is None:
                exhausted = True
                break
            n = (args.seed * args.users + i) % (1 << 24)  # another seed: other addresses
            address = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
            body = b'{"x":%d,"y":%d,"color":%d}' % (
                rng.randrange(args.width),
                rng.randrange(args.height),
                rng.randrange(16),
            )
            data = (
                f"POST /api/pixel HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Authorization: Bearer {tokens[i]}\r\nX-Forwarded-For: {address}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            await pace.wait()
            answer = await client.timed(data)
            if answer is None:
                counts["error"] += 1
                continue
            status, _, took = answer
            measuring = time.monotonic() >= warmup_end
            if status == 200:
                counts["ok_total"] += 1
                if measuring:
                    counts["ok"] += 1
                    latencies.append(took)
            elif status == 429:
                counts["cooldown"] += 1
            else:
                counts["error"] += 1
        client.close()

    await asyncio.gather(*(connection() for _ in range(args.connections)))
    measured = min(time.monotonic(), deadline) - warmup_end
    return {
        "placed_per_s": counts["ok"] / measured if measured > 0 else 0.0,
        **counts,
        "exhausted": exhausted,
        "cpu_seconds": time.process_time() - cpu_start,
        "latency_ms": {k: v * 1000 for k, v in percentiles(latencies).items()},
    }


# -- listening -----------------------------------------------------------------------


class CountingProtocol(asyncio.Protocol):
    """A websocket client that, after the handshake, only counts bytes."""

    def __init__(self, request: bytes, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.ready = ready
        self.handshake = b""
        self.bytes = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(self.request)  # see HTTPConnection

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.handshake += data
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.handshake.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(self.handshake[:200].decode()))
                return
            self.bytes += len(self.handshake) - end - 4
            self.ready.set_result(None)
            return
        self.bytes += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during handshake"))


async def open_counting(url: str, since: str) -> tuple[asyncio.Transport, CountingProtocol]:
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    path = (parts.path or "/ws") + since
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r} needs a host and a port")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    transport, protocol = await loop.create_connection(
        lambda: CountingProtocol(request, ready), parts.hostname, parts.port
    )
    await asyncio.wait_for(ready, 30)
    return transport, protocol


class ListenStats(TypedDict):
    """What the sampled listeners saw, together (``last``: the latest to stop's last seq)."""

    gaps: int
    resyncs: int
    frames: int
    last: int | None


async def sampled_listener(
    url: str,
    since: int | None,
    stop: asyncio.Event,
    arrivals: dict[int, float],
    stats: ListenStats,
) -> None:
    from websockets.asyncio.client import connect

    query = f"?since={since}" if since is not None else ""
    async with connect(url + query, max_size=None, compression=None) as ws:
        last = since
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.recv(), 0.25)
            except TimeoutError:
                continue
            now = time.time()
            if isinstance(msg, str):
                control = json.loads(msg)
                if control["type"] == "hello" and last is None:
                    last = control["head"]
                elif control["type"] == "resync":
                    stats["resyncs"] += 1
                    last = control["head"]
                continue
            first, items = decode_frame(msg)
            if last is not None and first > last + 1:
                stats["gaps"] += 1
            for k in range(len(items)):
                arrivals.setdefault(first + k, now)
            stats["frames"] += 1
            last = first + len(items) - 1
        stats["last"] = last


async def listen(args: argparse.Namespace) -> dict[str, Any]:
    since = "" if args.since is None else f"?since={args.since}"
    counters: list[tuple[asyncio.Transport, CountingProtocol]] = []
    failed = 0
    # Connect in waves so the server's accept queue is not flooded.
    for start in range(0, args.clients - args.sample, 200):
        n = min(200, args.clients - args.sample - start)
        results = await asyncio.gather(
            *(open_counting(args.url, since) for _ in range(n)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
            else:
                counters.append(r)
    stop = asyncio.Event()
    arrivals: dict[int, float] = {}
    stats: ListenStats = {"gaps": 0, "resyncs": 0, "frames": 0, "last": None}
    samples = [
        asyncio.create_task(sampled_listener(args.url, args.since, stop, arrivals, stats))
        for _ in range(args.sample)
    ]
    print(json.dumps({"ready": len(counters) + args.sample, "failed": failed}), flush=True)
    await asyncio.sleep(args.duration)
    stop.set()
    await asyncio.gather(*samples, return_exceptions=True)
    per_client = [p.bytes for _, p in counters]
    dropped = sum(p.closed for _, p in counters)
    for t, _ in counters:
        t.close()
    return {
        "connected": len(counters) + args.sample,
        "failed": failed,
        "dropped": dropped,
        "bytes": per_client,
        "arrivals": arrivals,
        **stats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("place")
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ack-sample", type=float, default=0.0)
    p.add_argument(
        "--rate", type=float, default=0.0, help="total placements/s (0: as fast as possible)"
    )
    p = sub.add_parser("event", help="each placement a new user from a new address")
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--users", type=int, default=100_000, help="tokens signed beforehand")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rate", type=float, default=0, help="placements/s (0: as fast as answered)")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("listen")
    p.add_argument("--url", required=True, help="ws://host:port/ws")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--sample", type=int, default=5)
    p.add_argument("--since", type=int, default=None)
    p.add_argument("--duration", type=float, default=10)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    run = {"place": place, "event": event, "listen": listen}[args.command]
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
