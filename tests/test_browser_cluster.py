"""End-to-end: the web client in headless Chromium against the distributed cluster.

Two browsers, each on a different websocket (realtime) process behind nginx, see each
other's pixels; Redis is then killed and restarted empty, the persister restores the
board from PostgreSQL, and both pages end up showing exactly the server's board, with
no acknowledged placement lost, and keep receiving live placements.

Uses the async Playwright API (the ``cluster`` fixture is async) with the same system
Chromium and launch arguments as ``tests/test_browser.py``. Screenshots go to
``artifacts/screenshots/<test>-<step>.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import redis.asyncio
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.servers import RedisServer
from playwright.async_api import Browser, Page, Response, WebSocket, async_playwright, expect

from openplace.client import AsyncCanvas, CanvasError, Placed
from openplace.distributed.cluster import Cluster
from openplace.distributed.keys import ONLINE
from tests.conftest import SHOTS, mint_token
from tests.test_browser import (
    CANVAS_SHOWS,
    MODEL_SHOWS,
    START,
    TIMEOUT,
    rgb,
)

pytestmark = pytest.mark.browser

W, H = 100, 80  # the cluster fixture's board
RESTORE_TIMEOUT = 30.0  # Redis restart -> board restored -> pages resynced


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Awaitable[Path]]:
    name = re.sub(r"[^\w.-]+", "_", request.node.name)

    async def take(page: Page, step: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{step}.png"
        await page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path

    return take


class Tab:
    """A page in its own browser context, with what it logged and the control messages
    its websockets received."""

    def __init__(self, name: str, page: Page) -> None:
        self.name = name
        self.page = page
        self.errors: list[str] = []
        self.console: list[str] = []
        self.controls: list[dict[str, Any]] = []
        self.sockets: list[str] = []  # the URL of every websocket the page opened
        self.events: list[str] = []  # a timeline of board fetches and websockets, to debug
        self.t0 = time.monotonic()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("websocket", self._on_websocket)
        page.on("response", self._on_response)

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:7.3f} {what}")

    def _on_response(self, r: Response) -> None:
        if "/api/board" in r.url:
            h = r.headers
            self.note(f"GET /api/board {r.status} x-seq={h.get('x-seq')} "
                      f"x-board-id={h.get('x-board-id')} x-cache={h.get('x-cache')}")  # fmt: skip

    def _on_websocket(self, ws: WebSocket) -> None:
        self.sockets.append(ws.url)
        self.note(f"websocket {ws.url}")

        def frame(payload: str | bytes) -> None:
            if isinstance(payload, str):
                if '"online"' not in payload:
                    self.note(f"  <- {payload}")
                with contextlib.suppress(ValueError):
                    self.controls.append(json.loads(payload))

        ws.on("framereceived", frame)
        ws.on("close", lambda _ws: self.note(f"closed {ws.url}"))


# -- helpers ---------------------------------------------------------------------------


async def wait_until(
    cond: Callable[[], Awaitable[Any]], what: str, timeout: float = TIMEOUT
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_live(page: Page) -> None:
    await page.wait_for_function("() => window.openplace && window.openplace.connected")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")


async def wait_pixel(page: Page, x: int, y: int, color: int, timeout: float = TIMEOUT) -> None:
    """Until the page's model and the pixels on its canvas show ``color`` at (x, y)."""
    await page.wait_for_function(MODEL_SHOWS, arg=[x, y, color], timeout=timeout * 1000)
    await page.wait_for_function(CANVAS_SHOWS, arg=[x, y, rgb(color)], timeout=timeout * 1000)


async def page_board(page: Page) -> list[int]:
    """Every pixel's colour as the page shows it (row-major)."""
    pixels = await page.evaluate(
        """([w, h]) => {
            const out = new Array(w * h);
            for (let y = 0; y < h; y++)
                for (let x = 0; x < w; x++) out[y * w + x] = window.openplace.getPixel(x, y);
            return out;
        }""",
        [W, H],
    )
    return cast(list[int], pixels)


class Server:
    """Direct access to the cluster's processes (not through nginx); an API process's
    through the Python client."""

    def __init__(self, cluster: Cluster, http: httpx.AsyncClient, canvas: AsyncCanvas) -> None:
        self.http = http
        self.canvas = canvas  # of the first API process
        self.realtime = [f"http://127.0.0.1:{p}/healthz" for p in cluster.realtime_ports]

    async def health(self) -> list[dict[str, Any]]:
        return [(await self.http.get(url)).json() for url in self.realtime]

    async def clients(self) -> list[int]:
        return [h["clients"] for h in await self.health()]

    async def board(self) -> tuple[list[int], int, str]:
        """``(pixels, seq, board id)`` straight from an API process (``pixels`` row-major)."""
        board = await self.canvas.board()
        assert board.board_id is not None
        return [int(c) for c in board.colors.flat], board.seq, board.board_id

    async def place(self, x: int, y: int, color: int, timeout: float = TIMEOUT) -> Placed:
        """Place with a fresh identity, retrying while the stack recovers (not on 4xx)."""
        deadline = time.monotonic() + timeout
        async with AsyncCanvas(self.canvas.url, token=mint_token(), timeout=10) as canvas:
            while True:
                try:
                    return await canvas.place(x, y, color)
                except CanvasError as exc:
                    assert exc.status >= 500, exc
                    why = str(exc)
                except httpx.HTTPError as exc:
                    why = repr(exc)
                if time.monotonic() > deadline:
                    raise AssertionError(f"placement never accepted: {why}")
                await asyncio.sleep(0.1)


async def same_board(tab: Tab, server: Server, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Until the page is live at the server's seq and shows exactly the server's board."""
    pixels, seq, board_id = await server.board()
    await tab.page.wait_for_function(
        "(s) => window.openplace.connected && window.openplace.lastSeq === s",
        arg=seq,
        timeout=timeout * 1000,
    )
    shown = await page_board(tab.page)
    diff = [(i % W, i // W, shown[i], pixels[i]) for i in range(W * H) if shown[i] != pixels[i]]
    assert not diff, f"page {tab.name} differs from the server at seq {seq}: {diff[:20]}"
    return seq, board_id


async def place_by_click(tab: Tab, x: int, y: int, color: int) -> dict[str, Any]:
    """Choose ``color`` and click (x, y); returns the server's acknowledgement."""
    page = tab.page
    swatch = page.locator(f'.swatch[data-color="{color}"]')
    await swatch.click()
    await expect(swatch).to_have_class(re.compile("selected"))
    await expect(page.locator("#cooldown")).to_have_attribute("data-state", "ready")
    p = await page.evaluate("([x, y]) => window.openplace.clientOf(x, y)", [x, y])
    async with page.expect_response(
        lambda r: r.url.endswith("/api/pixel") and r.request.method == "POST"
    ) as info:
        await page.mouse.click(p["x"], p["y"])
    response = await info.value
    assert response.status == 200, await response.text()
    await page.mouse.move(2, 400)  # off the board's pixels: no hover outline
    # Acknowledged: the page now counts down the (300 s) cooldown.
    await expect(page.locator("#cooldown")).to_have_attribute("data-state", "cooling")
    return cast(dict[str, Any], await response.json())


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# -- the test --------------------------------------------------------------------------


async def test_two_browsers_on_two_realtime_processes_survive_redis_restart(
    cluster: Cluster,
    redis_server: RedisServer,
    browser: Browser,
    shot: Callable[[Page, str], Awaitable[Path]],
) -> None:
    tabs: list[Tab] = []

    async def open_tab(name: str) -> Tab:
        ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(TIMEOUT * 1000)
        tab = Tab(name, await ctx.new_page())
        tabs.append(tab)
        await tab.page.goto(cluster.url + "/" + START)
        await wait_live(tab.page)
        return tab

    api = f"http://127.0.0.1:{cluster.api_ports[0]}"
    async with httpx.AsyncClient(timeout=10) as http, AsyncCanvas(api, timeout=10) as canvas:
        server = Server(cluster, http, canvas)
        try:
            await _scenario(cluster, redis_server, server, open_tab, shot)
        except BaseException:
            # Everything needed to tell what went wrong, in the test's output.
            for tab in tabs:
                print(f"--- page {tab.name}: errors {tab.errors}")
                print(f"--- page {tab.name}: timeline\n" + "\n".join(tab.events))
                print(f"--- page {tab.name}: console\n" + "\n".join(tab.console[-40:]))
                try:
                    await shot(tab.page, f"failed-{tab.name}")
                except Exception as exc:
                    print(f"no screenshot of {tab.name}: {exc!r}")
            logs = cluster.run_dir.glob("*.log") if cluster.run_dir is not None else ()
            for log in sorted(logs):
                print(f"--- {log}\n{tail(log)}")
            raise
        finally:
            for tab in tabs:
                await tab.page.context.close()
        for tab in tabs:
            print(f"--- page {tab.name}: timeline\n" + "\n".join(tab.events))
        for tab in tabs:
            assert not tab.errors, f"uncaught errors in page {tab.name}: {tab.errors}"


async def _scenario(
    cluster: Cluster,
    redis_server: RedisServer,
    server: Server,
    open_tab: Callable[[str], Awaitable[Tab]],
    shot: Callable[[Page, str], Awaitable[Path]],
) -> None:
    # 1. Two pages through nginx, each on a different realtime process.
    a = await open_tab("a")
    counts = await wait_until(
        lambda: _clients_if(server, lambda c: sum(c) == 1), "page A on a realtime process"
    )
    a_proc = counts.index(1)
    b = await open_tab("b")
    for attempt in range(12):
        # The page is live, so its connection is counted; wait for any old one to go.
        counts = await wait_until(
            lambda: _clients_if(server, lambda c: sum(c) == 2), "two connections in all"
        )
        print(f"attempt {attempt}: clients per realtime process {counts}")
        if counts[a_proc] == 1:
            break
        await b.page.reload()
        await wait_live(b.page)
    assert sorted(counts) == [1, 1], f"page B never landed on the other process: {counts}"
    for tab in (a, b):
        await tab.page.evaluate("() => { window.__sameDocument = true; }")
    await _check_online(server, redis_server, (a, b))
    await shot(a.page, "1-a-connected")
    await shot(b.page, "1-b-connected")

    # 2. A places, B sees it; B places, A sees it.
    placed_a = await place_by_click(a, 12, 8, 11)
    await wait_pixel(b.page, 12, 8, 11)
    await wait_pixel(a.page, 12, 8, 11)
    await shot(a.page, "2-a-placed")
    await shot(b.page, "2-b-sees-a")
    placed_b = await place_by_click(b, 14, 9, 6)
    await wait_pixel(a.page, 14, 9, 6)
    await wait_pixel(b.page, 14, 9, 6)
    await shot(b.page, "3-b-placed")
    await shot(a.page, "3-a-sees-b")
    acked = {placed_a["seq"]: (8 * W + 12, 11), placed_b["seq"]: (9 * W + 14, 6)}
    for tab in (a, b):
        seq, board_before = await same_board(tab, server)
    assert seq == max(acked)

    # 3. Redis dies and comes back empty; the persister restores it from PostgreSQL.
    # Record, in each page, every change of what it shows at the two placed pixels.
    for tab in (a, b):
        await tab.page.evaluate(WATCH_JS, [[12, 8], [14, 9]])
    redis_server.kill()
    await asyncio.sleep(0.5)
    redis_server.start()

    async def restored() -> bool:
        try:
            _, _, board_id = await server.board()
        except (httpx.HTTPError, CanvasError):
            return False
        return board_id != board_before

    await wait_until(restored, "the board restored under a new id", RESTORE_TIMEOUT)
    pixels, seq_after, board_after = await server.board()
    assert seq_after >= max(acked), "the seq went back"
    for s, (index, color) in acked.items():
        assert pixels[index] == color, f"acknowledged placement {s} lost"
    for tab in (a, b):
        # The page is told its board was replaced, reloads it and resumes from it.
        await wait_until(functools.partial(_on_board, tab, board_after),
                         f"page {tab.name} on the restored board", RESTORE_TIMEOUT)  # fmt: skip
        assert any(m.get("type") == "resync" for m in tab.controls), tab.controls
        await same_board(tab, server)
        await wait_pixel(tab.page, 12, 8, 11)
        await wait_pixel(tab.page, 14, 9, 6)
    for tab in (a, b):
        shown = await tab.page.evaluate("() => window.__shown")
        print(f"page {tab.name} showed (12,8),(14,9),lastSeq: {shown}")
        # Once placed and acknowledged, neither pixel may vanish, not even for a moment
        # (a cache could still hold a board from before the restore).
        assert all(v[:2] == [11, 6] for v in shown), f"page {tab.name} lost pixels: {shown}"
    await shot(a.page, "4-a-after-redis-restart")
    await shot(b.page, "4-b-after-redis-restart")

    # Live again: a placement through the HTTP API reaches both pages.
    placed = await server.place(16, 10, 12, RESTORE_TIMEOUT)
    for tab in (a, b):
        await wait_pixel(tab.page, 16, 10, 12)
        seq, _ = await same_board(tab, server)
        assert seq == placed.seq
        await expect(tab.page.locator("#status")).to_have_attribute("data-state", "live")
        assert await tab.page.evaluate("() => window.__sameDocument") is True
    await shot(a.page, "5-a-api-placement")
    await shot(b.page, "5-b-api-placement")
    # Both realtime processes are at the server's seq, and hold just the two pages'
    # connections (the pages reconnected through nginx, so maybe both to one process).
    health = await wait_until(
        lambda: _health_if(server, lambda h: sum(x["clients"] for x in h) == 2),
        "the pages' old connections closed",
    )
    print(f"after the restore: {health}")
    assert all(h["seq"] == placed.seq for h in health), health

    # The acknowledged placements are in the durable log, under their seqs.
    conn = await asyncpg.connect(cluster.settings.database_url)
    try:
        rows = await conn.fetch("SELECT seq, idx, color FROM placements ORDER BY seq")
    finally:
        await conn.close()
    log = {r[0]: (r[1], r[2]) for r in rows}
    assert sorted(log) == list(range(1, len(log) + 1)), "the log must stay gapless"
    for s, item in acked.items():
        assert log[s] == item, f"acknowledged placement {s} not in the log"
    assert log[placed.seq] == (10 * W + 16, 12)


async def _check_online(server: Server, redis_server: RedisServer, tabs: tuple[Tab, ...]) -> None:
    """Both pages should soon say "2 online" (summed across processes through Redis).

    Only a warning: it is not what this test is about, and it once stayed at "1 online"
    for over 5 s (not reproduced since); the warning has what is needed to look into it.
    """
    try:
        for tab in tabs:
            await expect(tab.page.locator("#online")).to_have_text("2 online", timeout=5000)
    except AssertionError:
        r = redis.asyncio.Redis(port=redis_server.port)
        try:
            online = await r.hgetall(ONLINE)
        finally:
            await r.aclose()
        seen = {t.name: [m["count"] for m in t.controls if m.get("type") == "online"] for t in tabs}
        warnings.warn(f"the pages did not show '2 online': online messages {seen}, "
                      f"{ONLINE} = {online} at {time.time():.3f}, "
                      f"healthz {await server.health()}", stacklevel=1)  # fmt: skip


WATCH_JS = """(points) => {
    const shown = (window.__shown = []);
    let last = "";
    setInterval(() => {
        const v = points.map(([x, y]) => window.openplace.getPixel(x, y));
        v.push(window.openplace.lastSeq);
        if (v.join() !== last) {
            last = v.join();
            shown.push(v);
        }
    }, 2);
}"""


async def _on_board(tab: Tab, board_id: str) -> bool:
    """Whether the page is live on a websocket it opened for the board ``board_id``."""
    if not tab.sockets or f"board={quote(board_id)}" not in tab.sockets[-1]:
        return False
    return cast(bool, await tab.page.evaluate("() => window.openplace.connected"))


async def _clients_if(server: Server, ok: Callable[[list[int]], bool]) -> list[int] | None:
    counts = await server.clients()
    return counts if ok(counts) else None


async def _health_if(
    server: Server, ok: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]] | None:
    health = await server.health()
    return health if ok(health) else None
