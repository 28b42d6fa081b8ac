"""Each benchmark: start what it measures, drive it from other processes, return figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from harness.servers import PostgresServer

from bench.stack import SECRET, Distributed, Embedded, cpu_seconds, rss
from openplace.distributed.cluster import wait_http

Say = Callable[[str], None]
Stack = Embedded | Distributed


def loadgen(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def collect(proc: subprocess.Popen[bytes], timeout: float = 600) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed: {err.decode()[-2000:]}")
    return cast(dict[str, Any], json.loads(lines[-1]))


# -- placements through HTTP ----------------------------------------------------------


def placements(stack: Stack, *, users: int, duration: float, procs: int) -> dict[str, Any]:
    """Closed-loop users on every API process; acknowledged placements per second."""
    urls = stack.api_urls
    gens = [
        loadgen(
            "place",
            "--url",
            urls[i % len(urls)],
            "--secret",
            SECRET,
            "--users",
            str(users // procs),
            "--duration",
            str(duration),
            "--warmup",
            "1",
            "--seed",
            str(i),
        )
        for i in range(procs)
    ]
    results = [collect(g) for g in gens]
    return {
        "placed_per_s": sum(r["placed_per_s"] for r in results),
        "p50_ms": max(r["latency_ms"]["p50"] for r in results),
        "p99_ms": max(r["latency_ms"]["p99"] for r in results),
        "errors": sum(r["error"] for r in results),
    }


# -- websocket fan-out ----------------------------------------------------------------


def fanout(
    stack: Stack, *, clients: int, rate: int, duration: float, sample: int = 8
) -> dict[str, Any]:
    """``clients`` listeners; placements at ``rate``/s; delivery, latency, memory."""
    ws_urls = stack.ws_urls
    per_proc = 5000
    nprocs = max(len(ws_urls), -(-clients // per_proc))
    rss_before = rss(stack.realtime_pids())
    listeners = []
    for i in range(nprocs):
        n = clients // nprocs + (1 if i < clients % nprocs else 0)
        listeners.append(
            loadgen(
                "listen",
                "--url",
                ws_urls[i % len(ws_urls)],
                "--clients",
                str(n),
                "--sample",
                str(max(1, sample // nprocs)),
                "--duration",
                str(duration + 4),
            )
        )
    ready = 0
    for proc in listeners:  # each prints {"ready": n} once connected
        assert proc.stdout is not None
        line = proc.stdout.readline()
        ready += json.loads(line)["ready"] if line.startswith(b"{") else 0
    time.sleep(1.0)
    rss_idle = rss(stack.realtime_pids())
    cpu_before = cpu_seconds(stack.realtime_pids())
    gen_before = cpu_seconds([p.pid for p in listeners])
    # A paced placer: users = rate / 20 each placing 20/s would be a closed loop; instead
    # run enough users with cooldown 0 and let the pace come from a rate-limited loop.
    placer = loadgen(
        "place",
        "--url",
        stack.api_urls[0],
        "--secret",
        SECRET,
        "--users",
        str(max(4, rate // 10)),
        "--duration",
        str(duration),
        "--warmup",
        "1",
        "--ack-sample",
        "1",
        "--rate",
        str(rate),
    )
    placed = collect(placer)
    cpu_used = cpu_seconds(stack.realtime_pids()) - cpu_before
    gen_used = cpu_seconds([p.pid for p in listeners]) - gen_before
    results = [collect(p) for p in listeners]
    acks = {int(k): v for k, v in placed["acks"].items()}
    lat: list[float] = []
    gaps = 0
    for r in results:
        gaps += r["gaps"]
        for seq, t in r["arrivals"].items():
            if int(seq) in acks:
                lat.append((t - acks[int(seq)]) * 1000)
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else float("nan")

    connected = sum(r["connected"] for r in results)
    dropped = sum(r["dropped"] for r in results)
    # The sampled clients decode every frame: they say how many placements arrived. Every
    # byte-counting client must have received at least 5 bytes (one record) for each.
    received = min((len(r["arrivals"]) for r in results), default=0)
    samples_per_proc = max(1, sample // nprocs)
    frames = statistics.median(r["frames"] / samples_per_proc for r in results)
    sends = frames * connected  # frames each client got, times clients
    short = sum(1 for r in results for b in r["bytes"] if b < 5 * received)
    return {
        "clients": connected,
        "ready": ready,
        "dropped": dropped,
        "short": short,
        "placed_per_s": placed["placed_per_s"],
        "delivered_per_client_per_s": received / duration if short == 0 else float("nan"),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "gaps": gaps,
        "kib_per_conn": (rss_idle - rss_before) / max(1, ready) / 1024,
        # Where the time goes: the fan-out processes' CPU per websocket send, and the
        # load generator's (which shares this machine's two cores).
        "us_per_send": cpu_used / max(1, sends) * 1e6,
        "realtime_cpu_share": cpu_used / duration,
        "loadgen_cpu_share": gen_used / duration,
    }


# -- board fetch ----------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL
    )
    return shutil.which("wrk") or "wrk"


def wrk(url: str, duration: float, connections: int = 64, gzip: bool = False) -> dict[str, Any]:
    cmd = [ensure_wrk(), "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if gzip:
        cmd[1:1] = ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no Requests/sec: {out[-2000:]}")
    rps = float(found.group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(m: re.Match[str] | None) -> float:
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def board_fetch(stack: Distributed, duration: float) -> dict[str, Any]:
    """GET /api/board direct, through nginx's cache, and nginx serving the same bytes."""
    import urllib.request

    static = Path(stack.cluster.run_dir or tempfile.mkdtemp()) / "board.bin"
    with urllib.request.urlopen(stack.api_urls[0] + "/api/board") as r:
        static.write_bytes(r.read())
    # The ceiling: a second, plain nginx serving the same bytes as a file.
    static_url = _static_nginx(static)
    return {
        "direct": wrk(stack.api_urls[0] + "/api/board", duration),
        "nginx": wrk(stack.url + "/api/board", duration),
        "static": wrk(static_url, duration),
        "bytes": static.stat().st_size,
    }


_NGINX_STATIC: list[subprocess.Popen[bytes]] = []


def _static_nginx(path: Path) -> str:
    from harness.servers import free_port

    from openplace.distributed.cluster import find_nginx

    port = free_port()
    conf = path.parent / "static-nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}
worker_processes auto; pid {path.parent}/static-nginx.pid; error_log {path.parent}/static.err;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nodelay on; default_type application/octet-stream;
  client_body_temp_path {path.parent}/sb; proxy_temp_path {path.parent}/sp;
  fastcgi_temp_path {path.parent}/sf; uwsgi_temp_path {path.parent}/su;
  scgi_temp_path {path.parent}/ss;
  server {{ listen 127.0.0.1:{port}; root {path.parent}; }} }}
""")
    proc = subprocess.Popen(
        [find_nginx(), "-c", str(conf), "-p", str(path.parent), "-g", "daemon off;"]
    )
    _NGINX_STATIC.append(proc)
    wait_http(f"http://127.0.0.1:{port}/{path.name}", 30)
    return f"http://127.0.0.1:{port}/{path.name}"


def stop_static_nginx() -> None:
    while _NGINX_STATIC:
        p = _NGINX_STATIC.pop()
        p.terminate()
        p.wait()


# -- ceiling: the placement script straight against Redis ------------------------------


def redis_ceiling(duration_requests: int = 200_000) -> dict[str, Any]:
    """``redis-benchmark`` running the placement Lua script, no HTTP, no PostgreSQL."""
    import redis as redis_sync
    from harness.servers import RedisServer

    from openplace.distributed import keys

    server = RedisServer().start()
    try:
        r = redis_sync.Redis(port=server.port)
        sha = r.script_load(keys.PLACE_LUA)
        r.set(keys.EPOCH, "bench.1")
        r.set(keys.BOARD, bytes(500_000))
        r.close()
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(server.port),
                "-n",
                str(duration_requests),
                "-c",
                "50",
                "-r",
                "1000000",
                "--csv",
                "EVALSHA",
                sha,
                "5",
                keys.BOARD,
                keys.SEQ,
                keys.STREAM,
                keys.EPOCH,
                keys.COOLDOWN + "__rand_int__",
                "0",
                "__rand_int__",
                "5",
                "bench",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        row = [ln for ln in out.splitlines() if ln.startswith('"EVALSHA')][-1]
        cells = [c.strip('"') for c in row.split(",")]
        return {"rps": float(cells[1]), "p50_ms": float(cells[4]), "p99_ms": float(cells[6])}
    finally:
        server.stop()


# -- restore and restart --------------------------------------------------------------


GEOMETRY_1000 = (1000, 1000)
BATCH = 100_000


@dataclass
class SynthHistory:
    """``n`` random placements on a 1000 x 1000 board, and the board snapshot a store
    would hold after them (one every 100,000 placements, so the tail is < 100,000)."""

    n: int
    idx: Any
    col: Any
    snapshot_at: int
    snapshot: bytes

    @classmethod
    def make(cls, n: int, seed: int = 1) -> SynthHistory:
        import numpy as np

        from openplace.core.board import Board, Geometry, apply_arrays

        rng = np.random.default_rng(seed)
        idx = rng.integers(0, 1_000_000, n, dtype=np.int64)
        col = rng.integers(0, 16, n, dtype=np.int64)
        snapshot_at = n - (n % BATCH or BATCH) if n > BATCH else 0
        board = Board(Geometry(*GEOMETRY_1000))
        apply_arrays(board.data, idx[:snapshot_at], col[:snapshot_at])
        return cls(n, idx, col, snapshot_at, board.snapshot())

    def batches(self, ts: object) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
        """``(placed so far, rows)``: log rows ``(seq, idx, color, user, ts)`` in batches."""
        for start in range(0, self.n, BATCH):
            stop = min(self.n, start + BATCH)
            rows = [
                (s + 1, int(self.idx[s]), int(self.col[s]), f"u{s % 5000}", ts)
                for s in range(start, stop)
            ]
            yield stop, rows

    def board(self) -> bytes:
        """The board after every placement."""
        from openplace.core.board import Board, Geometry, apply_arrays

        board = Board(Geometry(*GEOMETRY_1000))
        apply_arrays(board.data, self.idx, self.col)
        return board.snapshot()


def restore_distributed(postgres: PostgresServer, n: int, say: Say) -> dict[str, Any]:
    """PostgreSQL with ``n`` placements (the log and the snapshots the persister keeps);
    time a cold persister start and the Redis restore itself."""
    from datetime import UTC, datetime

    import asyncpg
    import redis.asyncio as aioredis
    from harness.servers import RedisServer

    from openplace.core.board import Geometry
    from openplace.distributed.persister import Persister
    from openplace.distributed.schema import migrate, set_meta

    history = SynthHistory.make(n)

    async def fill() -> str:
        url = await postgres.new_database()
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await set_meta(conn, "board_uid", "bench")
        await set_meta(conn, "size", "1000x1000")
        for done, rows in history.batches(datetime.now(UTC)):
            await conn.copy_records_to_table(
                "placements", records=rows, columns=["seq", "idx", "color", "user_id", "ts"]
            )
            say(f"restore: wrote {done:,} / {n:,} placements to PostgreSQL")
        if history.snapshot_at:
            await conn.execute(
                "INSERT INTO snapshots VALUES ($1, $2)", history.snapshot_at, history.snapshot
            )
        await conn.close()
        return url

    url = asyncio.run(fill())
    redis = RedisServer().start()

    async def measure() -> dict[str, Any]:
        p = Persister(redis.url, url, Geometry(*GEOMETRY_1000), 300)
        t0 = time.perf_counter()
        await p.connect()
        t1 = time.perf_counter()
        took = await p.restore()
        t2 = time.perf_counter()
        r = aioredis.from_url(redis.url)
        same = (await r.get("op:board")) == history.board()
        await r.aclose()
        await p.close()
        return {
            "load_s": t1 - t0,
            "restore_s": took,
            "cold_total_s": t2 - t0,
            "board_matches": same,
            "tail": n - history.snapshot_at,
        }

    try:
        return asyncio.run(measure())
    finally:
        redis.stop()


def restart_embedded(n: int, say: Say) -> dict[str, Any]:
    """An embedded data dir with ``n`` placements; time until ``openplace serve`` answers."""
    import sqlite3

    from openplace.embedded.store import migrate

    history = SynthHistory.make(n)
    data_dir = Path(tempfile.mkdtemp(prefix="op-bench-restart-"))
    db = sqlite3.connect(data_dir / "openplace.sqlite3")
    migrate(db)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("board_id", "bench"), ("size", "1000x1000")])
    for done, rows in history.batches(time.time()):
        db.executemany("INSERT INTO placements VALUES (?, ?, ?, ?, ?)", rows)
        db.commit()
        say(f"restart: wrote {done:,} / {n:,} placements to SQLite")
    if history.snapshot_at:
        db.execute("INSERT INTO snapshots VALUES (?, ?)", (history.snapshot_at, history.snapshot))
        db.commit()
    db.close()
    t0 = time.perf_counter()
    server = Embedded(data_dir=data_dir).start()
    took = time.perf_counter() - t0
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"restart_s": took, "tail": n - history.snapshot_at}


# -- catch-up -------------------------------------------------------------------------


def catch_up(stack: Stack, behind: int, say: Say) -> dict[str, Any]:
    """Make ``behind`` placements, then time a client resuming from before all of them."""
    from websockets.sync.client import connect

    from openplace.core.wire import decode_frame

    head0 = json.loads(_get(stack.api_urls[0] + "/healthz"))["seq"]
    # Fill quickly with many closed-loop users.
    while True:
        head = json.loads(_get(stack.api_urls[0] + "/healthz"))["seq"]
        if head - head0 >= behind:
            break
        placements(stack, users=200, duration=3, procs=1)
        say(f"catch-up: {head - head0:,} / {behind:,} placements made")
    time.sleep(0.5)
    head = json.loads(_get(stack.api_urls[0] + "/healthz"))["seq"]
    since = head - behind
    t0 = time.perf_counter()
    last = since
    with connect(stack.ws_urls[0] + f"?since={since}", max_size=None, compression=None) as ws:
        while last < head:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                first, items = decode_frame(msg)
                assert first == last + 1, f"gap after {last}: {first}"
                last = first + len(items) - 1
            elif json.loads(msg)["type"] == "resync":
                raise RuntimeError("server answered resync instead of replaying")
    return {"behind": behind, "catch_up_s": time.perf_counter() - t0}


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url) as r:
        body: bytes = r.read()
        return body.decode()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of numeric figures across runs (other values from the first run)."""
    out: dict[str, Any] = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
        elif isinstance(value, dict):
            out[key] = median_of([r[key] for r in runs])
    out["runs"] = len(runs)
    return out
