"""Acknowledged placements survive restarts; failed commits change nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from openplace.core.board import Board, Geometry
from openplace.core.placement import CooldownActive, StoreUnavailable
from openplace.embedded.store import EmbeddedStore
from tests.conftest import LiveServer, auth, mint_token


async def test_acknowledged_placements_survive_a_restart(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        tokens = [mint_token() for _ in range(20)]
        rs = await asyncio.gather(
            *[
                c.post("/api/pixel", json={"x": i, "y": 7, "color": i % 16}, headers=auth(t))
                for i, t in enumerate(tokens)
            ]
        )
        assert all(r.status_code == 200 for r in rs)
        before = await c.get("/api/board")
    await server.restart()
    async with httpx.AsyncClient(base_url=server.url) as c:
        after = await c.get("/api/board")
        assert after.headers["x-seq"] == "20" and after.content == before.content
        # The cooldown survives the restart too.
        r = await c.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(tokens[0]))
        assert r.status_code == 429
        # And the sequence continues without a gap.
        r = await c.post(
            "/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(mint_token())
        )
        assert r.json()["seq"] == 21
        info = (await c.get("/api/pixel", params={"x": 3, "y": 7})).json()
        assert info["seq"] == 4 and info["color"] == 3


def make_store(path: Path, cooldown: float = 0, snapshot_every: int = 1000) -> EmbeddedStore:
    return EmbeddedStore(path, Geometry(64, 64), cooldown, snapshot_every=snapshot_every)


async def test_restart_uses_snapshot_plus_log_tail(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = make_store(path, snapshot_every=50)
    await store.open()
    expected = Board(Geometry(64, 64))
    for k in range(120):
        await asyncio.gather(
            *[
                store.place(f"u{k}-{j}", (k * 7 + j) % 4096, (k + j) % 16, "127.0.0.1")
                for j in range(3)
            ]
        )
        for j in range(3):
            expected.set((k * 7 + j) % 4096, (k + j) % 16)
    await asyncio.sleep(0.05)  # let the snapshot writes land
    # Simulate a crash: no close(), so no final snapshot.
    store._writer.shutdown(wait=True)
    reopened = make_store(path, snapshot_every=50)
    await reopened.open()
    assert 0 < reopened._snapshot_seq < 360  # started from a snapshot ...
    snap = await reopened.board()
    assert snap.seq == 360 and snap.data == bytes(expected.data)  # ... plus the log tail
    assert (await reopened.head()) == 360
    await reopened.close()


async def test_cooldowns_and_last_placements_are_read_back_from_the_log(tmp_path: Path) -> None:
    """After a restart, who is still cooling down and when each user last placed come
    from the log alone: users long done, just done, still cooling, and one who placed
    before the cooldown of a later placement of theirs."""
    now = [1_000.0]
    path = tmp_path / "c.db"

    def store() -> EmbeddedStore:
        return EmbeddedStore(path, Geometry(64, 64), 300, clock=lambda: now[0])

    s = store()
    await s.open()
    for user, at in (("old", 1_000.0), ("both", 1_100.0), ("done", 1_800.0),
                     ("both", 2_000.0), ("cool", 2_050.0)):  # fmt: skip
        now[0] = at
        await s.place(user, 1, 2, "192.0.2.1")
    await s.close()

    now[0] = 2_150.0
    s = store()
    await s.open()
    try:
        for user, last, cooling in (("old", 1_000.0, False), ("done", 1_800.0, False),
                                    ("both", 2_000.0, True), ("cool", 2_050.0, True),
                                    ("never", None, False)):  # fmt: skip
            state = await s.user(user, "192.0.2.1")
            assert state.last_placed == last, user
            assert (state.next_at is not None) is cooling, user
            if cooling:
                with pytest.raises(CooldownActive):
                    await s.place(user, 2, 3, "192.0.2.1")
            else:
                assert (await s.place(user, 2, 3, "192.0.2.1")).seq > 5
    finally:
        await s.close()


async def test_failed_commit_fails_everything_uncommitted_and_rolls_back(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db.sqlite3", cooldown=300)
    await store.open()
    first = await store.place("alice", 1, 1, "127.0.0.1")
    seen: list[int] = []
    store.listen(lambda s, r: seen.append(s), lambda b, h: None)
    original = store._commit

    def broken(rows: object) -> None:
        raise OSError("disk full")

    store._commit = broken  # type: ignore[method-assign]  # a disk that fails, for this test
    results = await asyncio.gather(
        store.place("bob", 2, 2, "127.0.0.1"),
        store.place("carol", 3, 3, "127.0.0.1"),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    snap = await store.board()
    assert snap.seq == first.seq == 1 and Board(store.geometry, snap.data).get(2) == 0
    assert seen == []  # nobody was told about a placement that is not durable
    store._commit = original  # type: ignore[method-assign]  # the real disk again
    # The failed users are not cooling down, and the seq has no gap.
    again = await store.place("bob", 2, 2, "127.0.0.1")
    assert again.seq == 2 and seen == [2]
    with pytest.raises(CooldownActive):
        await store.place("alice", 5, 5, "127.0.0.1")
    await store.close()


async def test_store_refuses_a_board_of_another_size(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db.sqlite3")
    await store.open()
    await store.close()
    other = EmbeddedStore(tmp_path / "db.sqlite3", Geometry(32, 32), 0)
    with pytest.raises(RuntimeError, match="64x64"):
        await other.open()


async def test_embedded_server_killed_under_load_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """`openplace serve` is SIGKILLed at seeded random moments while users place; after
    each restart, every 200 it gave is on the board and in the log under its seq."""
    import os
    import random
    import signal
    import sqlite3
    import subprocess
    import sys

    from openplace.distributed.cluster import free_port, wait_http

    rng = random.Random(4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OPENPLACE_DATA_DIR": str(tmp_path), "OPENPLACE_SECRET": "test-secret",
           "OPENPLACE_WIDTH": "100", "OPENPLACE_HEIGHT": "80",
           "OPENPLACE_COOLDOWN_SECONDS": "0"}  # fmt: skip
    acked: dict[int, tuple[int, int]] = {}  # seq -> (index, colour)
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openplace.cli", "serve", "--port", str(port)],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        wait_http(url + "/healthz", 30)
        return proc

    async def writer(c: httpx.AsyncClient, k: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            x, y, color = (k * 11 + n) % 100, (k * 5 + n // 100) % 80, (k + n) % 16
            n += 1
            try:
                r = await c.post("/api/pixel", json={"x": x, "y": y, "color": color},
                                 headers=auth(mint_token()))  # fmt: skip
            except httpx.HTTPError:
                await asyncio.sleep(0.01)  # killed: unknown outcome, try again later
                continue
            if r.status_code == 200:
                acked[r.json()["seq"]] = (y * 100 + x, color)

    proc = await asyncio.to_thread(start)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for _ in range(3):
                stop = asyncio.Event()
                writers = [asyncio.create_task(writer(c, k, stop)) for k in range(8)]
                # Under load before the kill (a busy machine answers slowly), then a
                # random moment later.
                before = len(acked)
                deadline = asyncio.get_running_loop().time() + 60
                while len(acked) < before + 50 and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(rng.uniform(0.0, 0.9))
                proc.send_signal(signal.SIGKILL)  # in the middle of group commits
                proc.wait()
                stop.set()
                await asyncio.gather(*writers)
                proc = await asyncio.to_thread(start)
            board = (await c.get("/api/board")).content
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()

    db = sqlite3.connect(tmp_path / "openplace.sqlite3")
    rows = {s: (i, col) for s, i, col in db.execute("SELECT seq, idx, color FROM placements")}
    db.close()
    assert len(acked) > 100
    assert sorted(rows) == list(range(1, len(rows) + 1)), "the log is gapless"
    for seq, item in acked.items():
        assert rows.get(seq) == item, f"acknowledged {seq}: {item}; the log holds {rows.get(seq)}"
    replay = Board(Geometry(100, 80))
    for seq in sorted(rows):
        replay.set(*rows[seq])
    assert board == replay.snapshot()
