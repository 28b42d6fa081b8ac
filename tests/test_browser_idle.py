"""The page at rest (issue 12): with nothing happening it draws nothing and animates
nothing; a placement draws only what changed, exactly as drawing everything would; its
animations move only transform and opacity; with reduced motion nothing moves.

Screenshots go to ``artifacts/screenshots/test_<name>-<step>.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.test_browser import (  # noqa: F401  (app_server, browser, playwright_sync: fixtures)
    MODEL_SHOWS,
    TIMEOUT,
    ApiClient,
    ServerProcess,
    app_server,
    browser,
    playwright_sync,
    wait_live,
    wait_pixel,
    wait_until,
)

pytestmark = pytest.mark.browser

# Counts what the page asks of the browser: frames requested, and frames in which it drew
# on the board's canvas (one document.timeline time a frame).
COUNT = """
(() => {
  const c = { raf: 0, frames: 0, last: null };
  window.__count = c;
  localStorage.setItem("openplace.hinted", "1");  // no first-visit hint over the screenshots
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (f) => { c.raf++; return raf(f); };
  const proto = CanvasRenderingContext2D.prototype;
  for (const name of ["drawImage", "putImageData", "fillRect", "strokeRect", "clearRect"]) {
    const orig = proto[name];
    proto[name] = function (...args) {
      if (this.canvas && this.canvas.id === "board") {
        const t = document.timeline.currentTime;
        if (t !== c.last) { c.last = t; c.frames++; }
      }
      return orig.apply(this, args);
    };
  }
})();
"""
COUNTS = "() => ({ ...window.__count, ...window.openplace.draws })"
# Animations and transitions running now (pseudo-elements' included).
RUNNING = """() => document.getAnimations()
    .filter((a) => a.playState === "running")
    .map((a) => `${a.animationName || a.transitionProperty} on ${a.effect.target.className}`
                + (a.effect.pseudoElement || ""))"""
# The whole canvas, as a string of its bytes' hash (cheap to return, exact to compare).
CANVAS_HASH = """() => {
    const c = document.getElementById("board");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i], 16777619);
    return `${c.width}x${c.height}:${h >>> 0}`;
}"""


@pytest.fixture
def new_page(
    browser: Browser,  # noqa: F811
    app_server: ServerProcess,  # noqa: F811
) -> Iterator[Callable[..., Page]]:
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(hash_: str, **context: Any) -> Page:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, **context)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.add_init_script(COUNT)
        page.goto(app_server.url + "/" + hash_)
        wait_live(page)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def at_rest(page: Page) -> dict[str, Any]:
    """Wait until a whole second passes in which the page requests no frame, draws
    nothing and runs no animation; its counts then."""

    def quiet() -> dict[str, Any]:
        before = page.evaluate(COUNTS)
        time.sleep(1.0)
        after = page.evaluate(COUNTS)
        running = page.evaluate(RUNNING)
        return after if after == before and not running else {}

    return wait_until(quiet, "the page to come to rest", timeout=TIMEOUT)


def place_from_others(url: str, pixels: list[tuple[int, int, int]]) -> int:
    """Each pixel placed by a user of its own (no cooldown to wait out); the last seq."""
    seq = 0
    for x, y, color in pixels:
        other = ApiClient(url)
        try:
            seq = max(seq, other.place(x, y, color).seq)
        finally:
            other.close()
    return seq


@pytest.mark.parametrize(
    ("where", "off_screen"),
    [("#x=10&y=10&z=20", {(301, 301)}), ("#x=300&y=300&z=0.7", set())],
    ids=["zoomed-in", "zoomed-out"],
)
def test_page_at_rest_draws_nothing_and_a_placement_draws_only_it(
    new_page: Callable[..., Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
    where: str,
    off_screen: set[tuple[int, int]],
) -> None:
    page = new_page(where)
    rest = at_rest(page)
    shot(page, "rest")

    # Placements from others: each shows, drawn without drawing the whole view again.
    # Neighbours, and (zoomed out, under a screen pixel a board pixel) ones that a screen
    # pixel shows (at 0.7 some board pixels are under no screen pixel's centre).
    pixels = [(9, 9, 13), (8, 9, 5), (9, 8, 10), (12, 11, 3), (301, 301, 8)]
    seq = place_from_others(app_server.url, pixels)
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=seq)
    for x, y, color in pixels:
        if (x, y) in off_screen:
            page.wait_for_function(MODEL_SHOWS, arg=[x, y, color])
        else:
            wait_pixel(page, x, y, color)
    shot(page, "placed")
    drawn = page.evaluate(COUNTS)
    assert drawn["frames"] > rest["frames"], "the placements were never drawn"
    assert drawn["pixels"] > rest["pixels"], "placements drew the whole view"
    assert drawn["full"] == rest["full"], "placements drew the whole view"

    # And it comes to rest again.
    at_rest(page)

    # What it drew pixel by pixel is what drawing everything shows: a resize draws all.
    pixel_by_pixel = page.evaluate(CANVAS_HASH)
    full = page.evaluate(COUNTS)["full"]
    page.set_viewport_size({"width": 1281, "height": 800})
    page.wait_for_function("(n) => window.openplace.draws.full > n", arg=full)
    full = page.evaluate(COUNTS)["full"]
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function("(n) => window.openplace.draws.full > n", arg=full)
    assert page.evaluate(CANVAS_HASH) == pixel_by_pixel


def test_animations_move_only_transform_and_opacity(
    new_page: Callable[..., Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    page = new_page("#x=10&y=10&z=20")
    # Every @keyframes of the page animates only what the compositor moves alone.
    animated = page.evaluate(
        """() => {
            const out = {};
            for (const sheet of document.styleSheets) {
                for (const rule of sheet.cssRules) {
                    if (!(rule instanceof CSSKeyframesRule)) continue;
                    const props = new Set();
                    for (const frame of rule.cssRules) {
                        for (let i = 0; i < frame.style.length; i++) props.add(frame.style[i]);
                    }
                    out[rule.name] = [...props].sort();
                }
            }
            return out;
        }"""
    )
    assert "pulse" in animated, animated
    for name, props in animated.items():
        assert set(props) <= {"transform", "opacity"}, f"@keyframes {name} animates {props}"

    # The live dot pulses when placements arrive (no box-shadow), then stops.
    at_rest(page)
    seq = place_from_others(app_server.url, [(11, 11, 6)])
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=seq)
    running = page.evaluate(RUNNING)
    assert any(r.startswith("pulse on dot") for r in running), running
    dot = page.locator("#status .dot")
    assert dot.evaluate("(el) => getComputedStyle(el).animationName") == "none"
    assert dot.evaluate("(el) => getComputedStyle(el, '::after').animationName") == "pulse"
    shot(page, "pulse")
    at_rest(page)


def test_reduced_motion_runs_no_animation(
    new_page: Callable[..., Page],
    app_server: ServerProcess,  # noqa: F811
    shot: Callable[[Page, str], Path],
) -> None:
    page = new_page("#x=10&y=10&z=20", reduced_motion="reduce")
    assert page.evaluate("() => matchMedia('(prefers-reduced-motion: reduce)').matches")
    at_rest(page)
    seq = place_from_others(app_server.url, [(8, 8, 12)])
    page.wait_for_function("(s) => window.openplace.lastSeq >= s", arg=seq)
    wait_pixel(page, 8, 8, 12)
    assert page.evaluate(RUNNING) == []
    # Choosing a colour: the swatch lifts at once, without a transition.
    page.locator('.swatch[data-color="3"]').click()
    assert page.evaluate(RUNNING) == []
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    shot(page, "reduced")
    at_rest(page)
