"""openplace.client (issue 13) against a real embedded server and a real distributed
cluster: what a bot or a viewer built on it notices."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from harness.servers import PostgresServer, RedisServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from openplace.auth.moderators import Moderator, ModeratorSigner
from openplace.client import (
    AsyncCanvas,
    Banned,
    Canvas,
    Cooldown,
    Frozen,
    InvalidRequest,
    LiveBoard,
    NotFound,
    Placement,
    Protected,
    Snapshot,
    Unauthorized,
    Unavailable,
)
from openplace.client.live import backoff
from openplace.client.stream import Gap, LiveState, Resync
from openplace.config import Settings
from openplace.core.wire import encode_frame, encode_record
from openplace.distributed.cluster import Cluster
from tests.conftest import LiveServer, cluster_env, mint_token

W, H = 100, 80
FAST = (0.05, 1.0)  # backoff: reconnect quickly, a test restarts servers


def moderator() -> dict[str, str]:
    token = ModeratorSigner("test-secret").issue(Moderator("mia", time.time(), None))
    return {"Authorization": f"Bearer {token}"}


async def others_place(url: str, pixels: list[tuple[int, int, int]]) -> list[int]:
    """Each pixel placed by a user of its own; their seqs. A store that is being
    restored (503) is waited out, as a bot would."""
    seqs = []
    for x, y, color in pixels:
        async with AsyncCanvas(url, token=mint_token()) as other:
            for _ in range(200):
                try:
                    seqs.append((await other.place(x, y, color)).seq)
                    break
                except Unavailable as e:
                    await asyncio.sleep(max(0.05, min(e.retry_after, 0.2)))
            else:
                raise AssertionError(f"({x}, {y}) was never placed")
    return seqs


async def assert_live_equals_server(live: LiveBoard, url: str) -> None:
    """``live.board`` is what ``GET /api/board`` answers once the stream caught up."""
    async with AsyncCanvas(url) as c:
        snap = await c.board(fresh=True)
        await live.wait_for(snap.seq, board_id=snap.board_id, timeout=20)
        assert live.board == snap
    async with httpx.AsyncClient(timeout=10) as raw:
        r = await raw.get(url + "/api/board", params={"fresh": time.time_ns()})
    if r.headers["x-seq"] == str(live.seq):
        assert live.board.packed() == r.content


def test_the_client_loads_no_server_code() -> None:
    """A bot installs the client without running a server: it loads only the pure core."""
    code = (
        "import sys, openplace.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('openplace.')\n"
        "             and not m.startswith(('openplace.client', 'openplace.core'))))\n"
        "print(sorted(m for m in ('redis', 'asyncpg', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "[]"], out.stdout + out.stderr


# -- the HTTP client -------------------------------------------------------------------


async def test_a_bot_places_and_is_told_how_long_to_wait(server: LiveServer) -> None:
    async with AsyncCanvas(server.url) as c:
        info = await c.info()
        assert (info.width, info.height, info.cooldown_seconds) == (W, H, 300)
        assert len(info.palette) == 16 and info.palette[5] == "#E50000"
        placed = await c.place(3, 2, 5)  # makes a session first
        assert placed.seq == 1 and c.token and c.user_id
        assert placed.next_at is not None and placed.next_at > datetime.now(UTC)
        with pytest.raises(Cooldown) as cooling:
            await c.place(4, 2, 6)
        assert cooling.value.status == 429 and cooling.value.code == "cooldown"
        assert 290 < cooling.value.retry_after <= 300
        assert cooling.value.next_at == placed.next_at
        me = await c.me()
        assert me.user_id == c.user_id and me.next_at == placed.next_at
        pixel = await c.pixel(3, 2)
        assert (pixel.color, pixel.user_id, pixel.seq) == (5, c.user_id, 1)
        snap = await c.board()
        assert (snap.seq, snap.colors.shape, snap[3, 2], snap.colors[2, 3]) == (1, (H, W), 5, 5)
        assert snap.board_id and int(np.count_nonzero(snap.colors)) == 1
        with pytest.raises(InvalidRequest) as bad:
            await c.pixel(W, 0)
        assert bad.value.code == "bad_coordinates"
        token = c.token

    def as_the_same_user_later() -> tuple[Exception, int]:
        with Canvas(server.url, token=token) as again:
            assert again.user_id == me.user_id  # read from the token, before any call
            try:
                again.place(5, 5, 1)
            except Cooldown as e:
                refused: Exception = e
            with Canvas(server.url) as newcomer:
                s = newcomer.session()
                assert newcomer.token == s.token and s.user_id.startswith("u_")
                return refused, newcomer.place(5, 5, 1).seq

    refused, seq = await asyncio.to_thread(as_the_same_user_later)
    assert isinstance(refused, Cooldown) and seq == 2
    async with AsyncCanvas(server.url, token="forged") as forger:
        assert forger.user_id is None
        with pytest.raises(Unauthorized):
            await forger.place(0, 0, 1)


async def test_the_past_is_read_back_as_boards_and_placements(server: LiveServer) -> None:
    pixels = [(i, 7, i % 16) for i in range(12)] + [(0, 7, 9)]
    seqs = await others_place(server.url, pixels)
    assert seqs == list(range(1, 14))
    async with AsyncCanvas(server.url) as c:
        history = await c.history()
        assert [(p.seq, p.x, p.y, p.color) for p in history] == [
            (s, x, y, color) for s, (x, y, color) in zip(seqs, pixels, strict=True)
        ]
        assert all(p.at is not None for p in history)
        assert [p.seq for p in await c.history(3, 5)] == [3, 4, 5]
        first = await c.board(seq=1)
        assert first.seq == 1 and first.board_id is None and first[0, 7] == 0
        at = history[4].at
        assert at is not None
        then = await c.board(at=at)
        assert then.seq == 5 and then == await c.board(seq=5)
        assert (await c.board(at=at.isoformat())).seq == 5
        now = await c.board()
        assert now[0, 7] == 9 and now.colors[7, :12].tolist() == [9, *range(1, 12)]
        image = now.image(scale=2)
        assert image.size == (2 * W, 2 * H) and image.getpixel((1, 15)) == (0x94, 0xE0, 0x44)
        with pytest.raises(NotFound):
            await c.board(seq=99)
        on_0_7 = await c.pixel_history(0, 7)  # who placed there, newest first
        assert [(p.seq, p.color) for p in on_0_7] == [(13, 9), (1, 0)]
        assert all(p.user_id.startswith("u_") for p in on_0_7)
        first_at, then_at = on_0_7[1].at, history[0].at  # the API's times are to the ms
        assert first_at and then_at and abs(first_at - then_at) < timedelta(milliseconds=1)
        assert len({p.user_id for p in on_0_7}) == 2  # others_place: a new user each
        assert [p.seq for p in await c.pixel_history(0, 7, limit=1)] == [13]
        assert await c.pixel_history(50, 50) == []
        with pytest.raises(InvalidRequest):
            await c.pixel_history(0, 7, limit=0)


async def test_moderators_refusals_arrive_as_typed_errors(server: LiveServer) -> None:
    admin = server.url + "/api/admin/"
    async with AsyncCanvas(server.url) as c, httpx.AsyncClient(headers=moderator()) as mod:
        session = await c.session()
        r = await mod.post(admin + "protect", json={"rect": {"x": 10, "y": 10, "w": 5, "h": 5}})
        assert r.status_code == 200, r.text
        policy = await c.policy()
        assert not policy.frozen and [(a.x, a.y, a.w, a.h) for a in policy.protected] == [
            (10, 10, 5, 5)
        ]
        assert not policy.allows(12, 12) and policy.allows(0, 0)
        with pytest.raises(Protected):
            await c.place(12, 12, 3)
        assert (await mod.post(admin + "freeze", json={})).status_code == 200
        with pytest.raises(Frozen):
            await c.place(0, 0, 3)
        assert (await c.policy()).frozen
        assert (await mod.post(admin + "unfreeze", json={})).status_code == 200
        r = await mod.post(admin + "ban", json={"user": session.user_id, "reason": "griefing"})
        assert r.status_code == 200, r.text
        with pytest.raises(Banned) as banned:
            await c.place(0, 0, 3)
        assert banned.value.reason == "griefing" and banned.value.expires_at is None


# -- the live board --------------------------------------------------------------------


def test_the_stream_rules_skip_what_was_applied_and_notice_gaps() -> None:
    """The pure rules (no I/O): overlap skipped, a gap noticed, a resync raised."""
    state = LiveState(Snapshot(np.zeros((2, 4), np.uint8), 2, "b1"))
    frame = encode_frame(2, encode_record(0, 5) + encode_record(5, 7) + encode_record(7, 1))
    added = state.frame(frame)  # seq 2 is on the board already
    assert added == [Placement(3, 1, 1, 7), Placement(4, 3, 1, 1)] and state.seq == 4
    assert state.colors.tolist() == [[0, 0, 0, 0], [0, 7, 0, 1]]
    assert state.frame(frame) == [] and state.seq == 4
    with pytest.raises(Gap):
        state.frame(encode_frame(6, encode_record(0, 1)))
    with pytest.raises(Resync) as resync:
        state.control('{"type":"resync","head":9,"board":"b2"}')
    assert (resync.value.head, resync.value.board_id) == (9, "b2")
    waits = [backoff(n, 0.5, 10) for n in range(12)]
    assert all(0.25 <= w <= 10 for w in waits) and max(waits[8:]) > 4


async def test_live_board_follows_others_and_resumes_after_a_restart(
    server: LiveServer,
) -> None:
    await others_place(server.url, [(1, 1, 1), (2, 1, 2)])
    async with LiveBoard(server.url, backoff=FAST) as live:
        assert live.seq == 2 and live.colors[1, 2] == 2 and live.connected
        colors = live.colors  # kept live, in place
        seen: list[Placement] = []
        called: list[int] = []
        live.on_placement(lambda p: called.append(p.seq))

        async def watch() -> None:
            async for p in live:
                seen.append(p)

        watcher = asyncio.create_task(watch())
        seqs = await others_place(server.url, [(i, 3, 4 + i % 8) for i in range(10)])
        await live.wait_for(seqs[-1], timeout=10)
        assert colors[3, 9] == 4 + 9 % 8
        await assert_live_equals_server(live, server.url)

        await server.restart()  # uvicorn closes every websocket (1012)
        seqs += await others_place(server.url, [(i, 5, 3) for i in range(10)])
        await assert_live_equals_server(live, server.url)
        assert live.reconnects >= 1 and live.connected and live.gaps == 0
        assert colors[5, 9] == 3 and live.seq == seqs[-1]
        await asyncio.sleep(0.05)
    await asyncio.wait_for(watcher, 5)  # the iterator ends with the live board
    assert [p.seq for p in seen] == called == seqs  # each once, in order, no gaps
    assert (seen[0].x, seen[0].y, seen[0].color) == (0, 3, 4)


async def test_live_board_counts_a_gap_in_the_stream_and_resumes_past_it() -> None:
    """A server that breaks its promise (a frame skips seqs): the live board does not
    apply it, counts the gap, and resumes with ``since`` at the seq it holds."""
    asked: list[str] = []

    def http(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/ws"):
            asked.append(request.path)
            return None
        if request.path == "/api/canvas":
            body = b'{"width":4,"height":2,"palette":["#FFFFFF"],"cooldown_seconds":300}'
            return Response(200, "OK", Headers({"Content-Type": "application/json"}), body)
        headers = Headers({"X-Seq": "2", "X-Board-Id": "b1"})
        return Response(200, "OK", headers, bytes(4))  # /api/board: 4x2 at 4 bits

    async def stream(ws: ServerConnection) -> None:
        await ws.send('{"type":"hello","head":6,"board":"b1"}')
        if len(asked) == 1:  # seqs 3..5 lost: the client must not apply 6
            await ws.send(encode_frame(6, encode_record(0, 1)))
        else:
            await ws.send(encode_frame(3, encode_record(1, 2)))
        await ws.wait_closed()

    async with serve(stream, "127.0.0.1", 0, process_request=http) as fake:
        port = fake.sockets[0].getsockname()[1]
        async with LiveBoard(f"http://127.0.0.1:{port}", backoff=FAST) as live:
            await live.wait_for(3, timeout=10)
            assert live.gaps == 1 and live.seq == 3
            assert live.colors.tolist() == [[0, 2, 0, 0], [0, 0, 0, 0]]
    assert asked == ["/ws?since=2&board=b1", "/ws?since=2&board=b1"]


# -- distributed mode ------------------------------------------------------------------


@pytest.fixture
async def stack(postgres: PostgresServer, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    """One API and two realtime processes behind nginx (lighter than ``cluster``)."""
    env = cluster_env(redis_server.url, await postgres.new_database())
    c = Cluster(Settings.from_env(env), api=1, realtime=2, env=env)
    await asyncio.to_thread(c.start)
    yield c
    await asyncio.to_thread(c.stop)


async def test_a_bot_on_a_cluster_places_reads_and_waits(stack: Cluster) -> None:
    async with AsyncCanvas(stack.url) as c:
        placed = await c.place(10, 10, 12)
        with pytest.raises(Cooldown) as cooling:
            await c.place(11, 10, 12)
        assert cooling.value.retry_after > 290
        assert (await c.me()).next_at == placed.next_at
        seqs = await others_place(stack.url, [(11, 10, 13), (12, 10, 14)])
        assert seqs == [placed.seq + 1, placed.seq + 2]
        snap = await c.board(fresh=True)
        assert snap.seq == seqs[-1] and snap.board_id and "." in snap.board_id
        assert snap.colors[10, 10:13].tolist() == [12, 13, 14]
        assert (await c.pixel(12, 10)).color == 14
        assert [p.color for p in await c.history(1, 3)] == [12, 13, 14]
        assert (await c.board(seq=2))[12, 10] == 0


async def test_live_board_on_a_cluster_survives_restarts_and_a_redis_restore(
    stack: Cluster, redis_server: RedisServer
) -> None:
    await others_place(stack.url, [(i, 0, 5) for i in range(5)])
    async with LiveBoard(stack.url, backoff=FAST) as live:
        before = live.board_id
        seqs = await others_place(stack.url, [(i, 1, 6) for i in range(5)])
        await assert_live_equals_server(live, stack.url)

        # Each realtime process restarts: whichever one we were on, we resume.
        for name in ("realtime1", "realtime2"):
            await asyncio.to_thread(stack.restart, name)
            seqs += await others_place(stack.url, [(seqs[-1] % W, 2, 7)])
        await assert_live_equals_server(live, stack.url)
        assert live.reconnects >= 1 and live.resyncs == 0 and live.board_id == before

        # Redis dies and comes back empty: the persister restores it from PostgreSQL
        # under a new epoch, and we are told to reload.
        redis_server.kill()
        await asyncio.sleep(0.3)
        redis_server.start()
        seqs += await others_place(stack.url, [(i, 3, 8) for i in range(5)])
        await assert_live_equals_server(live, stack.url)
        assert live.resyncs >= 1 and live.board_id != before
        assert live.colors[3, :5].tolist() == [8] * 5 and live.colors[1, :5].tolist() == [6] * 5
        assert live.seq == seqs[-1]
