"""The history, read from either backend's durable log (storage/base.py ``Archive``):
the board at any seq equals a replay of the log to it, across keyframe boundaries;
times, heat, a pixel's history and timelapse frames agree with the log."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from openplace.core.board import Board
from openplace.core.placement import Placement
from openplace.core.timeline import HistoryError, LogSlice, frame_seqs
from openplace.history.timeline import Timeline
from tests.test_store_contract import GEOMETRY, H, MakeBackend, W, make_backend, replayed

__all__ = ["make_backend"]  # the fixture, parametrised over both backends


def replay_to(placed: list[Placement], seq: int) -> bytes:
    return replayed([p for p in placed if p.seq <= seq])


async def fill(make: MakeBackend, n: int, every: int) -> tuple[list[Placement], Timeline]:
    """``n`` placements by as many users, keyframes every ``every``; the history."""
    backend = await make(cooldown=0, snapshot_every=every)
    stores = [await backend.store(), await backend.store()]
    rng = random.Random(n)
    placed: list[Placement] = []
    for k in range(0, n, 25):  # in concurrent batches, as in a real event
        batch = await asyncio.gather(*(
            stores[j % 2].place(f"u{j}", rng.randrange(W * H), rng.randrange(16), "127.0.0.1")
            for j in range(k, min(n, k + 25))
        ))  # fmt: skip
        placed += batch
    placed.sort(key=lambda p: p.seq)
    archive = await backend.archive()
    async with asyncio.timeout(10):  # the keyframes are written in the background
        while len(await backend.snapshot_seqs()) < n // every - 2:
            await asyncio.sleep(0.02)
    return placed, Timeline(archive)


async def test_the_board_at_any_seq_is_the_replay_of_the_log(make_backend: MakeBackend) -> None:
    placed, timeline = await fill(make_backend, 400, every=37)
    assert await timeline.head() == 400
    rng = random.Random(7)
    seqs = [0, 1, 36, 37, 38, 399, 400, *rng.sample(range(1, 401), 25)]
    for seq in seqs:
        assert await timeline.board(seq) == replay_to(placed, seq), seq
    with pytest.raises(HistoryError):
        await timeline.check_seq(401)


async def test_times_heat_and_pixel_history_agree_with_the_log(make_backend: MakeBackend) -> None:
    placed, timeline = await fill(make_backend, 200, every=50)
    log = await timeline.log(0, 200, times=True)
    assert log.times is not None
    assert [int(i) for i in log.indexes] == [p.index for p in placed]
    assert np.allclose(log.times, [p.ts for p in placed], atol=1e-3)
    assert bool(np.all(np.diff(log.times) >= 0))
    for p in (placed[0], placed[99], placed[-1]):
        assert await timeline.seq_at(p.ts + 1e-4) >= p.seq
    assert await timeline.seq_at(placed[0].ts - 10) == 0

    heat = await timeline.heat(50, 150)
    want = np.zeros(W * H, dtype=np.int64)
    for p in placed[50:150]:
        want[p.index] += 1
    assert heat.shape == (H, W) and heat.reshape(-1).tolist() == want.tolist()

    busiest = int(np.argmax(np.bincount([p.index for p in placed])))
    on_it = [p for p in placed if p.index == busiest]
    hist = await timeline.archive.pixel_history(busiest, 3)
    assert [(h.seq, h.color, h.user_id) for h in hist] == [
        (p.seq, p.color, p.user_id) for p in reversed(on_it)
    ][:3]


async def test_timelapse_frames_follow_the_log(make_backend: MakeBackend) -> None:
    placed, timeline = await fill(make_backend, 300, every=40)
    seqs = frame_seqs(20, 300, 13)
    assert len(seqs) == 13 and seqs[-1] == 300
    got = [(seq, data) async for seq, data in timeline.frames(20, seqs)]
    assert [s for s, _ in got] == seqs
    for seq, data in got:
        assert data == replay_to(placed, seq), seq
    board = Board(GEOMETRY, got[-1][1])
    assert board.snapshot() == replayed(placed)


def test_missing_keyframes_are_found_in_every_long_stretch() -> None:
    from openplace.storage.durability import keyframes_missing

    assert keyframes_missing([], 300, 40) == [40, 80, 120, 160, 200, 240, 280]
    assert keyframes_missing([300], 300, 40) == [40, 80, 120, 160, 200, 240, 280]
    assert keyframes_missing([100, 200], 230, 50) == [50, 150]
    assert keyframes_missing([40, 80], 100, 40) == []  # the tail is the store's
    assert keyframes_missing([], 0, 40) == []


async def test_a_history_from_before_keyframes_gets_them(make_backend: MakeBackend) -> None:
    """A database whose history has no keyframes (they were pruned to the newest) gets
    them in the background after opening, and the boards at them are exact."""
    backend = await make_backend(cooldown=0, snapshot_every=10_000)
    store = await backend.store()
    placed = [
        await store.place(f"u{k}", (k * 7) % (W * H), k % 16, "127.0.0.1") for k in range(300)
    ]
    backend.snapshot_every = 40  # type: ignore[attr-defined]  # the new setting
    await backend.reopen()
    async with asyncio.timeout(20):
        while not set(range(40, 281, 40)) <= set(await backend.snapshot_seqs()):
            await asyncio.sleep(0.05)
    timeline = Timeline(await backend.archive())
    for seq in (40, 200, 280, 299):
        keyframe = await timeline.archive.keyframe(seq)
        assert keyframe is not None and keyframe[0] == seq // 40 * 40
        assert keyframe[1] == replay_to(placed, keyframe[0])
        assert await timeline.board(seq) == replay_to(placed, seq)


async def test_heat_maps_are_computed_one_at_a_time(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of heat-map requests reads the log one map at a time: it cannot take
    every core from the placements."""
    _, timeline = await fill(make_backend, 100, every=50)
    reading = peak = 0
    read = timeline.archive.log

    async def counted(after: int, upto: int, *, times: bool = False) -> LogSlice:
        nonlocal reading, peak
        reading += 1
        peak = max(peak, reading)
        try:
            await asyncio.sleep(0.01)
            return await read(after, upto, times=times)
        finally:
            reading -= 1

    monkeypatch.setattr(timeline.archive, "log", counted)
    maps = await asyncio.gather(*(timeline.heat(0, 100) for _ in range(4)))
    assert peak == 1 and all(int(m.sum()) == 100 for m in maps)
