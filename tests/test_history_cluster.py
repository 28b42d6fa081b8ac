"""The history in distributed mode, through nginx as deployed: past boards are not the
cached current board, and are served from nginx's cache the second time."""

from __future__ import annotations

import httpx
import numpy as np

from openplace.core.board import Board, Geometry
from openplace.core.timeline import PALETTE_RGB, decode_history
from openplace.distributed.cluster import Cluster
from tests.conftest import mint_token
from tests.test_history_api import colours

W, H = 100, 80


async def test_past_boards_through_nginx(cluster: Cluster) -> None:
    rng = np.random.default_rng(3)
    board = Board(Geometry(W, H))
    boards = [board.snapshot()]
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        assert (await client.get("/api/board")).status_code == 200  # cache the current one
        for _ in range(30):  # every placement from another user, as in a real event
            x, y, c = int(rng.integers(W)), int(rng.integers(H)), int(rng.integers(16))
            r = await client.post("/api/pixel", json={"x": x, "y": y, "color": c},
                                  headers={"Authorization": f"Bearer {mint_token()}"})  # fmt: skip
            assert r.status_code == 200, r.text
            board.set(y * W + x, c)
            boards.append(board.snapshot())
        for seq in (0, 7, 30, 7):
            r = await client.get("/api/board", params={"seq": seq})
            assert r.status_code == 200 and r.content == boards[seq], seq
            assert r.headers["x-seq"] == str(seq)
        again = await client.get("/api/board", params={"seq": 7})
        assert again.headers["x-cache"] == "HIT" and again.content == boards[7]
        log = decode_history((await client.get("/api/history", params={"to": 30})).content)
        assert len(log) == 30
        png = await client.get("/api/board.png", params={"seq": 12})
        pixels = np.frombuffer(boards[12], dtype=np.uint8)
        want = PALETTE_RGB[np.stack([pixels >> 4, pixels & 15], axis=1).reshape(H, W)]
        assert np.array_equal(colours(png.content), want)
        cached = await client.get("/api/board.png", params={"seq": 12})
        assert cached.headers["x-cache"] == "HIT"
        hist = await client.get("/api/pixel/history", params={"x": 0, "y": 0})
        assert hist.status_code == 200
