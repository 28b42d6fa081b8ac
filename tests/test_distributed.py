"""Distributed mode against real Redis, PostgreSQL and nginx, started by the tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from harness.servers import PostgresServer, RedisServer, free_port
from websockets.asyncio.client import connect

from openplace.client import LiveBoard
from openplace.core.board import Board, Geometry
from openplace.core.placement import Placement, StoreUnavailable
from openplace.core.wire import decode_frame
from openplace.distributed.cluster import Cluster
from tests.conftest import auth, mint_token

W, H = 100, 80


class Listener:
    """A websocket client that keeps a board up to date from a board fetch plus the stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.placements: dict[int, tuple[int, int]] = {}
        self.last = 0
        self.controls: list[dict[str, Any]] = []

    async def run(self, since: int, stop: asyncio.Event, board: str | None = None) -> None:
        q = f"?since={since}" + (f"&board={board}" if board else "")
        self.last = since
        async with connect(self.url + q) as ws:
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                if isinstance(msg, str):
                    control = json.loads(msg)
                    self.controls.append(control)
                    if control["type"] == "resync":  # a real client reloads the board here
                        self.last = control["head"]
                    continue
                first, items = decode_frame(msg)
                assert first <= self.last + 1, f"gap: after {self.last} came {first}"
                for k, item in enumerate(items):
                    if first + k > self.last:
                        self.placements[first + k] = item
                self.last = max(self.last, first + len(items) - 1)


async def place(
    c: httpx.AsyncClient, url: str, token: str, x: int, y: int, color: int
) -> httpx.Response:
    return await c.post(url + "/api/pixel", json={"x": x, "y": y, "color": color},
                        headers=auth(token))  # fmt: skip


async def wait_for(cond: Callable[[], object], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def nibble(board: bytes, index: int) -> int:
    return board[index // 2] >> 4 if index % 2 == 0 else board[index // 2] & 15


async def keep_placing(
    c: httpx.AsyncClient,
    urls: list[str],
    k: int,
    stop: asyncio.Event,
    acked: dict[int, tuple[int, int]],
) -> None:
    """Place pixels through ``urls`` in turn until ``stop``; record each acknowledged one
    in ``acked`` (seq -> (index, colour)). Refusals and errors are expected in faults."""
    n = 0
    while not stop.is_set():
        x, y, color = (k * 7 + n) % W, (k * 3 + n) // W % H, (k + n) % 16
        try:
            r = await place(c, urls[n % len(urls)], mint_token(), x, y, color)
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            acked[r.json()["seq"]] = (y * W + x, color)
        n += 1
        await asyncio.sleep(0.005)


def log_holding(rows: Any, acked: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """The placement log as seq -> (index, colour), checked gapless and holding every
    acknowledged placement under its seq."""
    log = {r[0]: (r[1], r[2]) for r in rows}
    assert sorted(log) == list(range(1, len(log) + 1)), "log must stay gapless"
    for seq, item in acked.items():
        assert log[seq] == item
    return log


async def test_placements_through_any_api_reach_clients_of_any_realtime(cluster: Cluster) -> None:
    api1, api2 = (f"http://127.0.0.1:{p}" for p in cluster.api_ports)
    rt1, rt2 = (f"ws://127.0.0.1:{p}/ws" for p in cluster.realtime_ports)
    stop = asyncio.Event()
    a, b = Listener(rt1), Listener(rt2)
    tasks = [asyncio.create_task(a.run(0, stop)), asyncio.create_task(b.run(0, stop))]
    async with httpx.AsyncClient(timeout=20) as c:
        rs = await asyncio.gather(*[
            place(c, api1 if i % 2 else api2, mint_token(), i % W, i // W, i % 16)
            for i in range(60)
        ])  # fmt: skip
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        assert sorted(r.json()["seq"] for r in rs) == list(range(1, 61))
        await wait_for(lambda: a.last >= 60 and b.last >= 60)
        assert a.placements == b.placements and sorted(a.placements) == list(range(1, 61))
        # Durable in PostgreSQL before acknowledged: the log holds every one, gapless.
        conn = await asyncpg.connect(cluster.settings.database_url)
        seqs = [r[0] for r in await conn.fetch("SELECT seq FROM placements ORDER BY seq")]
        pixels = await conn.fetchval("SELECT count(*) FROM pixels")
        await conn.close()
        assert seqs == list(range(1, 61)) and pixels == 60
        # Pixel info is read from PostgreSQL.
        info = (await c.get(api1 + "/api/pixel", params={"x": 5, "y": 0})).json()
        assert info["seq"] == rs[5].json()["seq"] and info["color"] == 5 and info["user_id"]
    stop.set()
    await asyncio.gather(*tasks)


async def test_cooldown_holds_across_api_processes(cluster: Cluster) -> None:
    api1, api2 = (f"http://127.0.0.1:{p}" for p in cluster.api_ports)
    async with httpx.AsyncClient(timeout=20) as c:
        for round_ in range(5):  # two users racing, each on both processes at once
            t1, t2 = mint_token(), mint_token()
            rs = await asyncio.gather(
                place(c, api1, t1, 1, round_, 1), place(c, api2, t1, 2, round_, 2),
                place(c, api2, t2, 3, round_, 3), place(c, api1, t2, 4, round_, 4),
            )  # fmt: skip
            codes = [r.status_code for r in rs]
            assert sorted(codes[:2]) == [200, 429] and sorted(codes[2:]) == [200, 429], codes
        me = (await c.get(api2 + "/api/me", headers=auth(t1))).json()
        assert me["next_at"] is not None


async def test_board_through_nginx_cache_plus_stream_equals_true_board(cluster: Cluster) -> None:
    api1 = f"http://127.0.0.1:{cluster.api_ports[0]}"
    async with httpx.AsyncClient(timeout=20) as c:
        for i in range(20):
            await place(c, api1, mint_token(), i, 1, 7)
        # The Python client: the board through nginx's cache (up to ~1 s stale), then the
        # stream through nginx from its X-Seq and board id.
        async with LiveBoard(cluster.url) as live:
            rs = await asyncio.gather(*[place(c, api1, mint_token(), i, 2, 9) for i in range(30)])
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
            top = max(r.json()["seq"] for r in rs)
            seen = await live.wait_for(top, timeout=10)
            # one connection, no gap (a gap resumes: a reconnect), no resync (a reload)
            assert live.reconnects == 0 and live.resyncs == 0
        direct = await c.get(api1 + "/api/board")
        assert int(direct.headers["x-seq"]) == top
        assert seen.seq == top and seen.board_id == direct.headers["x-board-id"]
        assert seen.packed() == direct.content
        # The cache answers repeated fetches itself.
        statuses = [(await c.get(cluster.url + "/api/board")).headers.get("x-cache")
                    for _ in range(5)]  # fmt: skip
        assert "HIT" in statuses
        gz = await c.get(cluster.url + "/api/board", headers={"Accept-Encoding": "gzip"})
        assert gz.headers.get("content-encoding") == "gzip" and gz.content == direct.content
        plain = await c.get(cluster.url + "/api/board", headers={"Accept-Encoding": "gzip;q=0"})
        assert "content-encoding" not in plain.headers
        # nginx limits session creation per address, and says so in JSON.
        codes = [(await c.post(cluster.url + "/api/session")) for _ in range(45)]
        refused = [r for r in codes if r.status_code == 429]
        assert refused and refused[0].json()["error"] == "rate_limited"


async def test_redis_killed_and_restarted_empty_loses_nothing_acknowledged(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    api1, api2 = (f"http://127.0.0.1:{p}" for p in cluster.api_ports)
    rt2 = f"ws://127.0.0.1:{cluster.realtime_ports[1]}/ws"
    acked: dict[int, tuple[int, int]] = {}
    stop = asyncio.Event()
    listener = Listener(rt2)
    task = asyncio.create_task(listener.run(0, stop))

    async with httpx.AsyncClient(timeout=20) as c:
        writers = [
            asyncio.create_task(keep_placing(c, [api2, api1], k, stop, acked)) for k in range(4)
        ]
        await wait_for(lambda: len(acked) >= 40)
        redis_server.kill()
        await asyncio.sleep(0.5)
        redis_server.start()  # empty: no persistence
        await wait_for(lambda: len(acked) >= 120 and max(acked) > 80, timeout=30)
        stop.set()
        await asyncio.gather(*writers)
        await task

        # Every acknowledged placement is in the durable log, under its seq.
        conn = await asyncpg.connect(cluster.settings.database_url)
        rows = await conn.fetch("SELECT seq, idx, color FROM placements ORDER BY seq")
        await conn.close()
        log = log_holding(rows, acked)
        # The restored board equals the log replayed, and the sequence continued.
        board = Board(Geometry(W, H))
        for seq in sorted(log):
            board.set(*log[seq])
        direct = await c.get(api1 + "/api/board")
        assert int(direct.headers["x-seq"]) == len(log)
        assert direct.content == bytes(board.data)
        # A client that was connected through the failure was told to resync.
        assert any(m["type"] == "resync" for m in listener.controls)
        # A client resuming after the failure from a fresh board is exact.
        fresh = Listener(rt2)
        stop2 = asyncio.Event()
        t2 = asyncio.create_task(fresh.run(len(log), stop2, direct.headers["x-board-id"]))
        r = await place(c, api1, mint_token(), 0, 0, 15)
        assert r.status_code == 200 and r.json()["seq"] == len(log) + 1
        await wait_for(lambda: fresh.last == len(log) + 1)
        stop2.set()
        await t2
        assert fresh.placements == {len(log) + 1: (0, 15)}


async def test_a_feed_that_notices_a_restore_late_confirms_no_old_placement(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The defect of issue 7, step by step in one process: store 1 holds placements that
    Redis accepted but nobody committed; Redis dies and is restored at head 3; store 2's
    placements are committed as seqs 4..8; only then does store 1's feed look. Store 1
    must not answer its placements with those seqs."""
    from openplace.distributed.persister import Persister
    from openplace.distributed.store import DistributedStore

    db = await postgres.new_database()
    geometry = Geometry(W, H)
    persister = Persister(redis_server.url, db, geometry, 0)
    assert await persister.connect()
    stop = asyncio.Event()
    running = asyncio.create_task(persister.run(stop))
    s1 = DistributedStore(redis_server.url, db, geometry, 0, ack_timeout=30)
    s2 = DistributedStore(redis_server.url, db, geometry, 0, ack_timeout=30)
    await s1.open()
    await s2.open()
    feed1 = s1.feed
    assert feed1 is not None and feed1._task is not None
    feed1._task.cancel()  # store 1's feed looks only when told to (refresh)
    try:
        for k in range(3):
            await s2.place(f"early{k}", k, 1, "127.0.0.1")
        stop.set()
        await running  # nothing more is committed
        held = [asyncio.create_task(s1.place(f"held{k}", W + k, 5, "127.0.0.1")) for k in range(5)]
        r = aioredis.from_url(redis_server.url)
        async with asyncio.timeout(10):
            while int(await r.get("op:seq") or 0) < 8:
                await asyncio.sleep(0.01)
        await r.aclose()
        redis_server.kill()
        redis_server.start()  # empty
        stop = asyncio.Event()
        running = asyncio.create_task(persister.run(stop))  # restores at head 3
        newer: list[Placement] = []
        async with asyncio.timeout(20):
            while len(newer) < 5:
                try:
                    newer.append(
                        await s2.place(f"new{len(newer)}", 2 * W + len(newer), 9, "127.0.0.1")
                    )
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
        assert [p.seq for p in newer] == [4, 5, 6, 7, 8]
        board = feed1.board_id
        async with asyncio.timeout(10):
            while feed1.board_id == board:  # the late look
                await feed1.refresh()
                await asyncio.sleep(0.05)
        answers = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 20)
    finally:
        stop.set()
        await running
        await s1.close()
        await s2.close()
        await persister.close()
    conn = await asyncpg.connect(db)
    log = {r[0]: (r[1], r[2]) for r in await conn.fetch("SELECT seq, idx, color FROM placements")}
    await conn.close()
    for k, answer in enumerate(answers):
        assert not isinstance(answer, Placement), (
            f"held placement {k} acknowledged as seq {answer.seq}; "
            f"the log holds {log.get(answer.seq)} there"
        )
        assert isinstance(answer, StoreUnavailable) and not answer.maybe_placed, answer


@pytest.fixture
async def patient_cluster(
    postgres: PostgresServer, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    """A cluster whose API processes wait 30 s for a placement to be confirmed."""
    from openplace.config import Settings
    from openplace.distributed.cluster import Cluster
    from tests.conftest import cluster_env

    db = await postgres.new_database()
    env = cluster_env(redis_server.url, db, OPENPLACE_ACK_TIMEOUT_SECONDS="30")
    c = Cluster(Settings.from_env(env), api=2, realtime=1, env=env)
    await asyncio.to_thread(c.start)
    yield c
    await asyncio.to_thread(c.stop)


async def test_placements_held_uncommitted_through_a_redis_crash_are_not_confirmed(
    patient_cluster: Cluster, redis_server: RedisServer
) -> None:
    """Issue 7's defect, made deterministic: placements accepted by Redis but not yet
    committed die with Redis; the board is restored at head H and other placements
    take seqs H+1.. before the first API process's feed notices the restore. The held
    placements must not be confirmed by those seqs: each is answered 503, and every
    200 (on either process) is that very placement in PostgreSQL's log."""
    cluster = patient_cluster
    api1, api2 = (f"http://127.0.0.1:{p}" for p in cluster.api_ports)
    persister, api1_proc = cluster.procs["persister"], cluster.procs["api1"]
    async with httpx.AsyncClient(timeout=30) as c:
        before = [await place(c, api1, mint_token(), k, 0, 1) for k in range(3)]
        assert [r.status_code for r in before] == [200, 200, 200]
        head = max(r.json()["seq"] for r in before)

        os.kill(persister.pid, signal.SIGSTOP)  # accepted, never committed
        await asyncio.sleep(0.3)  # its blocking XREAD (100 ms) has been answered
        try:
            held = [asyncio.create_task(place(c, api1, mint_token(), 10 + k, 1, 5))
                    for k in range(5)]  # fmt: skip
            r = aioredis.from_url(redis_server.url)
            async with asyncio.timeout(10):
                while int(await r.get("op:seq") or 0) < head + 5:
                    await asyncio.sleep(0.02)
            await r.aclose()
            os.kill(api1_proc.pid, signal.SIGSTOP)  # its feed will notice the restore late
            redis_server.kill()
            redis_server.start()  # empty
        finally:
            os.kill(persister.pid, signal.SIGCONT)
        try:
            # The persister restores at `head`; api2's placements take head+1...
            newer: dict[int, int] = {}  # seq -> x
            async with asyncio.timeout(30):
                x = 30
                while len(newer) < 5:
                    resp = await place(c, api2, mint_token(), x, 2, 9)
                    if resp.status_code == 200:
                        newer[resp.json()["seq"]] = x
                    else:
                        await asyncio.sleep(0.05)
                    x += 1
        finally:
            os.kill(api1_proc.pid, signal.SIGCONT)
        answers = await asyncio.gather(*held)

    conn = await asyncpg.connect(cluster.settings.database_url)
    rows = await conn.fetch("SELECT seq, idx, color FROM placements ORDER BY seq")
    await conn.close()
    log = {r[0]: (r[1], r[2]) for r in rows}
    assert sorted(log) == list(range(1, len(log) + 1)), "log must stay gapless"
    # Held placements: 200 exactly when the log holds that very placement under the seq
    # answered; otherwise 503, nothing changed. The persister was stopped, so none is.
    for k, resp in enumerate(answers):
        body, mine = resp.json(), (W + 10 + k, 5)
        if resp.status_code == 200:
            assert log.get(body["seq"]) == mine, (
                f"acknowledged seq {body['seq']} for ({10 + k}, 1) colour 5, "
                f"but the log holds {log.get(body['seq'])} there"
            )
        else:
            assert (resp.status_code, body["error"]) == (503, "unavailable"), body
            assert mine not in log.values()
    assert [r.status_code for r in answers] == [503] * 5
    # The new board continued from the restored head; its placements are the log's.
    assert sorted(newer) == list(range(head + 1, head + 6))
    for seq, x in newer.items():
        assert log[seq] == (2 * W + x, 9)


async def test_resume_from_postgresql_when_the_stream_was_trimmed(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    import redis.asyncio as aioredis

    from openplace.distributed import keys

    api1 = f"http://127.0.0.1:{cluster.api_ports[0]}"
    async with httpx.AsyncClient(timeout=20) as c:
        rs = await asyncio.gather(*[place(c, api1, mint_token(), i, 3, i % 16) for i in range(30)])
        assert all(r.status_code == 200 for r in rs)
    r = aioredis.from_url(redis_server.url)
    await r.xtrim(keys.STREAM, maxlen=0)  # as if trimmed long ago
    assert await r.xlen(keys.STREAM) == 0
    await r.aclose()
    # A realtime process started now has no history in memory or in the stream.
    port = free_port()
    cluster._spawn("realtime3", "realtime", "--port", str(port))
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            try:
                if (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    listener = Listener(f"ws://127.0.0.1:{port}/ws")
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(10, stop))
    await wait_for(lambda: listener.last >= 30)
    stop.set()
    await task
    assert sorted(listener.placements) == list(range(11, 31))
    by_seq = {r.json()["seq"]: i for i, r in enumerate(rs)}
    for seq, (index, color) in listener.placements.items():
        assert index == 3 * W + by_seq[seq] and color == by_seq[seq] % 16


async def test_persister_refuses_a_redis_that_saves_to_disk(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """A Redis restarted from its own files would reuse seqs under the same board id."""
    from openplace.distributed.persister import Persister, RedisPersists

    db = await postgres.new_database()
    r = aioredis.from_url(redis_server.url)
    await r.config_set("appendonly", "yes")
    persister = Persister(redis_server.url, db, Geometry(W, H), 0)
    try:
        with pytest.raises(RedisPersists, match="--save '' --appendonly no"):
            await persister.connect()
        assert await r.get("op:epoch") is None  # nothing was restored into it
        await r.config_set("appendonly", "no")
        assert await persister.connect()
    finally:
        await persister.close()
        await r.aclose()


async def test_manual_restore_keeps_the_board_and_resyncs_clients(cluster: Cluster) -> None:
    import os
    import sys

    api1 = f"http://127.0.0.1:{cluster.api_ports[0]}"
    rt1 = f"ws://127.0.0.1:{cluster.realtime_ports[0]}/ws"
    async with httpx.AsyncClient(timeout=20) as c:
        for i in range(10):
            assert (await place(c, api1, mint_token(), i, 4, 11)).status_code == 200
        before = await c.get(api1 + "/api/board")
        listener = Listener(rt1)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(10, stop, before.headers["x-board-id"]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openplace.cli", "restore",
            env={**os.environ, **cluster.env}, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        assert b"asking the running persister" in out and b"done" in out
        await wait_for(lambda: any(m["type"] == "resync" for m in listener.controls))
        after = await c.get(api1 + "/api/board")
        assert after.content == before.content and after.headers["x-seq"] == "10"
        assert after.headers["x-board-id"] != before.headers["x-board-id"]
        r = await place(c, api1, mint_token(), 50, 50, 2)
        assert r.json()["seq"] == 11
        stop.set()
        await task


async def test_persister_or_api_process_killed_loses_nothing_acknowledged(cluster: Cluster) -> None:
    api1, api2 = (f"http://127.0.0.1:{p}" for p in cluster.api_ports)
    acked: dict[int, tuple[int, int]] = {}
    stop = asyncio.Event()

    async with httpx.AsyncClient(timeout=20) as c:
        writers = [asyncio.create_task(keep_placing(c, [api1], k, stop, acked)) for k in range(3)]
        writers.append(asyncio.create_task(keep_placing(c, [api2], 9, stop, acked)))
        await wait_for(lambda: len(acked) >= 30)
        cluster.kill("persister")  # SIGKILL mid-batch
        await asyncio.sleep(0.3)
        cluster._spawn("persister2", "persister")  # a standby takes over
        await wait_for(lambda: len(acked) >= 80, timeout=30)
        cluster.kill("api2")  # requests in flight there are never acknowledged
        n = len(acked)
        await wait_for(lambda: len(acked) >= n + 30, timeout=30)
        stop.set()
        await asyncio.gather(*writers)

    conn = await asyncpg.connect(cluster.settings.database_url)
    for _ in range(100):  # the last accepted (maybe unacknowledged) ones settle
        rows = await conn.fetch("SELECT seq, idx, color FROM placements ORDER BY seq")
        top = await conn.fetchval("SELECT max(seq) FROM placements")
        if top >= max(acked):
            break
        await asyncio.sleep(0.05)
    await conn.close()
    log_holding(rows, acked)


async def test_postgresql_outage_confirms_late_and_loses_nothing(redis_server: RedisServer) -> None:
    """With PostgreSQL down, placements are answered 503 "unconfirmed" (never 200); when
    it is back, the persister reconnects and commits them, and the log stays gapless."""
    from harness.servers import PostgresServer

    from openplace.config import Settings
    from openplace.distributed.cluster import Cluster
    from tests.conftest import cluster_env

    pg = PostgresServer().start()
    db = await pg.new_database()
    env = cluster_env(redis_server.url, db, OPENPLACE_ACK_TIMEOUT_SECONDS="1")
    c = Cluster(Settings.from_env(env), api=1, realtime=1, env=env)
    await asyncio.to_thread(c.start)
    api = f"http://127.0.0.1:{c.api_ports[0]}"
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            for i in range(5):
                assert (await place(client, api, mint_token(), i, 0, 3)).status_code == 200
            await asyncio.to_thread(pg.kill)
            during = [await place(client, api, mint_token(), i, 1, 4) for i in range(3)]
            assert [r.status_code for r in during] == [503] * 3
            assert {r.json()["error"] for r in during} == {"unconfirmed"}
            await asyncio.to_thread(pg.start_again)
            # The persister comes back by itself; placing works again.
            for _ in range(200):
                r = await place(client, api, mint_token(), 50, 50, 9)
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200 and r.json()["seq"] == 9
            conn = await asyncpg.connect(db)
            rows = await conn.fetch("SELECT seq, idx FROM placements ORDER BY seq")
            await conn.close()
            assert [r[0] for r in rows] == list(range(1, 10))
            assert {r[1] for r in rows[5:8]} == {W + 0, W + 1, W + 2}  # the unconfirmed ones
    finally:
        await asyncio.to_thread(c.stop)
        pg.stop()
