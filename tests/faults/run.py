"""One run: start a stack, load it, inject faults, heal, settle, check, clean up.

The stack is its own: a PostgreSQL server and a Redis server on free ports (from
``harness.servers``), and an :class:`openplace.distributed.cluster.Cluster` with 2 API processes,
2 realtime processes, an active and a standby persister, and nginx in front. Writers
and websocket clients go through nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
from harness.servers import PostgresServer, RedisServer

from openplace.client import AsyncCanvas, CanvasError
from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.distributed.cluster import Cluster
from tests.conftest import cluster_env
from tests.faults.checker import ClientView, Report, Served, check
from tests.faults.history import History
from tests.faults.load import Follower, Writers
from tests.faults.nemesis import KINDS, Nemesis, Stack


@dataclass
class Config:
    seed: int = 1
    fault_seconds: float = 0.0  # keep injecting this long ...
    rounds: int = 1  # ... and at least this many rounds of every kind
    writers: int = 8
    clients: int = 4
    width: int = 1000
    height: int = 1000
    warmup: float = 2.0  # load before the first fault
    gap: tuple[float, float] = (1.0, 3.0)  # quiet time before each fault
    after: float = 2.0  # load after the last fault
    settle_timeout: float = 30.0
    ack_timeout: float = 10.0  # OPENPLACE_ACK_TIMEOUT_SECONDS
    drain_seconds: float = 0.3  # OPENPLACE_DRAIN_SECONDS
    keep_logs: bool = False  # keep the cluster's logs if the check fails
    kinds: tuple[str, ...] = KINDS  # fault kinds to inject
    pause: tuple[float, float] = (1.0, 2.0)  # seconds a SIGSTOP lasts
    say: Callable[[str], None] = field(default=print)


async def run(config: Config) -> Report:
    say = config.say
    geometry = Geometry(config.width, config.height)
    history = History()
    pg = PostgresServer()
    redis = RedisServer()
    cluster: Cluster | None = None
    nemesis: Nemesis | None = None
    writers: Writers | None = None
    followers: list[Follower] = []
    tasks: list[asyncio.Task[None]] = []
    keep = False
    try:
        started = time.monotonic()
        await asyncio.to_thread(pg.start)
        db = await pg.new_database()
        await asyncio.to_thread(redis.start)
        env = cluster_env(
            redis.url, db,
            OPENPLACE_COOLDOWN_SECONDS="0",
            OPENPLACE_WIDTH=str(config.width),
            OPENPLACE_HEIGHT=str(config.height),
            OPENPLACE_ACK_TIMEOUT_SECONDS=str(config.ack_timeout),
            OPENPLACE_DRAIN_SECONDS=str(config.drain_seconds),
        )  # fmt: skip
        cluster = Cluster(Settings.from_env(env), api=2, realtime=2, standby=1, env=env)
        await asyncio.to_thread(cluster.start)
        say(f"stack up in {time.monotonic() - started:.1f} s at {cluster.url} "
            f"(logs {cluster.run_dir}); seed {config.seed}")  # fmt: skip

        followers = [Follower(f"c{i}", cluster.url) for i in range(config.clients)]
        tasks = [asyncio.create_task(f.run()) for f in followers]
        writers = Writers(cluster.url, geometry, history, config.writers, config.seed,
                          timeout=config.ack_timeout + 5)  # fmt: skip
        history.t0 = time.monotonic()
        writers.start()
        await asyncio.sleep(config.warmup)

        nemesis = Nemesis(Stack(pg, redis, cluster, db), history, config.seed, say, config.pause)
        await nemesis.run(config.fault_seconds, config.gap, config.kinds, config.rounds)
        await asyncio.sleep(config.after)
        await writers.finish()
        say(f"{history.rel(time.monotonic()):>9} s  load stopped after {len(history.ops)} "
            "operations; settling")  # fmt: skip

        served = await _settle(cluster.url, db, config.settle_timeout)
        await _converge(followers, tasks, served, config.settle_timeout)
        served = await _served(cluster.url)
        conn = await asyncpg.connect(db)
        try:
            log = [tuple(r) for r in await conn.fetch(
                "SELECT seq, idx, color FROM placements ORDER BY seq")]  # fmt: skip
            pixels = [tuple(r) for r in await conn.fetch("SELECT idx, color, seq FROM pixels")]
        finally:
            await conn.close()
        views = [_view(f, t) for f, t in zip(followers, tasks, strict=True)]
        report = check(history, nemesis.faults, log, pixels, served, views, geometry,
                       problems=nemesis.problems, seed=config.seed)  # fmt: skip
        if writers.exhausted:
            report.notes.append("every pixel of the board was used: the load stopped early")
        report.notes.append("clients: " + "; ".join(f"{v.name} {v.summary}" for v in views))
        keep = config.keep_logs and not report.passed
        if keep:
            report.notes.append(f"cluster logs kept in {cluster.run_dir}")
        return report
    except BaseException:
        keep = config.keep_logs  # a run that broke: its logs say why
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if writers is not None:
            await writers.cancel()
        if nemesis is not None:
            nemesis.heal()
        else:
            redis.resume()
            pg.resume()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop, keep)
            if not keep and cluster.run_dir is not None:
                shutil.rmtree(cluster.run_dir, ignore_errors=True)
        redis.stop()
        with contextlib.suppress(subprocess.CalledProcessError):  # it was down already
            await asyncio.to_thread(pg.stop)


async def _served(url: str) -> Served:
    """``GET /api/board?fresh=``, through the client."""
    async with AsyncCanvas(url, timeout=10) as canvas:
        board = await canvas.board(fresh=True)
        return Served(board.seq, board.board_id or "", board.packed())


async def _settle(url: str, db: str, timeout: float) -> Served:
    """Wait until PostgreSQL holds everything Redis accepted (the served X-Seq equals the
    log's last seq, twice in a row)."""
    deadline = time.monotonic() + timeout
    seen = -1
    served = Served(0, "", b"")
    while time.monotonic() < deadline:
        try:
            served = await _served(url)
            conn = await asyncpg.connect(db, timeout=5)
            try:
                top = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM placements")
            finally:
                await conn.close()
        except (httpx.HTTPError, CanvasError, OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        if top == served.seq:
            if seen == top:
                return served
            seen = top
        await asyncio.sleep(0.2)
    return served


async def _converge(
    followers: list[Follower], tasks: list[asyncio.Task[None]], served: Served, timeout: float
) -> None:
    """Wait until every client is at the server's board and seq (or gave up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(t.done() or (f.board_id == served.board_id and f.last >= served.seq)
               for f, t in zip(followers, tasks, strict=True)):  # fmt: skip
            return
        await asyncio.sleep(0.05)


def _view(f: Follower, task: asyncio.Task[None]) -> ClientView:
    crashed = ""
    if task.done() and not task.cancelled() and task.exception() is not None:
        crashed = repr(task.exception())
    return ClientView(f.name, f.board_id, f.last, f.data(), f.summary(), crashed,
                      f.board_loads, f.resyncs, f.gaps)  # fmt: skip
