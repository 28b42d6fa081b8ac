"""Template overlays in headless Chromium (issue 13 point 2): a template from a file
shows over the board at (x, y), one image pixel a board pixel, at the chosen opacity,
and hides and shows again; "differs" follows placements; a template from a URL on the
same site is kept in the address, and that link opened in another page shows the same
template at the same place; a template from another site is refused with a message and
never requested.

Screenshots go to ``artifacts/screenshots/test_<name>-<step>.png``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, FilePayload, Page, expect

from tests.test_browser import (  # noqa: F401  (app_server, browser, playwright_sync: fixtures)
    PALETTE,
    TIMEOUT,
    ApiClient,
    ServerProcess,
    app_server,
    browser,
    playwright_sync,
    wait_live,
    wait_pixel,
)
from tests.test_browser_idle import CANVAS_HASH, place_from_others

pytestmark = pytest.mark.browser

# Centred on pixel (10, 10) at 20 screen pixels a board pixel: the pixels used below are
# on screen, clear of the panels and the toolbar.
START = "#x=10&y=10&z=20"
Rgb = tuple[int, int, int]
Rgba = tuple[int, int, int, int]


def rgb(color: int) -> Rgb:
    h = PALETTE[color]
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


WHITE, RED, GREEN, BLUE = rgb(0), rgb(5), rgb(10), rgb(13)
CLEAR: Rgba = (0, 0, 0, 0)


def png(rows: list[list[Rgba]]) -> bytes:
    """An 8-bit RGBA PNG of ``rows`` (no colour profile: its colours are exact)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in rows)
    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# The colour on the board's canvas at the centre of board pixel (x, y).
CANVAS_RGB = """([x, y]) => {
    const c = document.getElementById("board");
    const r = c.getBoundingClientRect();
    const p = window.openplace.clientOf(x, y);
    const d = devicePixelRatio;
    const px = c.getContext("2d").getImageData(
        Math.floor((p.x - r.left) * d), Math.floor((p.y - r.top) * d), 1, 1).data;
    return [px[0], px[1], px[2]];
}"""
CANVAS_NEAR = f"""([x, y, want, tol]) => {{
    const got = ({CANVAS_RGB})([x, y]);
    return got.every((v, i) => Math.abs(v - want[i]) <= tol);
}}"""


def blend(over: Rgb, under: Rgb, alpha: float) -> Rgb:
    r, g, b = (round(alpha * o + (1 - alpha) * u) for o, u in zip(over, under, strict=True))
    return r, g, b


def canvas_rgb(page: Page, x: int, y: int) -> Rgb:
    r, g, b = page.evaluate(CANVAS_RGB, [x, y])
    return r, g, b


def wait_shows(page: Page, x: int, y: int, want: Rgb, tol: int = 0) -> None:
    """Until the board's canvas shows ``want`` (within ``tol`` a channel) at (x, y)."""
    try:
        page.wait_for_function(CANVAS_NEAR, arg=[x, y, list(want), tol], timeout=TIMEOUT * 1000)
    except Exception as exc:
        got = canvas_rgb(page, x, y)
        raise AssertionError(f"pixel ({x}, {y}) shows {got}, expected {want} ± {tol}") from exc


def unhover(page: Page) -> None:
    """The mouse off the board: no hover outline over the pixels looked at."""
    page.mouse.move(2, 400)


@pytest.fixture
def new_page(
    browser: Browser,  # noqa: F811
    app_server: ServerProcess,  # noqa: F811
) -> Iterator[Callable[[str], Page]]:
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(where: str) -> Page:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # No first-visit hint over the screenshots.
        page.add_init_script("localStorage.setItem('openplace.hinted', '1')")
        page.goto(where if where.startswith("http") else app_server.url + "/" + where)
        wait_live(page)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def set_position(page: Page, x: int, y: int) -> None:
    for field, value in (("#template-x", x), ("#template-y", y)):
        page.locator(field).fill(str(value))
        page.locator(field).press("Enter")
    page.wait_for_function(
        "([x, y]) => window.openplace.template.x === x && window.openplace.template.y === y",
        arg=[x, y],
    )


def test_template_from_file(
    new_page: Callable[[str], Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    page = new_page(START)
    # 4 x 3: a red row, then blue, transparent, blue, white, then a green row.
    R, G, B, W = (*RED, 255), (*GREEN, 255), (*BLUE, 255), (*WHITE, 255)
    flag = png([[R, R, R, R], [B, CLEAR, B, W], [G, G, G, G]])

    page.locator("#template-open").click()
    panel = page.locator("#template")
    expect(panel).to_be_visible()
    expect(page.locator("#template-open")).to_have_attribute("aria-pressed", "true")
    page.locator("#template-file").set_input_files(
        files=[FilePayload(name="flag.png", mimeType="image/png", buffer=flag)]
    )
    expect(page.locator("#template-status")).to_have_text("flag.png · 4\N{MULTIPLICATION SIGN}3")
    set_position(page, 6, 7)
    unhover(page)

    # Over the board at (6, 7), at the default opacity (60 %); the board shows around it
    # and through its transparent pixel.
    expect(page.locator("#template-opacity-value")).to_have_text("60%")
    wait_shows(page, 6, 7, blend(RED, WHITE, 0.6), tol=3)
    wait_shows(page, 9, 9, blend(GREEN, WHITE, 0.6), tol=3)
    wait_shows(page, 6, 8, blend(BLUE, WHITE, 0.6), tol=3)
    for x, y in [(7, 8), (5, 7), (10, 7), (6, 6), (6, 10)]:
        wait_shows(page, x, y, WHITE)
    shot(page, "file-60")

    # Opacity 100 % from the keyboard: the template's own colours, exactly.
    page.locator("#template-opacity").press("End")
    expect(page.locator("#template-opacity-value")).to_have_text("100%")
    wait_shows(page, 6, 7, RED)
    wait_shows(page, 8, 8, BLUE)
    wait_shows(page, 9, 9, GREEN)
    wait_shows(page, 7, 8, WHITE)
    shot(page, "file-100")

    # A file has no link; the panel says so.
    expect(page.locator("#template-noshare")).to_be_visible()
    expect(page.locator("#template-share")).to_be_hidden()
    assert "template=" not in page.evaluate("() => location.hash")

    # Differs: the opaque pixels that are not white on a white board. A placement that
    # matches the template counts down, one under its transparent pixel changes nothing.
    expect(page.locator("#template-differs")).to_have_text("10 pixels differ")
    seq = place_from_others(app_server.url, [(6, 7, 5), (7, 8, 3)])
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=seq)
    expect(page.locator("#template-differs")).to_have_text("9 pixels differ")
    wait_shows(page, 7, 8, rgb(3))  # through the transparent pixel

    # Hidden with the checkbox, shown again with T.
    page.locator("#template-visible").click()
    wait_shows(page, 8, 8, WHITE)
    wait_shows(page, 9, 9, WHITE)
    shot(page, "hidden")
    page.locator("#template-title").click()  # out of the checkbox: keys go to the page
    page.keyboard.press("t")
    expect(page.locator("#template-visible")).to_be_checked()
    wait_shows(page, 8, 8, BLUE)
    shot(page, "shown-again")

    # Under a half see-through template, placements draw only the pixels they change,
    # and exactly what drawing the whole view shows.
    page.locator("#template-opacity").focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#template-opacity-value")).to_have_text("50%")
    wait_shows(page, 8, 9, blend(GREEN, WHITE, 0.5), tol=3)
    before = page.evaluate("() => window.openplace.draws")
    seq = place_from_others(app_server.url, [(8, 9, 13), (7, 8, 6), (11, 9, 3)])
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=seq)
    wait_shows(page, 8, 9, blend(GREEN, BLUE, 0.5), tol=3)
    wait_pixel(page, 11, 9, 3)  # beside the template: the board's colour
    after = page.evaluate("() => window.openplace.draws")
    assert after["pixels"] > before["pixels"], (before, after)
    assert after["full"] == before["full"], f"placements drew the whole view: {before} {after}"
    pixel_by_pixel = page.evaluate(CANVAS_HASH)
    page.set_viewport_size({"width": 1281, "height": 800})
    page.wait_for_function("(n) => window.openplace.draws.full > n", arg=after["full"])
    full = page.evaluate("() => window.openplace.draws.full")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function("(n) => window.openplace.draws.full > n", arg=full)
    assert page.evaluate(CANVAS_HASH) == pixel_by_pixel
    expect(page.locator("#template-differs")).to_have_text("9 pixels differ")
    shot(page, "placed-under")

    # Removed: the board alone.
    page.locator("#template-remove").click()
    wait_shows(page, 9, 9, WHITE)
    expect(page.locator("#template-status")).to_have_text("No template")


def test_url_template_share_link(
    new_page: Callable[[str], Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    # The template is an image this site already serves: the top-left 2 x 2 of the board.
    place_from_others(app_server.url, [(0, 0, 5), (1, 0, 13), (0, 1, 10)])
    source = "/api/board.png?w=2&h=2"
    page = new_page(START)
    page.locator("#template-open").click()
    page.locator("#template-url").fill(source)
    page.locator("#template-url").press("Enter")
    expect(page.locator("#template-status")).to_have_text("board.png · 2\N{MULTIPLICATION SIGN}2")
    set_position(page, 20, 4)
    page.locator("#template-opacity").press("End")
    page.locator("#template-opacity").press("ArrowLeft")
    page.locator("#template-opacity").press("ArrowLeft")
    expect(page.locator("#template-opacity-value")).to_have_text("90%")
    unhover(page)

    shown = {(20, 4): RED, (21, 4): BLUE, (20, 5): GREEN, (21, 5): WHITE}
    for (x, y), color in shown.items():
        wait_shows(page, x, y, blend(color, WHITE, 0.9), tol=3)
    wait_shows(page, 22, 4, WHITE)

    # The address keeps it, and the panel offers it as a link.
    page.wait_for_function("() => /tx=20&ty=4&to=0\\.9(&|$)/.test(location.hash)")
    params = parse_qs(urlsplit(page.url).fragment)
    assert params["template"] == [source]
    assert (params["tx"], params["ty"], params["to"]) == (["20"], ["4"], ["0.9"])
    expect(page.locator("#template-share")).to_be_visible()
    expect(page.locator("#template-noshare")).to_be_hidden()
    link = page.locator("#template-link").input_value()
    assert link.startswith(app_server.url + "/#")
    assert parse_qs(urlsplit(link).fragment)["template"] == [source]
    looks = {p: canvas_rgb(page, *p) for p in [*shown, (22, 4)]}
    shot(page, "sharer")

    # Opened by someone else: the same template, at the same place, as faint.
    other = new_page(link)
    other.wait_for_function("() => window.openplace.template.loaded")
    state = other.evaluate("() => window.openplace.template")
    assert (state["x"], state["y"], state["opacity"], state["url"]) == (20, 4, 0.9, source)
    unhover(other)
    for (x, y), color in looks.items():
        wait_shows(other, x, y, color)
    other.locator("#template-open").click()
    expect(other.locator("#template-x")).to_have_value("20")
    expect(other.locator("#template-y")).to_have_value("4")
    expect(other.locator("#template-opacity-value")).to_have_text("90%")
    expect(other.locator("#template-differs")).to_have_text("3 pixels differ")
    shot(other, "opened-link")


def test_cross_origin_template_is_refused(
    new_page: Callable[[str], Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    requested: list[str] = []
    page = new_page(START + "&template=https%3A%2F%2Fexample.com%2Fflag.png&tx=3&ty=3")
    page.on("request", lambda r: requested.append(r.url))
    expect(page.locator("#toast")).to_contain_text("Refused: templates load only from this site")
    expect(page.locator("#toast")).to_contain_text("https://example.com")
    assert page.evaluate("() => window.openplace.template.loaded") is False
    shot(page, "from-link")

    page.locator("#template-open").click()
    error = page.locator("#template-error")
    expect(error).to_contain_text("https://example.com")
    for source, named in [
        ("//evil.example/t.png", "http://evil.example"),
        ("https://example.org/t.png", "https://example.org"),
        ("data:image/png;base64,iVBORw0KGgo=", "data:"),
    ]:
        page.locator("#template-url").fill(source)
        page.locator("#template-url").press("Enter")
        expect(error).to_be_visible()
        expect(error).to_contain_text(f"not from {named}")
    assert page.evaluate("() => window.openplace.template.loaded") is False
    shot(page, "typed")
    foreign = [u for u in requested if not u.startswith(app_server.url)]
    assert not foreign, f"the page asked another site: {foreign}"


def test_share_link_to_a_hosted_template(
    new_page: Callable[[str], Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    """A community's template hosted by the site (OPENPLACE_TEMPLATES_DIR, by default
    <data dir>/templates, served at /templates/): its share link opens it in place."""
    R, G, B = (*RED, 255), (*GREEN, 255), (*BLUE, 255)
    folder = app_server.data_dir / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "castle.png").write_bytes(png([[R, CLEAR, B], [G, G, G]]))
    page = new_page(f"{START}&template=/templates/castle.png&tx=12&ty=6&to=1")
    page.wait_for_function("() => window.openplace.template.loaded")
    state = page.evaluate("() => window.openplace.template")
    assert (state["x"], state["y"], state["opacity"]) == (12, 6, 1)
    assert state["url"] == "/templates/castle.png"
    unhover(page)
    for (x, y), color in {(12, 6): RED, (13, 6): WHITE, (14, 6): BLUE, (13, 7): GREEN}.items():
        wait_shows(page, x, y, color)
    page.locator("#template-open").click()
    expect(page.locator("#template-status")).to_have_text("castle.png · 3\N{MULTIPLICATION SIGN}2")
    expect(page.locator("#template-share")).to_be_visible()
    shot(page, "hosted")
