"""The moderation side of the page in headless Chromium (issue 10): a visitor's page never
loads the moderator's tools; a moderator opens ``/#moderator=<token>``, rolls a vandal's
last hour back and bans them from the pixel panel, and every open page heals live; a
frozen canvas and protected areas show on every page.

Each test runs ``openplace serve`` (see :mod:`tests.test_browser`) with a known secret,
so the test can sign moderator tokens. Screenshots go to
``artifacts/screenshots/<test>-<step>.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright

from openplace.auth.moderators import Moderator, ModeratorSigner
from tests.test_browser import (
    START,
    TIMEOUT,
    ApiClient,
    ServerProcess,
    click_pixel,
    client_xy,
    wait_live,
    wait_pixel,
    wait_until,
)

pytestmark = pytest.mark.browser

SECRET = "browser-moderation-secret"
MODERATOR_KEY = "openplace.moderator"
# Registered before any script of the page runs: what the page's CSP refused, if anything.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI}`);
});
"""
# Dark pixels of the dashed outline on the top edge of the board rectangle [x, y, w, h].
OUTLINE_DARK = """([x, y, w]) => {
    const c = document.getElementById("board");
    const r = c.getBoundingClientRect();
    const d = devicePixelRatio;
    const z = window.openplace.view.z;
    const p = window.openplace.clientOf(x, y);  // the centre of pixel (x, y)
    const left = Math.round((p.x - z / 2 - r.left) * d);
    const top = Math.round((p.y - z / 2 - r.top) * d);
    const row = c.getContext("2d").getImageData(left, top, Math.round(w * z * d), 1).data;
    let dark = 0;
    for (let i = 0; i < row.length; i += 4) {
        if (row[i] < 90 && row[i + 1] < 90 && row[i + 2] < 90) dark++;
    }
    return dark;
}"""


def moderator_token(name: str = "mia") -> str:
    return ModeratorSigner(SECRET).issue(Moderator(name, time.time(), None))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tab:
    """A page in its own browser context, with the paths it requested."""

    page: Page
    requests: list[str] = field(default_factory=list)

    def requested(self, path: str) -> bool:
        """Whether the page asked for ``path``. Playwright delivers request events only
        while it runs, so this lets it run a moment first."""
        self.page.wait_for_timeout(20)
        return any(urlsplit(url).path == path for url in self.requests)


class Vandal(ApiClient):
    """An HTTP API user who knows their user id."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.user_id = self.canvas.me().user_id

    def refused(self, x: int, y: int, color: int) -> httpx.Response:
        """A placement the server refuses other than by cooldown (waited out)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            r = self.http.post(
                "/api/pixel",
                json={"x": x, "y": y, "color": color},
                headers=bearer(self.token),
            )
            if r.status_code != 429 or time.monotonic() > deadline:
                return r
            time.sleep(min(1.0, float(r.json()["retry_after"])) + 0.02)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def app_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    monkeypatch.setenv("OPENPLACE_SECRET", SECRET)  # the server's environment is ours
    srv = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def admin(app_server: ServerProcess) -> Iterator[Callable[[str, dict[str, Any]], Any]]:
    """``admin(path, body)``: a moderator's POST to ``/api/admin/<path>``, its 200 JSON."""
    token = moderator_token("ops")
    http = httpx.Client(base_url=app_server.url, timeout=5)

    def post(path: str, body: dict[str, Any]) -> Any:
        r = http.post(f"/api/admin/{path}", json=body, headers=bearer(token))
        assert r.status_code == 200, r.text
        return r.json()

    yield post
    http.close()


@pytest.fixture
def open_tab(browser: Browser, app_server: ServerProcess) -> Iterator[Callable[..., Tab]]:
    contexts: list[BrowserContext] = []
    pages: list[Page] = []
    errors: list[str] = []

    def make(hash: str = START, *, user_token: str | None = None, live: bool = True) -> Tab:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(ctx)
        ctx.add_init_script(RECORD_VIOLATIONS)
        if user_token is not None:  # the page is this user's (as after they placed from it)
            ctx.add_init_script(f"localStorage.setItem('openplace.token', {user_token!r});")
        page = ctx.new_page()
        pages.append(page)
        page.set_default_timeout(TIMEOUT * 1000)
        tab = Tab(page)
        page.on("request", lambda req: tab.requests.append(req.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(app_server.url + "/" + hash)
        if live:
            wait_live(page)
        return tab

    yield make
    violations = [v for page in pages for v in page.evaluate("() => window.__cspViolations")]
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not violations, f"the page broke its Content-Security-Policy: {violations}"


# -- page helpers ----------------------------------------------------------------------


def inspect_pixel(page: Page, x: int, y: int) -> None:
    """Right-click (x, y): the pixel panel shows who placed it."""
    page.mouse.move(2, 400)
    page.evaluate("() => document.getElementById('info-close').click()")
    cx, cy = client_xy(page, x, y)
    page.mouse.click(cx, cy, button="right")
    expect(page.locator("#info-coords")).to_have_text(f"({x}, {y})")
    expect(page.locator("#info-user")).not_to_have_text("…")
    # The panel pops up: let it finish, for the screenshots.
    page.locator("#info").evaluate("(el) => Promise.all(el.getAnimations().map((a) => a.finished))")


def wait_outlined(page: Page, x: int, y: int, w: int) -> None:
    """Until the canvas shows the dashed top edge of a protected area at (x, y), w wide,
    where the view puts it now (the canvas redraws on the next frame after a move)."""
    page.wait_for_function(
        f"""() => {{
            const dark = {OUTLINE_DARK};
            return dark([{x}, {y}, {w}]) > 8 && dark([{x + w + 1}, {y}, {w}]) === 0;
        }}"""
    )


def go_to(page: Page, hash: str) -> None:
    """Follow a link to another view of the canvas (a hash change)."""
    page.evaluate("(h) => { location.hash = h; }", hash)
    page.wait_for_function("() => window.openplace.view.z === 20")


def answer_dialogs(page: Page, prompt_text: str = "") -> list[str]:
    """Accept every confirm() and answer every prompt() of ``page``; the messages seen."""
    seen: list[str] = []

    def accept(dialog: Dialog) -> None:
        seen.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "prompt":
            dialog.accept(prompt_text)
        else:
            dialog.accept()

    page.on("dialog", accept)
    return seen


# -- tests -----------------------------------------------------------------------------


def test_a_visitor_never_loads_the_moderator_tools(
    app_server: ServerProcess, open_tab: Callable[..., Tab], shot: Callable[[Page, str], Path]
) -> None:
    someone = ApiClient(app_server.url)
    someone.place(9, 9, 13)
    someone.close()
    tab = open_tab()
    page = tab.page
    wait_pixel(page, 9, 9, 13)
    inspect_pixel(page, 9, 9)
    page.wait_for_timeout(300)  # time enough for a (wrong) dynamic import to be on the wire
    shot(page, "visitor")
    assert tab.requested("/api/policy")  # the page did its start-up requests ...
    assert not tab.requested("/moderator.js")  # ... and never asked for the tools
    expect(page.locator("#moderator")).to_have_count(0)
    expect(page.locator("#mod-actions")).to_have_count(0)
    assert page.evaluate(f"() => localStorage.getItem({MODERATOR_KEY!r})") is None

    # A token the server refuses is forgotten at once, and shows nothing.
    tab = open_tab("#moderator=not-a-token")
    page = tab.page
    assert "moderator" not in page.url
    wait_until(lambda: tab.requested("/api/admin/me"), "the token checked")
    page.wait_for_function(f"() => localStorage.getItem({MODERATOR_KEY!r}) === null")
    go_to(page, START)
    inspect_pixel(page, 9, 9)
    expect(page.locator("#moderator")).to_have_count(0)
    expect(page.locator("#mod-actions")).to_have_count(0)
    shot(page, "refused-token")


def test_b_moderator_rolls_back_and_bans_a_vandal(
    app_server: ServerProcess, open_tab: Callable[..., Tab], shot: Callable[[Page, str], Path]
) -> None:
    # An artist's pixel, then a vandal over it and next to it.
    artist = ApiClient(app_server.url)
    artist.place(6, 6, 12)
    artist.close()
    vandal = Vandal(app_server.url)
    for x in (6, 7, 8):
        vandal.place(x, 6, 5)

    visitor = open_tab().page
    mod_tab = open_tab(f"#moderator={moderator_token('mia')}")
    mod = mod_tab.page
    assert "moderator" not in mod.url  # the token left the address bar at once
    assert mod.evaluate("() => location.hash") == ""
    assert mod.evaluate(f"() => localStorage.getItem({MODERATOR_KEY!r})")
    expect(mod.locator("#moderator")).to_contain_text("Moderator: mia")
    assert mod_tab.requested("/moderator.js")
    go_to(mod, START)
    for page in (visitor, mod):
        for x in (6, 7, 8):
            wait_pixel(page, x, 6, 5)
    shot(mod, "moderator")

    # The moderator inspects the vandal's pixel and rolls back their last hour.
    inspect_pixel(mod, 7, 6)
    expect(mod.locator("#info-user")).to_have_text(vandal.user_id)
    expect(mod.locator("#mod-actions")).to_be_visible()
    shot(mod, "panel")
    dialogs = answer_dialogs(mod, "vandalism")
    mod.locator("#mod-rollback").click()
    expect(mod.locator("#mod-result")).to_have_text("rolled back: 3 pixels")
    assert dialogs == [f"confirm: Roll back everything {vandal.user_id} placed in the last hour?"]
    for page in (mod, visitor):  # both pages heal live
        wait_pixel(page, 6, 6, 12)
        wait_pixel(page, 7, 6, 0)
        wait_pixel(page, 8, 6, 0)
    shot(mod, "rolled-back")
    shot(visitor, "visitor-healed")
    expect(visitor.locator("#moderator")).to_have_count(0)

    # Then bans them: a reason, a confirmation, and their next placement is refused.
    dialogs.clear()
    mod.locator("#mod-ban").click()
    expect(mod.locator("#mod-result")).to_have_text(f"banned: {vandal.user_id}")
    assert [d.split(":")[0] for d in dialogs] == ["prompt", "confirm"]
    assert "Reason: vandalism" in dialogs[1]
    shot(mod, "banned")
    r = vandal.refused(10, 6, 5)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "banned"
    assert r.json()["reason"] == "vandalism"
    assert r.json()["expires_at"] is None

    # The vandal's own page says why it cannot place.
    own = open_tab(user_token=vandal.token).page
    expect(own.locator("#cooldown")).to_have_attribute("data-state", "ready")
    click_pixel(own, 11, 6)
    expect(own.locator("#toast")).to_contain_text("You are banned from placing pixels: vandalism")
    own.mouse.move(2, 400)  # off the pixel: no hover preview over it
    wait_pixel(own, 11, 6, 0)
    shot(own, "vandal-refused")
    vandal.close()

    # Signing out forgets the token and takes the tools away.
    mod.locator("#moderator button").click()
    expect(mod.locator("#moderator")).to_have_count(0)
    expect(mod.locator("#mod-actions")).to_have_count(0)
    assert mod.evaluate(f"() => localStorage.getItem({MODERATOR_KEY!r})") is None


def test_c_frozen_canvas_and_protected_areas_show_on_every_page(
    app_server: ServerProcess,
    open_tab: Callable[..., Tab],
    admin: Callable[[str, dict[str, Any]], Any],
    shot: Callable[[Page, str], Path],
) -> None:
    mod = open_tab(f"#moderator={moderator_token('mia')}").page
    expect(mod.locator("#moderator")).to_be_visible()
    go_to(mod, START)
    visitor_tab = open_tab()
    visitor = visitor_tab.page
    for page in (mod, visitor):
        expect(page.locator("#frozen")).to_be_hidden()

    assert admin("freeze", {})["frozen"] is True
    for page in (mod, visitor):
        expect(page.locator("#frozen")).to_be_visible()
        expect(page.locator("#frozen")).to_contain_text("The canvas is frozen")
        expect(page.locator("#cooldown-text")).to_have_text("Frozen")
    # A click does not even try: the page says why.
    posts_before = sum(1 for u in visitor_tab.requests if urlsplit(u).path == "/api/pixel")
    click_pixel(visitor, 12, 12)
    expect(visitor.locator("#toast")).to_contain_text("The canvas is frozen")
    assert sum(1 for u in visitor_tab.requests if urlsplit(u).path == "/api/pixel") == posts_before
    assert visitor.evaluate("() => window.openplace.getPixel(12, 12)") == 0
    shot(mod, "frozen-moderator")
    shot(visitor, "frozen-visitor")
    # The server refuses too; and a page opened now is frozen from the start.
    other = Vandal(app_server.url)
    r = other.refused(12, 12, 3)
    assert (r.status_code, r.json()["error"]) == (403, "frozen"), r.text
    late = open_tab().page
    expect(late.locator("#frozen")).to_be_visible()
    shot(late, "frozen-late-page")

    assert admin("unfreeze", {})["frozen"] is False
    for page in (mod, visitor, late):
        expect(page.locator("#frozen")).to_be_hidden()
        expect(page.locator("#cooldown-text")).to_have_text("Ready")
        expect(page.locator("#toast")).to_contain_text("The canvas is open again")

    # A protected rectangle is outlined on every page, and follows zoom and pan.
    area = admin("protect", {"rect": {"x": 3, "y": 3, "w": 5, "h": 4}})["area"]
    assert {k: area[k] for k in "xywh"} == {"x": 3, "y": 3, "w": 5, "h": 4}
    for page in (mod, visitor, late):
        page.mouse.move(2, 400)
        page.wait_for_function("() => window.openplace.policy.protected.length === 1")
        wait_outlined(page, 3, 3, 5)
    shot(visitor, "protected")
    visitor.locator("#zoom-in").click()
    visitor.wait_for_function("() => Math.abs(window.openplace.view.z - 32) < 0.01")
    wait_outlined(visitor, 3, 3, 5)
    visitor.keyboard.press("ArrowRight")
    visitor.wait_for_function("() => window.openplace.view.x === 13")
    wait_outlined(visitor, 3, 3, 5)
    shot(visitor, "protected-zoomed")

    # Placing inside it is refused, and the page says why.
    click_pixel(visitor, 5, 5)
    expect(visitor.locator("#toast")).to_contain_text("This area is protected")
    visitor.mouse.move(2, 400)
    wait_pixel(visitor, 5, 5, 0)
    r = other.refused(4, 4, 3)
    assert (r.status_code, r.json()["error"]) == (403, "protected"), r.text
    other.close()
    shot(visitor, "protected-refused")

    assert admin("unprotect", {"id": area["id"]})["removed"] is True
    for page in (mod, visitor, late):
        page.wait_for_function("() => window.openplace.policy.protected.length === 0")
        page.wait_for_function(f"() => ({OUTLINE_DARK})([3, 3, 5]) === 0")
    shot(visitor, "unprotected")
