"""End-to-end tests of the web client in headless Chromium (Playwright, system browser).

Each test runs ``openplace serve`` in a subprocess on a free port with a short cooldown,
opens the page and drives it like a person would. Screenshots go to
``artifacts/screenshots/<test>-<step>.png``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.servers import free_port
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)

from openplace.client import Canvas, Cooldown, PixelInfo, Placed

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
PALETTE = [
    "#FFFFFF", "#E4E4E4", "#888888", "#222222", "#FFA7D1", "#E50000", "#E59500", "#A06A42",
    "#E5D900", "#94E044", "#02BE01", "#00D3DD", "#0083C7", "#0000EA", "#CF6EE4", "#820080",
]  # fmt: skip
# The page opens centred on pixel (10, 10) at 20 screen pixels a board pixel, so the
# pixels used below are on screen and clear of the toolbars.
START = "#x=10&y=10&z=20"
TIMEOUT = 10.0
T = TypeVar("T")


def rgb(color: int) -> list[int]:
    h = PALETTE[color]
    return [int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)]


def wait_until(cond: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ServerProcess:
    """``python -m openplace.cli serve`` in a subprocess; restartable on the same port."""

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "OPENPLACE_DATA_DIR": str(self.data_dir),
            "OPENPLACE_COOLDOWN_SECONDS": "2",  # long enough that a busy machine keeps a 429 a 429
            "OPENPLACE_COOLDOWN_BY": "user",  # the pages and the tests' users share 127.0.0.1
            "OPENPLACE_ONLINE_INTERVAL_SECONDS": "0.2",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openplace.cli", "serve",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not come up:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class ApiClient:
    """A second participant using only the HTTP API, through openplace.client's
    :class:`Canvas`; ``http`` is a raw client for requests the test builds itself."""

    def __init__(self, url: str) -> None:
        self.canvas = Canvas(url, timeout=5)
        self.token = self.canvas.session().token
        self.http = httpx.Client(base_url=url, timeout=5)

    def place(self, x: int, y: int, color: int) -> Placed:
        """Place a pixel, waiting out the cooldown if needed."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return self.canvas.place(x, y, color)
            except Cooldown as e:
                if time.monotonic() > deadline:
                    raise
                time.sleep(min(1.0, e.retry_after) + 0.02)

    def pixel(self, x: int, y: int) -> PixelInfo:
        return self.canvas.pixel(x, y)

    def close(self) -> None:
        self.canvas.close()
        self.http.close()


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_sync() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_sync: Playwright) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    b = playwright_sync.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def api(app_server: ServerProcess) -> Iterator[ApiClient]:
    c = ApiClient(app_server.url)
    yield c
    c.close()


@pytest.fixture
def open_page(browser: Browser, app_server: ServerProcess) -> Iterator[Callable[[], Page]]:
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make() -> Page:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app_server.url + "/" + START)
        wait_live(page)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


# -- page helpers ----------------------------------------------------------------------


def wait_live(page: Page) -> None:
    page.wait_for_function("() => window.openplace && window.openplace.connected")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")


def client_xy(page: Page, x: int, y: int) -> tuple[float, float]:
    p = page.evaluate("([x, y]) => window.openplace.clientOf(x, y)", [x, y])
    return p["x"], p["y"]


# The page's model holds colour c at (x, y).
MODEL_SHOWS = "([x, y, c]) => window.openplace.getPixel(x, y) === c"
# The canvas pixels at (x, y) are the colour rgb.
CANVAS_SHOWS = """([x, y, rgb]) => {
    const c = document.getElementById("board");
    const r = c.getBoundingClientRect();
    const p = window.openplace.clientOf(x, y);
    const d = devicePixelRatio;
    const px = c.getContext("2d").getImageData(
        Math.floor((p.x - r.left) * d), Math.floor((p.y - r.top) * d), 1, 1).data;
    return px[0] === rgb[0] && px[1] === rgb[1] && px[2] === rgb[2];
}"""


def wait_pixel(page: Page, x: int, y: int, color: int) -> None:
    """Until the page's model and the pixels on its canvas show ``color`` at (x, y)."""
    page.wait_for_function(MODEL_SHOWS, arg=[x, y, color])
    page.wait_for_function(CANVAS_SHOWS, arg=[x, y, rgb(color)])


def click_pixel(page: Page, x: int, y: int) -> None:
    cx, cy = client_xy(page, x, y)
    page.mouse.click(cx, cy)


def choose_color(page: Page, color: int) -> None:
    page.locator(f'.swatch[data-color="{color}"]').click()
    expect(page.locator(f'.swatch[data-color="{color}"]')).to_have_class(re.compile("selected"))


# -- tests -----------------------------------------------------------------------------


def test_click_places_pixel(
    open_page: Callable[[], Page], api: ApiClient, shot: Callable[[Page, str], Path]
) -> None:
    page = open_page()
    expect(page.locator("#cooldown")).to_have_attribute("data-state", "ready")
    expect(page.locator("#online")).to_have_text(re.compile(r"^\d+ online$"))
    shot(page, "loaded")

    # A drag pans the view and places nothing.
    sx, sy = client_xy(page, 5, 5)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 60, sy + 40, steps=5)
    page.mouse.up()
    page.wait_for_function("() => Math.abs(window.openplace.view.x - 7.5) < 0.01")
    expect(page.locator("#cooldown")).to_have_attribute("data-state", "ready")
    assert api.pixel(5, 5).user_id is None
    page.wait_for_function("() => location.hash.startsWith('#x=7&y=8&z=20')")

    choose_color(page, 13)
    # Record what the cooldown shows: with a 1 s cooldown a slow test could miss it.
    page.evaluate(
        """() => {
            const el = document.getElementById("cooldown-text");
            window.__cooldownTexts = [];
            new MutationObserver(() => window.__cooldownTexts.push(el.textContent))
                .observe(el, { childList: true, characterData: true, subtree: true });
        }"""
    )
    click_pixel(page, 12, 8)
    # The cooldown counts down in mm:ss (the server's cooldown here is 1 s).
    page.wait_for_function("() => window.__cooldownTexts.some((t) => /^\\d\\d:\\d\\d$/.test(t))")
    expect(page.locator("#cooldown")).to_be_visible()
    shot(page, "cooldown")

    wait_until(lambda: api.pixel(12, 8).color == 13, "pixel on server")
    info = api.pixel(12, 8)
    assert info.user_id is not None
    page.mouse.move(2, 400)  # off the pixel: no hover outline
    wait_pixel(page, 12, 8, 13)
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=info.seq)
    expect(page.locator("#cooldown")).to_have_attribute("data-state", "ready")

    # Right-click shows who placed the pixel: us.
    cx, cy = client_xy(page, 12, 8)
    page.mouse.click(cx, cy, button="right")
    expect(page.locator("#info")).to_be_visible()
    expect(page.locator("#info-coords")).to_have_text("(12, 8)")
    expect(page.locator("#info-user")).to_have_text(f"{info.user_id}you")
    expect(page.locator("#info-user .badge")).to_be_visible()
    expect(page.locator("#info-when")).not_to_have_text("…")
    shot(page, "inspect")

    # Zoom buttons change the view kept in the URL.
    page.locator("#zoom-in").click()
    page.wait_for_function("() => /[#&]z=32(&|$)/.test(location.hash)")


def test_refused_placement_is_reverted(
    open_page: Callable[[], Page], api: ApiClient, shot: Callable[[Page, str], Path]
) -> None:
    page = open_page()
    choose_color(page, 3)
    # The page gets its session token as it loads; on a busy machine that can come last.
    page.wait_for_function("() => localStorage.getItem('openplace.token')")
    token = page.evaluate("() => localStorage.getItem('openplace.token')")

    def place_elsewhere_first(route: Route) -> None:
        # The same user places from elsewhere just before the page's request reaches the
        # server, so the server refuses it with a real 429 (cooldown).
        r = api.http.post(
            "/api/pixel",
            json={"x": 40, "y": 0, "color": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        route.continue_()

    page.route("**/api/pixel", place_elsewhere_first)
    click_pixel(page, 14, 6)
    # The optimistic pixel is taken back, a gentle message shows and the cooldown starts.
    expect(page.locator("#toast")).to_contain_text("place again")
    page.unroute("**/api/pixel")
    wait_pixel(page, 14, 6, 0)
    assert api.pixel(14, 6).user_id is None
    assert api.pixel(40, 0).color == 1
    shot(page, "refused")

    # While cooling down, a click does not even send a request. (Clicked from inside the
    # page in the same task that sees the cooldown, so a slow test cannot miss it.)
    sent: list[str] = []
    page.on("request", lambda req: sent.append(req.url) if req.method == "POST" else None)
    clicked_while_cooling = page.evaluate(
        """([x, y]) => {
            const state = document.getElementById("cooldown").dataset.state;
            if (state !== "cooling") return false;
            const c = document.getElementById("board");
            const p = window.openplace.clientOf(x, y);
            const init = { pointerId: 99, pointerType: "mouse", button: 0, bubbles: true,
                           clientX: p.x, clientY: p.y };
            c.dispatchEvent(new PointerEvent("pointerdown", init));
            c.dispatchEvent(new PointerEvent("pointerup", init));
            return true;
        }""",
        [15, 6],
    )
    print(f"clicked while cooling: {clicked_while_cooling}")
    if clicked_while_cooling:
        expect(page.locator("#toast")).to_contain_text("Hang on")
        assert page.evaluate("() => window.openplace.getPixel(15, 6)") == 0
        assert not sent

    # Once the cooldown is over, clicking places again.
    expect(page.locator("#cooldown")).to_have_attribute("data-state", "ready")
    click_pixel(page, 14, 6)
    wait_pixel(page, 14, 6, 3)
    wait_until(lambda: api.pixel(14, 6).color == 3, "pixel on server")
    assert api.pixel(15, 6).user_id is None


def test_api_placement_arrives_live(
    open_page: Callable[[], Page], api: ApiClient, shot: Callable[[Page, str], Path]
) -> None:
    page = open_page()
    page.evaluate("() => { window.__sameDocument = true; }")
    before = page.evaluate("() => window.openplace.lastSeq")
    placed = api.place(20, 15, 5)
    other = ApiClient(str(api.http.base_url))
    placed2 = other.place(21, 15, 12)
    other.close()
    wait_pixel(page, 20, 15, 5)
    wait_pixel(page, 21, 15, 12)
    assert placed2.seq == placed.seq + 1
    page.wait_for_function("(s) => window.openplace.lastSeq === s", arg=placed2.seq)
    assert placed.seq > before
    assert page.evaluate("() => window.__sameDocument") is True
    shot(page, "arrived")


def test_two_pages(
    open_page: Callable[[], Page], api: ApiClient, shot: Callable[[Page, str], Path]
) -> None:
    a = open_page()
    b = open_page()
    expect(b.locator("#online")).to_have_text("2 online")
    choose_color(a, 11)
    click_pixel(a, 30, 20)
    wait_pixel(b, 30, 20, 11)
    wait_pixel(a, 30, 20, 11)
    assert api.pixel(30, 20).color == 11
    shot(a, "page-a")
    shot(b, "page-b")


def test_resume_after_server_restart(
    open_page: Callable[[], Page],
    app_server: ServerProcess,
    api: ApiClient,
    shot: Callable[[Page, str], Path],
) -> None:
    page = open_page()
    page.evaluate("() => { window.__sameDocument = true; }")
    api.place(3, 3, 3)
    wait_pixel(page, 3, 3, 3)

    app_server.stop()
    page.wait_for_function("() => !window.openplace.connected")
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    shot(page, "disconnected")

    app_server.start()
    # Placed while the page is still reconnecting: replayed to it with since=<lastSeq>.
    api.place(4, 3, 6)
    wait_live(page)
    wait_pixel(page, 4, 3, 6)
    # And live again after that.
    third = ApiClient(app_server.url)
    third.place(5, 3, 10)
    third.close()
    wait_pixel(page, 5, 3, 10)
    wait_pixel(page, 3, 3, 3)
    assert page.evaluate("() => window.__sameDocument") is True
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    shot(page, "resumed")


def test_resync_when_server_state_is_replaced(
    open_page: Callable[[], Page],
    app_server: ServerProcess,
    tmp_path: Path,
    shot: Callable[[Page, str], Path],
) -> None:
    """A server behind the page's seq (e.g. restored from backup) makes it reload the board."""
    page = open_page()
    page.evaluate("() => { window.__sameDocument = true; }")
    for i in range(3):
        old = ApiClient(app_server.url)
        old.place(8 + i, 12, 13)
        old.close()
    wait_pixel(page, 10, 12, 13)

    app_server.stop()
    app_server.data_dir = tmp_path / "other-data"
    app_server.start()
    fresh = ApiClient(app_server.url)
    fresh.place(9, 14, 9)  # seq 1 on the new server, far behind the page
    wait_live(page)
    wait_pixel(page, 9, 14, 9)
    wait_pixel(page, 10, 12, 0)  # the old pixels are gone: the board was reloaded
    page.wait_for_function("() => window.openplace.lastSeq === 1")
    fresh.close()
    fresh = ApiClient(app_server.url)
    fresh.place(11, 14, 9)
    wait_pixel(page, 11, 14, 9)
    fresh.close()
    assert page.evaluate("() => window.__sameDocument") is True
    shot(page, "resynced")
