"""Templates: an image placed at (x, y), what differs from the board, what to fix first,
and ``openplace template diff`` against a running canvas."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openplace.cli import main
from openplace.client import AsyncCanvas
from openplace.core.palette import PALETTE
from openplace.templates import TemplateError, diff, from_rgba, load, priorities
from tests.conftest import LiveServer

WHITE, RED, BLUE = 0, 5, 13  # palette indexes


def rgb(index: int) -> tuple[int, int, int]:
    c = PALETTE[index]
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def rgba_image(rows: list[list[int | None]]) -> np.ndarray:
    """Palette indexes as RGBA pixels; ``None`` is transparent."""
    out = np.zeros((len(rows), len(rows[0]), 4), dtype=np.uint8)
    for j, row in enumerate(rows):
        for i, c in enumerate(row):
            if c is not None:
                out[j, i] = (*rgb(c), 255)
    return out


def png(rows: list[list[int | None]]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba_image(rows), "RGBA").save(buf, "PNG")
    return buf.getvalue()


def blank(width: int = 20, height: int = 10) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint8)


def test_an_image_becomes_palette_colours_with_transparency() -> None:
    t = load(png([[RED, None], [BLUE, RED]]), at=(3, 4))
    assert (t.x, t.y, t.width, t.height, t.wanted) == (3, 4, 2, 2, 3)
    assert t.colors[0, 0] == RED and t.colors[1, 0] == BLUE and not t.mask[0, 1]
    assert t.off_palette == 0


def test_an_off_palette_colour_is_mapped_to_the_nearest_and_counted() -> None:
    pixels = rgba_image([[RED, RED]])
    pixels[0, 1, :3] = (250, 10, 10)  # nearly #E50000
    t = from_rgba(pixels)
    assert t.colors.tolist() == [[RED, RED]] and t.off_palette == 1


def test_a_template_that_does_not_fit_or_is_not_an_image_is_refused() -> None:
    with pytest.raises(TemplateError, match="does not fit"):
        load(png([[RED, RED]]), at=(19, 0), board=(20, 10))
    with pytest.raises(TemplateError, match="not an image"):
        load(b"not a png at all")


def test_diff_counts_and_locates_wrong_pixels_but_ignores_transparent_ones() -> None:
    t = load(png([[RED, None, RED], [RED, RED, RED]]), at=(5, 2))
    board = blank()
    board[2, 5] = RED  # right
    board[2, 6] = BLUE  # under the transparent pixel: not the template's business
    d = diff(t, board)
    assert (d.wanted, d.correct, d.wrong, d.complete) == (5, 1, 4, False)
    assert sorted(d.pixels()) == [(5, 3, RED, WHITE), (6, 3, RED, WHITE),
                                  (7, 2, RED, WHITE), (7, 3, RED, WHITE)]  # fmt: skip
    assert d.bbox == (5, 2, 7, 3)
    board[2:4, 5:8] = RED
    assert diff(t, board).complete and diff(t, board).bbox is None


def test_the_most_damaged_area_is_fixed_before_a_stray_pixel() -> None:
    t = from_rgba(rgba_image([[RED] * 12 for _ in range(6)]), at=(0, 0))
    board = blank()
    board[0:6, 0:12] = RED
    board[5, 11] = BLUE  # a lone stray pixel in a corner
    board[1:4, 1:4] = BLUE  # a griefed 3x3 block
    fixes = priorities(t, board)
    assert len(fixes) == 10
    assert [f.damage for f in fixes] == [9] * 9 + [1]  # 5x5 around each holds the block
    assert {(f.x, f.y) for f in fixes[:9]} == {(x, y) for x in (1, 2, 3) for y in (1, 2, 3)}
    assert (fixes[-1].x, fixes[-1].y, fixes[-1].damage) == (11, 5, 1)
    assert all(f.want == RED and f.have == BLUE for f in fixes)


def test_bots_seeded_differently_pick_different_pixels_among_equals() -> None:
    t = from_rgba(rgba_image([[RED] * 20 for _ in range(10)]))
    orders = {tuple((f.x, f.y) for f in priorities(t, blank(), seed=s)[:5]) for s in range(4)}
    assert len(orders) > 1
    assert priorities(t, blank(), seed=7) == priorities(t, blank(), seed=7)


async def template_diff(*args: str) -> int:
    return await asyncio.to_thread(main, ["template", "diff", *args])


async def test_template_diff_reports_what_differs_on_a_running_canvas(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "flag.png"
    image.write_bytes(png([[RED, RED, None], [BLUE, BLUE, BLUE]]))
    async with AsyncCanvas(server.url) as canvas:
        placed = await canvas.place(10, 20, RED)

    assert await template_diff(str(image), "--at", "10,20", "--url", server.url) == 1
    out = capsys.readouterr().out
    assert "flag.png: 3x2 at 10,20, 5 pixels set" in out
    assert f"board at #{placed.seq}: 1 right, 4 wrong (20.0% done)" in out
    assert "wrong pixels within x 10..12, y 20..21" in out
    assert "  11,20: 5 -> 0" in out and "  12,21: 13 -> 0" in out

    for x, y, c in [(11, 20, RED), (10, 21, BLUE), (11, 21, BLUE), (12, 21, BLUE)]:
        async with AsyncCanvas(server.url) as someone:  # a user each: the cooldown is 300 s
            await someone.place(x, y, c)
    assert await template_diff(str(image), "--at", "10,20", "--url", server.url) == 0
    assert "5 right, 0 wrong (100.0% done)" in capsys.readouterr().out


async def test_template_diff_refuses_a_template_off_the_board(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "wide.png"
    image.write_bytes(png([[RED] * 5]))
    assert await template_diff(str(image), "--at", "98,0", "--url", server.url) == 2
    assert "does not fit on the 100x80 board" in capsys.readouterr().err
    assert await template_diff(str(tmp_path / "missing.png"), "--at", "0,0",
                               "--url", server.url) == 2  # fmt: skip
    with pytest.raises(SystemExit):  # argparse: a usage error
        await template_diff(str(image), "--at", "1;2", "--url", server.url)
