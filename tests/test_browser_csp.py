"""The page passes its own Content-Security-Policy in headless Chromium: no violation
while it loads, connects its websocket and places a pixel, served by the embedded server
(ws:) and through nginx over http (ws:) and https (wss:)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from openplace.web.security import CONTENT_SECURITY_POLICY
from tests.test_browser import (
    START,
    TIMEOUT,
    ApiClient,
    ServerProcess,
    choose_color,
    click_pixel,
    wait_live,
    wait_pixel,
    wait_until,
)
from tests.test_security import NginxFront

pytestmark = pytest.mark.browser

# Registered before any script of the page runs (Playwright injects it over CDP).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI} at ${where}`);
});
"""
CSP_CONSOLE = re.compile(r"Content.Security.Policy|Refused to|Trusted.?Type", re.I)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def launch(p: Playwright) -> Browser:
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("csp")
    srv = ServerProcess(tmp / "data", tmp / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> str:
    """nginx ``listen`` parameters for https with a throw-away self-signed certificate."""
    tmp = tmp_path_factory.mktemp("tls")
    crt, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return f" ssl; ssl_certificate {crt}; ssl_certificate_key {key}"


# (front, pixel placed there); each front places its own pixel on the one server.
FRONTS = [("embedded", (12, 8)), ("nginx-http", (13, 8)), ("nginx-https", (14, 8))]


@pytest.fixture(params=FRONTS, ids=[f for f, _ in FRONTS])
def front(
    request: pytest.FixtureRequest, app_server: ServerProcess, tls: str
) -> Iterator[tuple[str, str, tuple[int, int]]]:
    """(name, page URL, pixel to place)."""
    name, pixel = request.param
    if name == "embedded":
        yield name, app_server.url, pixel
        return
    nginx = NginxFront(app_server.port, tls if name == "nginx-https" else "")
    try:
        yield name, nginx.wait().url, pixel
    finally:
        nginx.stop()


def test_page_passes_its_content_security_policy(
    browser: Browser,
    app_server: ServerProcess,
    front: tuple[str, str, tuple[int, int]],
    shot: Callable[[Page, str], Path],
) -> None:
    name, url, (x, y) = front
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=True)
    try:
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        console: list[str] = []
        errors: list[str] = []
        sockets: list[str] = []

        def on_console(m: ConsoleMessage) -> None:
            console.append(f"{m.type}: {m.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.add_init_script(RECORD_VIOLATIONS)

        response = page.goto(f"{url}/{START}")
        assert response is not None and response.ok
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        wait_live(page)  # the websocket is open and the board loaded
        ws_url = url.replace("http", "ws", 1) + "/ws"  # same origin: ws: or wss:
        assert sockets and all(s.startswith(ws_url) for s in sockets), sockets

        page.wait_for_function("() => localStorage.getItem('openplace.token')")
        choose_color(page, 13)
        click_pixel(page, x, y)
        wait_pixel(page, x, y, 13)
        api = ApiClient(app_server.url)
        try:
            wait_until(lambda: api.pixel(x, y).color == 13, "the pixel on the server")
        finally:
            api.close()
        page.mouse.move(2, 400)
        shot(page, "placed")

        violations = page.evaluate("() => window.__cspViolations")
        assert violations == [], f"{name}: CSP violations {violations}"
        csp_console = [m for m in console if CSP_CONSOLE.search(m)]
        assert csp_console == [], f"{name}: CSP errors in the console {csp_console}"
        assert errors == [], f"{name}: uncaught errors {errors}"

        # The listener would have seen one: an image from elsewhere is refused and reported.
        page.evaluate("() => { new Image().src = 'https://example.invalid/pixel.png'; }")
        page.wait_for_function("() => window.__cspViolations.length > 0")
        assert "img-src" in page.evaluate("() => window.__cspViolations[0]")
    finally:
        ctx.close()
