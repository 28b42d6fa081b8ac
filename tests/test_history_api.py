"""The history over HTTP (embedded mode here; through nginx in test_history_cluster):
the board at a seq or a time, log ranges, PNGs, heatmaps and a pixel's history."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from PIL import Image

from openplace.config import Settings
from openplace.core.board import Board, Geometry
from openplace.core.timeline import PALETTE_RGB, decode_history
from tests.conftest import LiveServer, ServerFactory, mint_token

W, H = 100, 80
GEOMETRY = Geometry(W, H)
Placed = list[tuple[int, int, int, float]]  # seq, index, colour, unix time


@pytest.fixture
async def busy(server_factory: ServerFactory, settings: Settings) -> LiveServer:
    """A server with keyframes every 15 placements and small history pages."""
    return await server_factory(
        settings.with_(cooldown_seconds=0, snapshot_every=15, history_max_records=50)
    )


async def place_many(client: httpx.AsyncClient, n: int) -> Placed:
    rng = np.random.default_rng(n)
    token = mint_token()
    placed: Placed = []
    for _ in range(n):
        x, y, c = int(rng.integers(W)), int(rng.integers(H)), int(rng.integers(16))
        r = await client.post("/api/pixel", json={"x": x, "y": y, "color": c},
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 200, r.text
        ts = datetime.fromisoformat(r.json()["next_at"].replace("Z", "+00:00")).timestamp()
        placed.append((r.json()["seq"], y * W + x, c, ts))
    return placed


def replay(placed: Placed, seq: int) -> bytes:
    board = Board(GEOMETRY)
    for s, i, c, _ in placed:
        if s <= seq:
            board.set(i, c)
    return board.snapshot()


def colours(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


async def test_the_board_at_a_seq_and_at_a_time(busy: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=busy.url, timeout=10) as client:
        placed = await place_many(client, 70)
        for seq in (0, 1, 15, 16, 44, 70):
            r = await client.get("/api/board", params={"seq": seq},
                                 headers={"Accept-Encoding": "identity"})  # fmt: skip
            assert r.status_code == 200 and r.content == replay(placed, seq), seq
            assert r.headers["x-seq"] == str(seq)
            assert "immutable" in r.headers["cache-control"]
        gz = await client.get("/api/board", params={"seq": 44},
                              headers={"Accept-Encoding": "gzip"})  # fmt: skip
        assert gz.headers["content-encoding"] == "gzip" and gz.content == replay(placed, 44)
        again = await client.get("/api/board", params={"seq": 44},
                                 headers={"If-None-Match": gz.headers["etag"],
                                          "Accept-Encoding": "gzip"})  # fmt: skip
        assert again.status_code == 304
        # ?at=: the newest placement at or before that time (next_at - cooldown 0 = ts,
        # cut to milliseconds)
        ts = placed[29][3]
        at = datetime.fromtimestamp(ts + 0.0015, UTC).isoformat().replace("+00:00", "Z")
        r = await client.get("/api/board", params={"at": at})
        assert r.status_code == 200 and int(r.headers["x-seq"]) >= 30
        assert r.content == replay(placed, int(r.headers["x-seq"]))
        early = await client.get("/api/board", params={"at": "2000-01-01T00:00:00Z"})
        assert early.headers["x-seq"] == "0" and early.content == bytes(W * H // 2)
        both = await client.get("/api/board", params={"seq": 5, "at": at})  # the earlier
        assert both.headers["x-seq"] == "5"
        # the current board is still the current board
        now = await client.get("/api/board")
        assert now.content == replay(placed, 70) and now.headers["x-seq"] == "70"
        for params, status, code in [
            ({"seq": "71"}, 404, "not_found"),
            ({"seq": "-1"}, 400, "bad_seq"),
            ({"seq": "1e3"}, 400, "bad_seq"),
            ({"at": "yesterday"}, 400, "bad_time"),
        ]:
            r = await client.get("/api/board", params=params)
            assert (r.status_code, r.json()["error"]) == (status, code), params


async def test_history_ranges_page_through_the_log(busy: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=busy.url, timeout=10) as client:
        placed = await place_many(client, 70)
        got: list[tuple[int, int, int]] = []
        start = 1
        while True:
            r = await client.get("/api/history", params={"from": start, "to": 70})
            assert r.status_code == 200
            log = decode_history(r.content)
            pairs = zip(log.indexes, log.colors, strict=True)
            got += [(log.after + 1 + k, int(i), int(c)) for k, (i, c) in enumerate(pairs)]
            assert log.times is not None and np.allclose(
                log.times, [p[3] for p in placed[log.after : log.upto]], atol=1e-3
            )
            if "x-next" not in r.headers:
                break
            start = int(r.headers["x-next"])
        assert got == [(s, i, c) for s, i, c, _ in placed]
        assert start == 51  # 50 a page
        tail = await client.get("/api/history", params={"from": 60})
        assert decode_history(tail.content).after == 59
        assert tail.headers["cache-control"] == "no-cache"  # to the head: may grow
        empty = await client.get("/api/history", params={"from": 9, "to": 3})
        assert empty.status_code == 200 and len(decode_history(empty.content)) == 0
        beyond = await client.get("/api/history", params={"from": 72})
        assert beyond.status_code == 404 and beyond.json()["error"] == "not_found"


async def test_pngs_show_the_palette_colours(busy: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=busy.url, timeout=10) as client:
        placed = await place_many(client, 40)
        for params, seq in [({}, 40), ({"seq": 20}, 20)]:
            r = await client.get("/api/board.png", params=params)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            rgb = colours(r.content)
            board = np.frombuffer(replay(placed, seq), dtype=np.uint8)
            pixels = np.stack([board >> 4, board & 15], axis=1).reshape(H, W)
            assert np.array_equal(rgb, PALETTE_RGB[pixels])
        r = await client.get("/api/board.png", params={"seq": 20, "x": 10, "y": 5, "w": 7,
                                                       "h": 3, "scale": 4})  # fmt: skip
        assert colours(r.content).shape == (12, 28, 3)
        assert "immutable" in r.headers["cache-control"]
        region = {"seq": 20, "x": 10, "y": 5, "w": 7, "h": 3, "scale": 4}
        cached = await client.get("/api/board.png", params=region,
                                  headers={"If-None-Match": r.headers["etag"]})  # fmt: skip
        assert cached.status_code == 304
        for params, code in [({"scale": 17}, "bad_scale"), ({"x": 100}, "bad_region"),
                             ({"w": 0}, "bad_region")]:  # fmt: skip
            r = await client.get("/api/board.png", params=params)
            assert (r.status_code, r.json()["error"]) == (400, code), params
        # a region cut at the board's edge; x and y alone: to the edges
        edge = await client.get("/api/board.png", params={"x": 95, "y": 70, "w": 10, "h": 3})
        assert colours(edge.content).shape == (3, 5, 3)
        corner = await client.get("/api/board.png", params={"x": 90, "y": 75})
        assert colours(corner.content).shape == (5, 10, 3)


async def test_heatmap_and_pixel_history(busy: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=busy.url, timeout=10) as client:
        token = mint_token()
        auth = {"Authorization": f"Bearer {token}"}
        for c in (3, 5, 7):
            await client.post("/api/pixel", json={"x": 2, "y": 1, "color": c}, headers=auth)
        await client.post("/api/pixel", json={"x": 9, "y": 9, "color": 1}, headers=auth)
        r = await client.get("/api/heatmap.png")
        heat = colours(r.content)
        assert heat.shape == (H, W, 3)
        assert heat[1, 2].sum() > heat[9, 9].sum() > 0  # 3 placements brighter than 1
        assert heat[0, 0].sum() == 0 and int((heat.sum(axis=2) > 0).sum()) == 2
        first = colours((await client.get("/api/heatmap.png", params={"to": 1})).content)
        assert int((first.sum(axis=2) > 0).sum()) == 1
        r = await client.get("/api/pixel/history", params={"x": 2, "y": 1, "limit": 2})
        body = r.json()
        assert [p["color"] for p in body["placements"]] == [7, 5]
        assert [p["seq"] for p in body["placements"]] == [3, 2]
        assert body["placements"][0]["placed_at"].endswith("Z")
        r = await client.get("/api/pixel/history", params={"x": 200, "y": 1})
        assert r.status_code == 400 and r.json()["error"] == "bad_coordinates"
        r = await client.get("/api/pixel/history", params={"x": 1, "y": 1, "limit": 0})
        assert r.status_code == 400


def test_history_body_round_trips() -> None:
    from openplace.core.timeline import LogSlice, encode_history

    log = LogSlice.of(41, [5, 999_999], [15, 0], [1.5, 1_800_000_000.25])
    back = decode_history(encode_history(log))
    assert (back.after, back.indexes.tolist(), back.colors.tolist()) == (41, [5, 999_999], [15, 0])
    assert back.times is not None and back.times.tolist() == [1.5, 1_800_000_000.25]
    assert gzip.decompress(gzip.compress(encode_history(log))) == encode_history(log)


def test_packed_boards_turn_into_palette_colours() -> None:
    from openplace.core.timeline import packed_rgb, to_rgb, unpack

    rng = np.random.default_rng(5)
    packed = rng.integers(0, 256, W * H // 2, dtype=np.uint8).tobytes()
    assert np.array_equal(packed_rgb(packed, GEOMETRY), to_rgb(unpack(packed, GEOMETRY)))
    board = Board(GEOMETRY, packed)
    assert unpack(packed, GEOMETRY)[3, 7] == board.get(3 * W + 7)
