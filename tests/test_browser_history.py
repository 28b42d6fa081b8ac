"""The page's history mode in headless Chromium: scrubbing, a ``#seq=N`` link, the
heatmap overlay, a pixel's history in the pixel panel, and back to live.

The server answers ``GET /api/history`` 10 records at a time here, so the page learns
that size, reads the log in pages of 10 and fetches ``GET /api/board?seq=`` as a base
when it jumps far. Screenshots go to ``artifacts/screenshots/test_history_mode-*.png``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from openplace.client import Canvas, Placed
from tests.test_browser import (  # noqa: F401  (browser, playwright_sync: fixtures)
    CANVAS_SHOWS,
    START,
    TIMEOUT,
    ServerProcess,
    browser,
    client_xy,
    playwright_sync,
    rgb,
    wait_live,
    wait_pixel,
)
from tests.test_browser_csp import RECORD_VIOLATIONS

pytestmark = pytest.mark.browser

ROW_A = 5  # seqs 1..12 paint (6..17, 5) in colours 1..12; seqs 13..24 paint it blue (13)
ROW_B = 8  # seqs 25..36 paint (6..17, 8) green (10)
SPOT = (8, 3)  # seqs 37, 38, 39 paint it 3, 6, 12
SPOT_COLORS = [3, 6, 12]
HEAD = 39


@pytest.fixture
def app_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    monkeypatch.setenv("OPENPLACE_HISTORY_MAX_RECORDS", "10")
    monkeypatch.setenv("OPENPLACE_SESSIONS_PER_IP_PER_MINUTE", "10000")
    srv = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def place_as_new_user(url: str, x: int, y: int, color: int) -> Placed:
    """A new user (the client makes its session) places once."""
    with Canvas(url, timeout=5) as canvas:
        return canvas.place(x, y, color)


def expected(seq: int) -> dict[tuple[int, int], int]:
    """The colour of every pixel the placements touch, right after ``seq``."""
    board: dict[tuple[int, int], int] = {}
    for i in range(12):
        board[(6 + i, ROW_A)] = 0
        board[(6 + i, ROW_B)] = 0
    board[SPOT] = 0
    for s in range(1, seq + 1):
        if s <= 12:
            board[(6 + s - 1, ROW_A)] = s
        elif s <= 24:
            board[(6 + s - 13, ROW_A)] = 13
        elif s <= 36:
            board[(6 + s - 25, ROW_B)] = 10
        else:
            board[SPOT] = SPOT_COLORS[s - 37]
    return board


# The canvas pixels at (x, y) are within 3 of the colour rgb (blended with the heatmap).
CANVAS_NEAR = (
    CANVAS_SHOWS.replace("px[0] === rgb[0] &&", "Math.abs(px[0] - rgb[0]) < 4 &&")
    .replace("px[1] === rgb[1] &&", "Math.abs(px[1] - rgb[1]) < 4 &&")
    .replace("px[2] === rgb[2]", "Math.abs(px[2] - rgb[2]) < 4")
)
assert CANVAS_NEAR.count("Math.abs") == 3


def canvas_shows(page: Page, seq: int) -> None:
    """The canvas shows the board right after ``seq`` at every pixel the test placed."""
    page.wait_for_function(f"() => window.openplace.history.seq === {seq}")
    for (x, y), color in expected(seq).items():
        page.wait_for_function(CANVAS_SHOWS, arg=[x, y, rgb(color)], timeout=3000)


def scrub(page: Page, seq: int) -> None:
    """Move the slider to ``seq`` as a user would (an ``input`` event)."""
    page.evaluate(
        """(seq) => {
            const s = document.getElementById("history-slider");
            s.value = String(seq);
            s.dispatchEvent(new Event("input", { bubbles: true }));
        }""",
        seq,
    )


def open_at(browser: Browser, url: str, errors: list[str], requests: list[str]) -> Page:  # noqa: F811
    """A new page at ``url``, live; its uncaught errors and requests ("METHOD /path") listed."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT * 1000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(RECORD_VIOLATIONS)  # the page's CSP holds in history mode too
    origin = url.split("/#")[0]
    page.on("request", lambda req: requests.append(f"{req.method} {req.url.removeprefix(origin)}"))
    page.goto(url)
    wait_live(page)
    return page


def no_csp_violations(page: Page) -> None:
    violations = page.evaluate("() => window.__cspViolations")
    assert violations == [], f"CSP violations: {violations}"


def test_history_mode(
    browser: Browser,  # noqa: F811
    app_server: ServerProcess,
    shot: Callable[[Page, str], Path],
) -> None:
    http = httpx.Client(base_url=app_server.url, timeout=5)
    api = Canvas(app_server.url, timeout=5)
    users: dict[int, str] = {}
    try:
        for s in range(1, HEAD + 1):
            if s <= 12:
                x, y, c = 6 + s - 1, ROW_A, s
            elif s <= 24:
                x, y, c = 6 + s - 13, ROW_A, 13
            elif s <= 36:
                x, y, c = 6 + s - 25, ROW_B, 10
            else:
                (x, y), c = SPOT, SPOT_COLORS[s - 37]
            placed = place_as_new_user(app_server.url, x, y, c)
            assert placed.seq == s
            if s >= 37:
                info = api.pixel(x, y)
                assert info.user_id is not None
                users[s] = info.user_id

        errors: list[str] = []
        requests: list[str] = []
        page = open_at(browser, f"{app_server.url}/{START}", errors, requests)
        page.wait_for_function(f"() => window.openplace.lastSeq === {HEAD}")

        # Enter history mode: it opens at the newest moment; placing is off, and says so.
        page.locator("#history-open").click()
        expect(page.locator("#history")).to_be_visible()
        expect(page.locator(".toolbar")).to_be_hidden()
        expect(page.locator("#history-note")).to_contain_text("Placing is paused")
        expect(page.locator("#history-slider")).to_have_attribute("max", str(HEAD))
        canvas_shows(page, HEAD)
        expect(page.locator("#history-seq")).to_have_text(f"#{HEAD}")
        expect(page.locator("#history-time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
        shot(page, "entered")

        # Scrub back to seq 12: the first row in colours 1..12, the second still white.
        scrub(page, 12)
        canvas_shows(page, 12)
        expect(page.locator("#history-seq")).to_have_text("#12")
        expect(page.locator("#history-time")).to_have_attribute(
            "datetime", re.compile(r"^\d{4}-\d\d-\d\dT")
        )
        page.wait_for_function("() => /[#&]seq=12(&|$)/.test(location.hash)")
        shot(page, "seq-12")

        # And forward to seq 30: the first row blue, half the second green.
        scrub(page, 30)
        canvas_shows(page, 30)
        expect(page.locator("#history-seq")).to_have_text("#30")
        page.wait_for_function("() => /[#&]seq=30(&|$)/.test(location.hash)")
        png = page.locator("#history-png")
        expect(png).to_have_attribute("href", re.compile(r"^/api/board\.png\?seq=30&scale=\d+$"))
        assert png.get_attribute("download")
        r = http.get(str(png.get_attribute("href")))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        shot(page, "seq-30")
        # The log is read in pages (of 10 once the server says so), never one request a step.
        history_reqs = [u for u in requests if "/api/history" in u]
        print("history requests:", history_reqs)
        assert 1 <= len(history_reqs) <= 6, history_reqs

        # Dragging the slider to its left end shows the empty board.
        box = page.locator("#history-slider").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] - 40, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        canvas_shows(page, 0)
        expect(page.locator("#history-time")).to_have_text("before the first placement")

        # A #seq=N link opens history mode at N, fetching a base board to start from.
        link = f"{app_server.url}/#x=10&y=10&z=20&seq=35"
        linked_reqs: list[str] = []
        linked = open_at(browser, link, errors, linked_reqs)
        linked.wait_for_function("() => window.openplace.history.active")
        canvas_shows(linked, 35)
        print("requests for the link:", [u for u in linked_reqs if "seq=" in u or "history" in u])
        # Pages of 10: the board at 30 as a base, then the page 31..40 (not 1..30).
        assert "GET /api/board?seq=30" in linked_reqs, linked_reqs
        assert "GET /api/history?from=21&to=30" not in linked_reqs, linked_reqs
        expect(linked.locator("#history-seq")).to_have_text("#35")
        expect(linked.locator("#history-slider")).to_have_value("35")
        assert "seq=35" in linked.evaluate("() => location.hash")
        shot(linked, "link-seq-35")
        linked.reload()
        wait_live(linked)
        canvas_shows(linked, 35)
        no_csp_violations(linked)
        linked.context.close()

        # The heatmap overlay: at seq 30, placed pixels glow and the rest is darkened.
        scrub(page, 30)
        canvas_shows(page, 30)
        page.locator("#history-heat").click()
        page.wait_for_function("() => window.openplace.history.heatmapSeq === 30")
        # No placement at (20, 12): black at 60 % over white.
        page.wait_for_function(CANVAS_NEAR, arg=[20, 12, [102, 102, 102]])
        assert not page.evaluate(CANVAS_SHOWS, [6, ROW_A, rgb(13)])  # tinted, not pure blue
        shot(page, "heatmap")
        page.locator("#history-heat").click()
        page.wait_for_function(CANVAS_SHOWS, arg=[20, 12, rgb(0)])

        # The pixel panel at seq 38: that pixel's placements up to 38, and one later.
        scrub(page, 38)
        canvas_shows(page, 38)
        posts_before = [u for u in requests if u.startswith("POST")]
        cx, cy = client_xy(page, *SPOT)
        page.mouse.click(cx, cy)  # a click in history mode inspects; it never places
        expect(page.locator("#info")).to_be_visible()
        expect(page.locator("#info-coords")).to_have_text(f"({SPOT[0]}, {SPOT[1]}) at #38")
        expect(page.locator("#info-history .hist-item")).to_have_count(2)
        expect(page.locator("#info-history .hist-item.current")).to_have_attribute("data-seq", "38")
        expect(page.locator("#info-user")).to_have_text(users[38])
        expect(page.locator("#info-history-note")).to_contain_text("1 later")
        page.mouse.move(2, 400)
        shot(page, "pixel-history")
        assert [u for u in requests if u.startswith("POST")] == posts_before
        # A placement in the list takes the canvas to its moment.
        page.locator('#info-history .hist-item[data-seq="37"]').click()
        canvas_shows(page, 37)

        # Live placements keep arriving in history mode; the canvas stays at the moment.
        live = place_as_new_user(app_server.url, 30, 4, 5)
        assert live.seq == HEAD + 1
        expect(page.locator("#history-slider")).to_have_attribute("max", str(HEAD + 1))
        page.wait_for_function("() => window.openplace.livePixel(30, 4) === 5")
        assert page.evaluate(CANVAS_SHOWS, [30, 4, rgb(0)])
        assert page.evaluate("() => window.openplace.history.seq") == 37

        # One click back to live: the canvas is the live board, and new placements show.
        page.locator("#history-live").click()
        expect(page.locator("#history")).to_be_hidden()
        expect(page.locator(".toolbar")).to_be_visible()
        wait_pixel(page, 30, 4, 5)
        wait_pixel(page, SPOT[0], SPOT[1], SPOT_COLORS[-1])
        page.wait_for_function("() => !location.hash.includes('seq=')")
        place_as_new_user(app_server.url, 31, 4, 13)
        wait_pixel(page, 31, 4, 13)
        shot(page, "live-again")
        no_csp_violations(page)
        page.context.close()
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        http.close()
        api.close()
