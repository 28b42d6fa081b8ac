"""``openplace export png`` and ``openplace timelapse`` on either mode's durable log:
the picture is the board at the moment asked for, and a decoded timelapse has the
expected frames, the last one the board."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from openplace.core.placement import Placement
from openplace.core.timeline import PALETTE_RGB
from tests.test_history_store import replay_to
from tests.test_store_contract import H, MakeBackend, W, make_backend

__all__ = ["make_backend"]


def rgb_of(board: bytes) -> np.ndarray:
    b = np.frombuffer(board, dtype=np.uint8)
    return PALETTE_RGB[np.stack([b >> 4, b & 15], axis=1).reshape(H, W)]


async def history_env(make: MakeBackend, tmp_path: Path) -> tuple[list[Placement], dict[str, str]]:
    """60 placements, keyframes every 9, and the environment of a CLI that reads them."""
    backend = await make(cooldown=0, snapshot_every=9)
    store = await backend.store()
    placed = [
        await store.place(f"u{k}", (k * 37) % (W * H), k % 16, "127.0.0.1") for k in range(60)
    ]
    env = {**os.environ, "OPENPLACE_WIDTH": str(W), "OPENPLACE_HEIGHT": str(H),
           "OPENPLACE_SECRET": "test-secret"}  # fmt: skip
    path = getattr(backend, "path", None)
    if path is not None:  # embedded: closed, then the data dir holds openplace.sqlite3
        await backend.close()
        data = tmp_path / "data"
        data.mkdir()
        shutil.copy(path, data / "openplace.sqlite3")
        env["OPENPLACE_DATA_DIR"] = str(data)
    else:
        env["OPENPLACE_REDIS_URL"] = backend.redis_url  # type: ignore[attr-defined]
        env["OPENPLACE_DATABASE_URL"] = backend.db_url  # type: ignore[attr-defined]
    return placed, env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "openplace.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


async def test_export_png_at_a_seq(make_backend: MakeBackend, tmp_path: Path) -> None:
    placed, env = await history_env(make_backend, tmp_path)
    out = tmp_path / "b.png"
    cli(env, "export", "png", "--out", str(out), "--at", "23")
    got = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(got, rgb_of(replay_to(placed, 23)))
    cli(env, "export", "png", "--out", str(out), "--region", "2,3,4,5", "--scale", "3")
    got = np.asarray(Image.open(out).convert("RGB"))
    want = rgb_of(replay_to(placed, 60))[3:8, 2:6].repeat(3, axis=0).repeat(3, axis=1)
    assert np.array_equal(got, want)


async def test_timelapse_frames_and_last_frame(make_backend: MakeBackend, tmp_path: Path) -> None:
    placed, env = await history_env(make_backend, tmp_path)
    gif = tmp_path / "t.gif"
    done = cli(env, "timelapse", "--out", str(gif), "--fps", "10", "--duration", "2")
    assert "20/20" in done.stderr  # the progress bar's end
    with av.open(str(gif)) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 20
    assert np.array_equal(frames[-1], rgb_of(replay_to(placed, 60)))
    assert np.array_equal(frames[0], rgb_of(replay_to(placed, 3)))  # 60 placements / 20

    mp4 = tmp_path / "t.mp4"
    cli(env, "timelapse", "--out", str(mp4), "--from", "10", "--to", "50", "--fps", "8",
        "--duration", "1", "--scale", "4")  # fmt: skip
    with av.open(str(mp4)) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 8 and frames[-1].shape == (H * 4, W * 4, 3)
    want = rgb_of(replay_to(placed, 50)).repeat(4, axis=0).repeat(4, axis=1)
    assert np.abs(frames[-1].astype(int) - want).mean() < 6  # H.264 is lossy, not by much

    webm = tmp_path / "t.webm"
    cli(env, "timelapse", "--out", str(webm), "--fps", "5", "--duration", "1", "--scale", "2")
    with av.open(str(webm)) as video:
        assert video.streams.video[0].codec_context.name in ("vp9", "libvpx-vp9")
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == 5 and frames[-1].shape == (H * 2, W * 2, 3)
