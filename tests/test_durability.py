"""Acknowledged placements survive restarts; failed commits change nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from openplace.core.board import Board, Geometry
from openplace.core.placement import CooldownActive, StoreUnavailable
from openplace.storage.embedded import EmbeddedStore
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
            *[store.place(f"u{k}-{j}", (k * 7 + j) % 4096, (k + j) % 16) for j in range(3)]
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


async def test_failed_commit_fails_everything_uncommitted_and_rolls_back(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db.sqlite3", cooldown=300)
    await store.open()
    first = await store.place("alice", 1, 1)
    seen: list[int] = []
    store.listen(lambda s, r: seen.append(s), lambda b, h: None)
    original = store._commit

    def broken(rows: object) -> None:
        raise OSError("disk full")

    store._commit = broken  # type: ignore[method-assign]
    results = await asyncio.gather(
        store.place("bob", 2, 2), store.place("carol", 3, 3), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    snap = await store.board()
    assert snap.seq == first.seq == 1 and Board(store.geometry, snap.data).get(2) == 0
    assert seen == []  # nobody was told about a placement that is not durable
    store._commit = original  # type: ignore[method-assign]
    # The failed users are not cooling down, and the seq has no gap.
    again = await store.place("bob", 2, 2)
    assert again.seq == 2 and seen == [2]
    with pytest.raises(CooldownActive):
        await store.place("alice", 5, 5)
    await store.close()


async def test_store_refuses_a_board_of_another_size(tmp_path: Path) -> None:
    store = make_store(tmp_path / "db.sqlite3")
    await store.open()
    await store.close()
    other = EmbeddedStore(tmp_path / "db.sqlite3", Geometry(32, 32), 0)
    with pytest.raises(RuntimeError, match="64x64"):
        await other.open()
