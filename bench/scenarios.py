"""Each benchmark: start what it measures, drive it from other processes, return figures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
from harness.servers import PostgresServer

from bench.stack import SECRET, Distributed, Embedded, cpu_seconds, cpu_split, rss
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


# -- a real event's load ---------------------------------------------------------------

EVENT_COOLDOWN = "300"  # the default: a user, and an address, place once per 5 minutes


def process_kinds(stack: Stack, postgres: PostgresServer | None) -> dict[str, list[int]]:
    """The processes of a stack by kind, for CPU accounting: API (with the page and, in
    embedded mode, everything), persister, realtime, nginx, Redis, PostgreSQL."""
    if isinstance(stack, Embedded):
        return {"api": stack.pids()}
    kinds: dict[str, list[int]] = {}
    for name, proc in stack.cluster.procs.items():
        kind = name.rstrip("0123456789")
        kinds.setdefault(kind, []).append(proc.pid)
    if stack.redis.proc is not None:
        kinds["redis"] = [stack.redis.proc.pid]
    if postgres is not None:
        pidfile = postgres.dir / "data" / "postmaster.pid"
        kinds["postgresql"] = [int(pidfile.read_text().split()[0])]
    return kinds


def cpu_by_kind(kinds: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system, from /proc) so far of each kind's processes and their
    children (nginx's workers, PostgreSQL's backends)."""
    out = {}
    for kind, pids in kinds.items():
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        out[kind] = total
    return out


def event_placements(
    stack: Stack,
    postgres: PostgresServer | None,
    *,
    connections: int,
    duration: float,
    expected_rate: float = 30_000,
) -> dict[str, Any]:
    """Placements as in a real event: each from a fresh user and a fresh address, with
    the default cooldown on (``EVENT_COOLDOWN``), through nginx in distributed mode;
    placements/s, latency and the CPU each kind of process spent per placement."""
    kinds = process_kinds(stack, postgres)
    before = cpu_by_kind(kinds)
    gen = loadgen(
        "event", "--url", stack.url, "--secret", SECRET,
        "--users", str(int(expected_rate * (duration + 1))),
        "--connections", str(connections), "--duration", str(duration), "--warmup", "1",
    )  # fmt: skip
    result = collect(gen)
    after = cpu_by_kind(kinds)
    placed = max(1, result["ok_total"])
    return {
        "placed_per_s": result["placed_per_s"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "errors": result["error"],
        "refused": result["cooldown"],
        "exhausted": result["exhausted"],
        "cpu_us": {
            **{k: (after[k] - before[k]) / placed * 1e6 for k in kinds},
            "load generator": result["cpu_seconds"] / placed * 1e6,
        },
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
    user_before, system_before = cpu_split(stack.realtime_pids())
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
    user_after, system_after = cpu_split(stack.realtime_pids())
    system_used = system_after - system_before
    cpu_used = user_after - user_before + system_used
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
        "sends_per_s": sends / duration,
        "kernel_share_of_send": system_used / max(cpu_used, 1e-9),
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


_BOARD_SEEDS = itertools.count(1)  # the event scenario's users are seed 0


def board_fetch(stack: Distributed, duration: float, placing: int = 0) -> dict[str, Any]:
    """GET /api/board direct, through nginx's cache, and nginx serving the same bytes;
    with ``placing`` > 0, while a real event's placements (each a new user, the
    cooldown on) run through nginx at that rate, for all three alike."""
    import urllib.request

    static = Path(stack.cluster.run_dir or tempfile.mkdtemp()) / "board.bin"
    with urllib.request.urlopen(stack.api_urls[0] + "/api/board") as r:
        static.write_bytes(r.read())
    # The ceiling: a second, plain nginx serving the same bytes as a file.
    static_url = _static_nginx(static)
    gen = None
    if placing:
        span = 3 * (duration + 1) + 2  # the three wrk runs and their start-up
        gen = loadgen(
            "event", "--url", stack.url, "--secret", SECRET,
            "--users", str(int(placing * (span + 2))), "--connections", "128",
            "--rate", str(placing), "--duration", str(span), "--warmup", "1",
            "--seed", str(next(_BOARD_SEEDS)),  # users of their own each run: no cooldown
        )  # fmt: skip
        time.sleep(1.5)  # its tokens signed and its placements running
    try:
        out: dict[str, Any] = {
            "direct": wrk(stack.api_urls[0] + "/api/board", duration),
            "nginx": wrk(stack.url + "/api/board", duration),
            "static": wrk(static_url, duration),
            "bytes": static.stat().st_size,
        }
    finally:
        placed = collect(gen) if gen is not None else None
    if placed is not None:
        out["placing"] = {"placed_per_s": placed["placed_per_s"], "errors": placed["error"],
                          "refused": placed["cooldown"]}  # fmt: skip
    return out


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


def redis_ceiling(duration_requests: int = 200_000, *, cooldown_ms: str = "0") -> dict[str, Any]:
    """``redis-benchmark`` running the placement Lua script, no HTTP, no PostgreSQL: with
    the cooldown off, or (``cooldown_ms``) on for the user and the address as in a real
    event, each call a random user and address of a million."""
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
                "7",
                keys.BOARD,
                keys.SEQ,
                keys.STREAM,
                keys.EPOCH,
                keys.POLICY,
                keys.COOLDOWN + "__rand_int__",
                keys.ADDRESS_COOLDOWN + "__rand_int__",
                cooldown_ms,
                cooldown_ms,
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
    # Keyframes as the persister keeps them, the newest a whole interval back: the
    # longest log tail a cold start reads.
    keyframes = [k for k in history_keyframes(history) if k[0] <= n - KEYFRAME_EVERY]

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
        await conn.executemany(
            "INSERT INTO snapshots (seq, board, codec) VALUES ($1, $2, 'zlib')", keyframes
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
            "tail": n - max([0, *(k[0] for k in keyframes)]),
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
    # Keyframes as the store keeps them, the newest a whole interval back: the longest
    # log tail a restart reads.
    keyframes = [k for k in history_keyframes(history) if k[0] <= n - KEYFRAME_EVERY]
    db.executemany("INSERT INTO snapshots (seq, board, codec) VALUES (?, ?, 'zlib')", keyframes)
    db.commit()
    db.close()
    t0 = time.perf_counter()
    server = Embedded(data_dir=data_dir).start()
    took = time.perf_counter() - t0
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"restart_s": took, "tail": n - max([0, *(k[0] for k in keyframes)])}


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


# -- history: past boards, keyframes' disk cost, timelapses ---------------------------


KEYFRAME_EVERY = 25_000  # the stores' default snapshot_every: one keyframe per interval
HISTORY_T0 = 1_700_000_000.0  # the synthetic history's first placement (unix seconds)
HISTORY_STEP = 0.001  # seconds between placements: 1,000/s
HISTORY_USERS = 5000


def _history_rows(
    h: SynthHistory, start: int, stop: int, *, pg_epoch: int | None = None
) -> list[tuple[Any, ...]]:
    """Log rows for placements ``start+1 .. stop`` as the stores write them: SQLite's
    ``(seq, idx, color, user_id, ts)`` with unix seconds, or PostgreSQL's with a
    ``datetime`` and the epoch column (``pg_epoch``)."""
    from datetime import UTC, datetime

    idx = h.idx[start:stop].tolist()
    col = h.col[start:stop].tolist()
    if pg_epoch is None:
        return [
            (s + 1, i, c, f"u{s % HISTORY_USERS}", HISTORY_T0 + s * HISTORY_STEP)
            for s, i, c in zip(range(start, stop), idx, col, strict=True)
        ]
    fromts = datetime.fromtimestamp
    return [
        (s + 1, i, c, f"u{s % HISTORY_USERS}", fromts(HISTORY_T0 + s * HISTORY_STEP, UTC),
         pg_epoch)
        for s, i, c in zip(range(start, stop), idx, col, strict=True)
    ]  # fmt: skip


def history_keyframes(h: SynthHistory, every: int = KEYFRAME_EVERY) -> Iterator[tuple[int, bytes]]:
    """``(seq, keyframe)`` every ``every`` placements, as the stores write them: the
    packed board after that seq, encoded with :func:`~openplace.core.timeline.encode_keyframe`
    (codec :data:`~openplace.core.timeline.KEYFRAME_CODEC`)."""
    from openplace.core.board import Board, Geometry, apply_arrays
    from openplace.core.timeline import encode_keyframe

    board = Board(Geometry(*GEOMETRY_1000))
    for seq in range(every, h.n + 1, every):
        apply_arrays(board.data, h.idx[seq - every : seq], h.col[seq - every : seq])
        yield seq, encode_keyframe(board.snapshot())


def history_board_at(h: SynthHistory, seq: int) -> bytes:
    """The packed board right after ``seq``, replayed from the start (the check)."""
    from openplace.core.board import Board, Geometry, apply_arrays

    board = Board(Geometry(*GEOMETRY_1000))
    apply_arrays(board.data, h.idx[:seq], h.col[:seq])
    return board.snapshot()


def _pixels_and_users(h: SynthHistory) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """The latest placement per pixel ``(idx, color, seq)`` and per user number (its
    last seq): what the stores keep beside the log."""
    import numpy as np

    rev_idx, rev_pos = np.unique(h.idx[::-1], return_index=True)
    last = h.n - 1 - rev_pos  # 0-based position of each pixel's last placement
    pixels = list(zip(rev_idx.tolist(), h.col[last].tolist(), (last + 1).tolist(), strict=True))
    # Placement s (0-based) is user s % HISTORY_USERS's: each user's last one.
    users = {u: u + (h.n - 1 - u) // HISTORY_USERS * HISTORY_USERS
             for u in range(min(HISTORY_USERS, h.n))}  # fmt: skip
    return pixels, users


def build_embedded_history(h: SynthHistory, data_dir: Path, say: Say) -> dict[str, Any]:
    """An embedded data dir holding ``h``: the store creates its schema (opened and
    closed once), then the log and its keyframes are bulk-loaded. The by-pixel index
    is dropped while loading and created again (the same definition) at the end."""
    import sqlite3

    from openplace.core.board import Geometry
    from openplace.core.timeline import KEYFRAME_CODEC
    from openplace.embedded.store import EmbeddedStore

    t0 = time.perf_counter()
    path = data_dir / "openplace.sqlite3"

    async def create() -> None:
        store = EmbeddedStore(path, Geometry(*GEOMETRY_1000), 0, snapshot_every=KEYFRAME_EVERY)
        await store.open()
        await store.close()

    asyncio.run(create())
    db = sqlite3.connect(path, isolation_level=None)
    indexes = [sql for (sql,) in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name IN "
        "('placements_by_pixel', 'placements_by_user')"
    )]  # fmt: skip
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("DROP INDEX placements_by_pixel")
    db.execute("DROP INDEX placements_by_user")
    frames = history_keyframes(h)
    step = max(BATCH, h.n // 20)
    for start in range(0, h.n, step):
        stop = min(h.n, start + step)
        db.execute("BEGIN")
        for s in range(start, stop, BATCH):
            db.executemany(
                "INSERT INTO placements VALUES (?, ?, ?, ?, ?)",
                _history_rows(h, s, min(stop, s + BATCH)),
            )
        for seq, frame in frames:  # the keyframes up to ``stop``
            db.execute(
                "INSERT INTO snapshots (seq, board, codec) VALUES (?, ?, ?)",
                (seq, frame, KEYFRAME_CODEC),
            )
            if seq + KEYFRAME_EVERY > stop:
                break
        db.execute("COMMIT")
        say(f"history: SQLite {stop:,} / {h.n:,} placements ({time.perf_counter() - t0:.0f} s)")
    say("history: SQLite indexing the log by pixel and by user")
    for index_sql in indexes:
        db.execute(index_sql)
    db.execute("PRAGMA journal_mode=WAL")
    sizes = _sqlite_sizes(db)
    db.close()
    return {"build_s": time.perf_counter() - t0, **sizes}


def _sqlite_sizes(db: Any) -> dict[str, Any]:
    """Bytes on disk of the keyframes and of the log (its table and indexes)."""

    def pages(*names: str) -> int:
        marks = ",".join("?" * len(names))
        row = db.execute(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", names)
        return int(row.fetchone()[0] or 0)

    return {
        "keyframes_bytes": pages("snapshots"),
        "log_bytes": pages("placements", "placements_by_pixel", "placements_by_user"),
        "log_table_bytes": pages("placements"),
        "keyframes": int(db.execute("SELECT count(*) FROM snapshots").fetchone()[0]),
    }


async def build_postgres_history(h: SynthHistory, url: str, say: Say) -> dict[str, Any]:
    """A PostgreSQL database holding ``h`` as the persister leaves it: the schema
    migrated, the log (epoch 1, as after the first restore) and its keyframes copied
    in, the latest state per pixel and per user, meta ``board_uid``, ``size`` and
    ``epoch``. The by-pixel index is dropped while copying and created again."""
    from datetime import UTC, datetime

    import asyncpg

    from openplace.core.timeline import KEYFRAME_CODEC
    from openplace.distributed.schema import migrate, set_meta

    t0 = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await set_meta(conn, "board_uid", "benchhist")
        await set_meta(conn, "size", "1000x1000")
        await set_meta(conn, "epoch", "1")
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'")
        await conn.execute("DROP INDEX placements_by_pixel; DROP INDEX placements_by_user")
        frames = history_keyframes(h)
        step = max(BATCH, h.n // 20)
        for start in range(0, h.n, step):
            stop = min(h.n, start + step)
            for s in range(start, stop, BATCH):
                await conn.copy_records_to_table(
                    "placements",
                    records=_history_rows(h, s, min(stop, s + BATCH), pg_epoch=1),
                    columns=["seq", "idx", "color", "user_id", "ts", "epoch"],
                )
            rows = []
            for seq, frame in frames:
                rows.append((seq, frame, KEYFRAME_CODEC))
                if seq + KEYFRAME_EVERY > stop:
                    break
            if rows:
                await conn.copy_records_to_table(
                    "snapshots", records=rows, columns=["seq", "board", "codec"]
                )
            say(
                f"history: PostgreSQL {stop:,} / {h.n:,} placements "
                f"({time.perf_counter() - t0:.0f} s)"
            )
        say("history: PostgreSQL indexing the log by pixel and by user")
        await conn.execute("CREATE INDEX placements_by_pixel ON placements (idx, seq)")
        await conn.execute("CREATE INDEX placements_by_user ON placements (user_id, seq)")
        pixels, users = _pixels_and_users(h)

        def when(s: int) -> datetime:
            return datetime.fromtimestamp(HISTORY_T0 + s * HISTORY_STEP, UTC)

        await conn.copy_records_to_table(
            "pixels",
            records=[(i, c, f"u{(s - 1) % HISTORY_USERS}", when(s - 1), s) for i, c, s in pixels],
            columns=["idx", "color", "user_id", "ts", "seq"],
        )
        await conn.copy_records_to_table(
            "users",
            records=[(f"u{u}", when(s)) for u, s in users.items()],
            columns=["user_id", "last_placed"],
        )
        await conn.execute("VACUUM ANALYZE placements")
        await conn.execute("VACUUM ANALYZE snapshots")
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('snapshots') AS k, "
            "pg_total_relation_size('placements') AS l, pg_relation_size('placements') AS t, "
            "(SELECT count(*) FROM snapshots) AS n"
        )
    finally:
        await conn.close()
    return {
        "build_s": time.perf_counter() - t0,
        "keyframes_bytes": int(sizes["k"]),
        "log_bytes": int(sizes["l"]),
        "log_table_bytes": int(sizes["t"]),
        "keyframes": int(sizes["n"]),
    }


def past_boards(
    url: str, h: SynthHistory, requests: int, seed: int, check: int = 3
) -> dict[str, Any]:
    """``GET /api/board?seq=N`` for ``requests`` different random N over the whole
    history, one at a time on a keep-alive connection, gzip accepted as a browser does;
    the first ``check`` answers are compared with the board replayed from the log."""
    import gzip
    import http.client
    import urllib.parse

    import numpy as np

    rng = np.random.default_rng(seed)
    seqs = (rng.choice(h.n, size=min(requests, h.n), replace=False) + 1).tolist()
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    lat: list[float] = []
    sizes: list[int] = []
    errors = 0
    try:
        for i, seq in enumerate(seqs):
            t0 = time.perf_counter()
            conn.request("GET", f"/api/board?seq={seq}", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            body = resp.read()
            lat.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(body))
            if resp.status != 200 or resp.getheader("X-Seq") != str(seq):
                errors += 1
                continue
            if i < check:
                if resp.getheader("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if body != history_board_at(h, seq):
                    raise RuntimeError(f"GET /api/board?seq={seq} is not the replayed board")
    finally:
        conn.close()
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))]

    return {
        "requests": len(lat),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": lat[-1],
        "mean_bytes": statistics.mean(sizes),
        "errors": errors,
    }


def timelapse(archive: Any, n: int, frames: int, fps: int = 30) -> dict[str, Any]:
    """Render ``frames`` frames of placements ``1 .. n`` at 1000 x 1000 to an .mp4 with
    :func:`openplace.history.video.render`, reading ``archive``; frames/s and wall time."""
    from openplace.core.timeline import Region, frame_seqs
    from openplace.history.timeline import Timeline
    from openplace.history.video import Plan, render

    out_dir = Path(tempfile.mkdtemp(prefix="op-bench-video-"))
    out = out_dir / "timelapse.mp4"

    async def run() -> tuple[int, float]:
        await archive.open()
        try:
            timeline = Timeline(archive)
            plan = Plan(0, n, frame_seqs(0, n, frames), fps, Region.whole(timeline.geometry))
            t0 = time.perf_counter()
            written = await render(timeline, plan, out)
            return written, time.perf_counter() - t0
        finally:
            await archive.close()

    try:
        written, took = asyncio.run(run())
        size = out.stat().st_size
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "placements": n,
        "frames": written,
        "fps": fps,
        "video_s": written / fps,
        "render_s": took,
        "frames_per_s": written / took,
        "mp4_bytes": size,
    }


ROLLBACK_PLACEMENTS = 10_000


def rollback(url: str, h: SynthHistory, run: int) -> dict[str, Any]:
    """``POST /api/admin/rollback`` of every placement of as many users of the synthetic
    history as made 10,000 placements (5 users of a 10M history, 2,000 each, spread over
    the whole of it; another set of users each run), as a moderator sends it: the whole
    request, from the plan to the durable answer."""
    from openplace.auth.moderators import Moderator, ModeratorSigner

    k = min(HISTORY_USERS, -(-ROLLBACK_PLACEMENTS // max(1, h.n // HISTORY_USERS)))
    users = [f"u{(k * run + j) % HISTORY_USERS}" for j in range(k)]
    token = ModeratorSigner(SECRET).issue(Moderator("bench", time.time(), None))
    body = json.dumps({"users": users, "since": "2023-01-01T00:00:00Z"}).encode()
    request = urllib.request.Request(
        url + "/api/admin/rollback", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        effect = json.loads(answer.read())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "placements_undone": effect["placements_undone"],
            "pixels_changed": effect["pixels_changed"], "users": k}  # fmt: skip


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work shares this machine's cores."""
    return [round(x, 2) for x in os.getloadavg()]


def history_embedded(
    h: SynthHistory, *, requests: int, runs: int, video_n: int, video_frames: int, say: Say
) -> dict[str, Any]:
    """The history benchmarks on an embedded data dir built from ``h``."""
    from openplace.core.board import Geometry
    from openplace.embedded.archive import SqliteArchive

    data_dir = Path(tempfile.mkdtemp(prefix="op-bench-history-"))
    try:
        say(f"history: building an embedded history of {h.n:,} placements")
        out: dict[str, Any] = {"placements": h.n, "build": build_embedded_history(h, data_dir, say)}
        out["load_average_before"] = load_average()
        say(f"history: embedded GET /api/board?seq=N, {requests} random N "
            f"(load average {out['load_average_before']})")  # fmt: skip
        stack = Embedded(data_dir=data_dir).start()
        try:
            out["past_board"] = median_of(
                [past_boards(stack.url, h, requests, seed=run) for run in range(runs)]
            )
            say("history: embedded rollbacks of 10,000 placements")
            out["rollback"] = median_of([rollback(stack.url, h, run) for run in range(runs)])
        finally:
            stack.stop()
        say(f"history: embedded timelapse, {video_frames} frames of {video_n:,} placements")
        out["timelapse"] = timelapse(
            SqliteArchive(data_dir / "openplace.sqlite3", Geometry(*GEOMETRY_1000)),
            video_n, video_frames,
        )  # fmt: skip
        out["load_average_after"] = load_average()
        say(f"history: load average {out['load_average_after']}")
        return out
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def history_distributed(
    h: SynthHistory,
    postgres: PostgresServer,
    *,
    requests: int,
    runs: int,
    video_n: int,
    video_frames: int,
    say: Say,
) -> dict[str, Any]:
    """The history benchmarks on a PostgreSQL database built from ``h``, served by a
    cluster (persister, one API process, one realtime process, nginx)."""
    from openplace.core.board import Geometry
    from openplace.distributed.archive import PostgresArchive

    url = asyncio.run(postgres.new_database())
    try:
        say(f"history: building a distributed history of {h.n:,} placements")
        out: dict[str, Any] = {
            "placements": h.n,
            "build": asyncio.run(build_postgres_history(h, url, say)),
        }
        out["load_average_before"] = load_average()
        say(f"history: distributed GET /api/board?seq=N, {requests} random N "
            f"(load average {out['load_average_before']})")  # fmt: skip
        stack = Distributed(api=1, realtime=1).start(postgres, url)
        try:
            head = json.loads(_get(stack.api_urls[0] + "/healthz"))["seq"]
            if head != h.n:  # the persister must have found the history whole
                raise RuntimeError(f"the cluster serves seq {head}, the history holds {h.n}")
            out["past_board"] = median_of(
                [past_boards(stack.api_urls[0], h, requests, seed=run) for run in range(runs)]
            )
            say("history: distributed rollbacks of 10,000 placements")
            out["rollback"] = median_of(
                [rollback(stack.api_urls[0], h, run) for run in range(runs)]
            )
        finally:
            stack.stop()
        say(f"history: distributed timelapse, {video_frames} frames of {video_n:,} placements")
        out["timelapse"] = timelapse(
            PostgresArchive(Geometry(*GEOMETRY_1000), database_url=url), video_n, video_frames
        )
        out["load_average_after"] = load_average()
        say(f"history: load average {out['load_average_after']}")
        return out
    finally:
        asyncio.run(_drop_database(postgres, url))


async def _drop_database(postgres: PostgresServer, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()
