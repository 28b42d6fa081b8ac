"""Security basics: headers on every response (app and nginx), one spelling per token,
no secret in any log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness.servers import PostgresServer, free_port
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from itsdangerous import BadData, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from websockets.sync.client import connect

from openplace import logs
from openplace.auth.tokens import Identity, InvalidToken, TokenSigner, canonical_base64
from openplace.config import Settings
from openplace.distributed.cluster import find_nginx, render_nginx, wait_http
from openplace.state import state_of
from openplace.web.security import API_HEADERS, CONTENT_SECURITY_POLICY, HEADERS, headers_for
from tests.conftest import LiveServer, auth, new_token

REPO = Path(__file__).resolve().parents[1]
PAGE_FILES = ["/", "/index.html", "/app.js", "/board.js", "/net.js", "/view.js", "/style.css",
              "/favicon.svg"]  # fmt: skip


def assert_security_headers(r: httpx.Response) -> None:
    """Each security header of the path exactly once, with the app's value: the page's
    set on the page's files, the API's set on ``/api/...``."""
    expected = headers_for(r.request.url.path)
    for name, value in expected.items():
        assert r.headers.get_list(name) == [value], f"{r.request.method} {r.url}: {name}"
    for name in HEADERS.keys() - expected.keys():
        assert name not in r.headers, f"{r.request.method} {r.url}: {name}"


class NginxFront:
    """``distributed/nginx.conf.template`` rendered in front of one openplace server (its
    API and websocket pools both that server), serving the page from disk."""

    def __init__(self, backend_port: int, listen_extra: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="op-nginx-"))
        self.port = free_port()
        scheme = "https" if "ssl" in listen_extra else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        conf = self.dir / "nginx.conf"
        listen = f"127.0.0.1:{self.port}{listen_extra}"
        conf.write_text(render_nginx(self.dir, listen, [backend_port], [backend_port]))
        self._log = (self.dir / "nginx.log").open("wb")
        self.proc = subprocess.Popen(
            [find_nginx(), "-c", str(conf), "-p", str(self.dir), "-g", "daemon off;"],
            stderr=self._log,
        )

    def wait(self, timeout: float = 20.0) -> NginxFront:
        """Until nginx serves a file from disk (no backend needed)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {(self.dir / 'nginx.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/favicon.svg", verify=False, timeout=1).is_success:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not answer on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- headers -----------------------------------------------------------------------------


def test_policy_is_strict() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'" and HEADERS["X-Frame-Options"] == "DENY"
    assert directives["connect-src"] == "'self'"  # same-origin fetch, ws: and wss:
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert HEADERS["X-Content-Type-Options"] == "nosniff"
    assert HEADERS["Referrer-Policy"] == "no-referrer"
    # JSON answers: never sniffed as a document, and nothing allowed if one is opened.
    assert API_HEADERS == {
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }


async def test_app_sends_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    answers = [await client.get(path) for path in PAGE_FILES]
    more = ("/api/canvas", "/api/board", "/healthz", "/api/openapi.json", "/missing.js")
    answers += [await client.get(path) for path in more]
    answers.append(await client.get("/api/me", headers=auth(token)))
    answers.append(await client.get("/api/me", headers=auth(token + "=")))  # 401
    # POST /api/pixel is answered ahead of routing (PlaceFastPath): accepted and refused.
    for _ in range(2):  # placed, then cooling down
        answers.append(await client.post("/api/pixel", json={"x": 1, "y": 1, "color": 2},
                                         headers=auth(token)))  # fmt: skip
    answers.append(await client.post("/api/pixel", content=b"{", headers=auth(token)))
    answers.append(await client.put("/api/pixel"))
    assert {r.status_code for r in answers} >= {200, 400, 401, 404, 405, 429}
    for r in answers:
        assert_security_headers(r)
    page = answers[0]
    assert page.headers["content-type"].startswith("text/html")


async def test_an_internal_error_carries_the_security_headers_too(
    server: LiveServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(index: int) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(state_of(server.app).store, "pixel", broken)
    r = await client.get("/api/pixel", params={"x": 1, "y": 1})
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert_security_headers(r)


def test_settings_repr_hides_passwords_in_urls() -> None:
    from openplace.config import Settings

    s = Settings(secret="s3cret-value", redis_url="redis://:hunter2@r:6379/0",
                 database_url="postgresql://op:pa55word@db/openplace")  # fmt: skip
    shown = repr(s)
    assert "hunter2" not in shown and "pa55word" not in shown and "s3cret-value" not in shown
    assert "redis://" in shown and "@db/openplace" in shown


@pytest.fixture
async def nginx(server: LiveServer) -> AsyncIterator[NginxFront]:
    front = NginxFront(server.port)
    try:
        yield await asyncio.to_thread(front.wait)
    finally:
        await asyncio.to_thread(front.stop)


async def test_nginx_sends_the_same_headers_once(nginx: NginxFront, server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=nginx.url, timeout=10) as c:
        answers = [await c.get(path) for path in PAGE_FILES]
        missing = await c.get("/missing.js")  # nginx's own 404
        # Proxied: the app's headers, passed through, not doubled.
        proxied = [await c.get("/api/canvas"), await c.get("/api/board"), await c.get("/healthz")]
    assert [r.status_code for r in answers + proxied] == [200] * (len(answers) + len(proxied))
    assert missing.status_code == 404
    for r in [*answers, missing, *proxied]:
        assert_security_headers(r)
    assert answers[0].content == (REPO / "src/openplace/web/static/index.html").read_bytes()
    assert answers[0].headers["cache-control"] == "no-cache"  # as the app serves it
    assert answers[2].headers["cache-control"] == "max-age=300"  # app.js


async def test_nginx_serves_template_images_from_the_api_with_its_headers_cached(
    nginx: NginxFront, settings: Settings
) -> None:
    """/templates/ through the template's nginx: the app's answer and headers (once),
    images only, kept by nginx, a 404 never kept (a new image shows at once)."""
    folder = settings.templates_path
    folder.mkdir(parents=True)
    body = b"\x89PNG\r\n\x1a\n not decoded by anyone here"
    (folder / "castle.png").write_bytes(body)
    (folder / "notes.txt").write_text("text")
    (folder.parent / "outside.png").write_bytes(b"outside")
    async with httpx.AsyncClient(base_url=nginx.url, timeout=10) as c:
        first = await c.get("/templates/castle.png")
        assert first.status_code == 200 and first.content == body
        assert first.headers["content-type"] == "image/png"
        assert first.headers["cache-control"] == "public, max-age=60"
        assert first.headers["x-cache"] == "MISS"
        assert_security_headers(first)
        deadline = time.monotonic() + 30  # kept 10 s: the next answer comes from the cache
        while (r := await c.get("/templates/castle.png?busted=1")).headers["x-cache"] != "HIT":
            assert time.monotonic() < deadline, r.headers["x-cache"]
        assert r.content == body and r.headers["content-type"] == "image/png"
        assert_security_headers(r)
        for path in ("/templates/notes.txt", "/templates/", "/templates/new.png",
                     "/templates/%2e%2e/outside.png"):  # fmt: skip
            r = await c.get(path)
            assert r.status_code == 404 and b"outside" not in r.content, path
            assert_security_headers(r)
        (folder / "new.png").write_bytes(body)
        assert (await c.get("/templates/new.png")).status_code == 200


# -- tokens: one spelling each --------------------------------------------------------------

SIGNER = TokenSigner("test-secret")
LENIENT = URLSafeSerializer("test-secret", salt="openplace.session.v1")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def token_with_dash_or_underscore() -> tuple[str, Identity]:
    """A token whose signature uses '-' or '_', so the '+/' alphabet spells it otherwise."""
    while True:
        identity = SIGNER.new_identity()
        token = SIGNER.issue(identity)
        if set(token.rsplit(".", 1)[1]) & {"-", "_"}:
            return token, identity


def same_signature_spellings(token: str) -> dict[str, str]:
    """Other spellings of ``token`` that decode to the same bytes (itsdangerous alone
    accepts every one of them)."""
    payload, sig = token.rsplit(".", 1)
    assert len(sig) % 4 == 3  # HMAC-SHA1: 20 bytes, 27 characters; 2 unused low bits
    last = B64.index(sig[-1])
    mid = len(sig) // 2
    out = {
        "padding =": token + "=",
        "padding ==": token + "==",
        "+/ alphabet": token.replace("-", "+").replace("_", "/"),
        "padding ===": token + "===",
        # Bytes outside the alphabet are skipped; four keep the length's padding right.
        "spaces inside": f"{payload}.{sig[:mid]}    {sig[mid:]}",
        "tabs inside": f"{payload}.{sig[:mid]}\t\t\t\t{sig[mid:]}",
        "line breaks inside": f"{payload}.{sig[:mid]}\r\n\r\n{sig[mid:]}",
        "newline at the end": token + "=\n",
        "non-alphabet bytes": f"{payload}.{sig[:mid]}!!!!{sig[mid:]}",
        "non-ASCII character": f"{payload}.{sig[:mid]}é{sig[mid:]}",  # dropped when encoded
    }
    for bits in (1, 2, 3):  # the unused low bits of the last character
        out[f"last character low bits ^{bits}"] = f"{payload}.{sig[:-1]}{B64[last ^ bits]}"
    return out


def other_spellings(token: str) -> dict[str, str]:
    """Spellings that change what is signed or the signature (never valid)."""
    payload, sig = token.rsplit(".", 1)
    i = next(i for i, c in enumerate(sig) if c.isalpha())  # a digit, - or _ has no case
    return {
        "signature case": f"{payload}.{sig.swapcase()}",
        "payload case": f"{payload.swapcase()}.{sig}",
        "one character's case": f"{payload}.{sig[:i]}{sig[i].swapcase()}{sig[i + 1 :]}",
        "leading space": " " + token,
        "one space inside": f"{payload}.{sig[:5]} {sig[5:]}",
        "leading dot": "." + token,
        "double dot": token.replace(".", ".."),
        "payload padded": f"{payload}=.{sig}",
        "signature truncated": token[:-1],
        "no signature": payload,
        "empty": "",
    }


def test_a_token_verifies_in_exactly_one_spelling() -> None:
    token, identity = token_with_dash_or_underscore()
    assert SIGNER.verify(token) == identity
    for what, spelling in same_signature_spellings(token).items():
        assert spelling != token
        assert LENIENT.loads(spelling)["u"] == identity.user_id, what  # lenient: accepted
        with pytest.raises(InvalidToken):
            SIGNER.verify(spelling)
    for what, spelling in other_spellings(token).items():
        assert spelling != token, what
        with pytest.raises(InvalidToken):
            SIGNER.verify(spelling)
    assert SIGNER.verify(token) == identity  # refused spellings leave the cache alone


TOKEN = SIGNER.issue(Identity("u_hypothesis"))
EDIT_CHARS = B64 + "=+/.!~ \t\n\r\x00é\u00a0"


@hypothesis_settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(0, len(TOKEN)),
            st.sampled_from(EDIT_CHARS),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_edit_of_a_token_is_refused(edits: list[tuple[str, int, str]]) -> None:
    spelling = TOKEN
    for op, at, char in edits:
        at = min(at, len(spelling))
        if op == "insert":
            spelling = spelling[:at] + char + spelling[at:]
        elif op == "delete":
            spelling = spelling[:at] + spelling[at + 1 :]
        else:
            spelling = spelling[:at] + char + spelling[at + 1 :]
    if spelling == TOKEN:
        assert SIGNER.verify(spelling).user_id == "u_hypothesis"
    else:
        with pytest.raises(InvalidToken):
            SIGNER.verify(spelling)


@hypothesis_settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=EDIT_CHARS, max_size=12))
def test_one_spelling_is_decoding_and_encoding_again(part: str) -> None:
    """The quick check of a token part's spelling agrees with its definition."""
    try:
        canonical = base64_encode(base64_decode(part)) == part.encode("ascii")
    except (BadData, UnicodeEncodeError):
        canonical = False
    assert canonical_base64(part) is canonical


async def test_other_spellings_are_a_401_over_http(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    while not set(token.rsplit(".", 1)[1]) & {"-", "_"}:
        token = await new_token(client)
    spellings = {**same_signature_spellings(token), **other_spellings(token)}
    for what, spelling in spellings.items():
        if not spelling.strip() or "\n" in spelling or spelling != spelling.strip():
            continue  # not a header value, or surrounding whitespace (HTTP strips it)
        header = {b"Authorization": b"Bearer " + spelling.encode("latin-1", "replace")}
        me = await client.get("/api/me", headers=header)
        placed = await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1},
                                   headers=header)  # fmt: skip
        assert (me.status_code, placed.status_code) == (401, 401), what
    # Characters str.strip() would remove but HTTP does not: not part of any spelling.
    for pad in (b"\xa0", b"\x85"):  # (h11 refuses the control characters itself)
        for value in (b"Bearer " + token.encode() + pad, b"Bearer " + pad + token.encode()):
            me = await client.get("/api/me", headers={b"Authorization": value})
            assert me.status_code == 401, value
    assert (await client.get("/api/me", headers=auth(token))).status_code == 200
    assert (await client.get("/api/board")).headers["x-seq"] == "0"


# -- secrets are never logged ------------------------------------------------------------


def test_redaction_masks_urls_tokens_and_hidden_values() -> None:
    hidden = "hidden-" + secrets.token_hex(8) + '"\\'
    logs.hide(hidden)
    token = SIGNER.issue(Identity("u_redact"))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "%s %s %s", None, None)
    record.args = (
        "redis://:pw-1@127.0.0.1:6379/0",
        f"Authorization: Bearer {token}",
        repr(Settings(redis_url="redis://u:pw-2@h/0", database_url="postgresql://p:pw-3@h/d")),
    )
    record.extra_field = {"secret": hidden, "token": token}
    try:
        raise RuntimeError(f"connect to postgresql://postgres:pw-4@db/x failed ({hidden})")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = logs.JSONFormatter().format(record)
    for leaked in ("pw-1", "pw-2", "pw-3", "pw-4", token, token.rsplit(".", 1)[1], "hidden-"):
        assert leaked not in line
    for kept in ("redis://:***@127.0.0.1:6379/0", "postgresql://postgres:***@db/x", "Bearer ***"):
        assert kept in line
    for plain in ("postgresql://postgres@h/d", "http://h:80/p?q=a@b"):  # no password
        assert logs.redact(plain) == plain


class Proc:
    """An ``openplace`` command in a subprocess, its stdout and stderr in one log file."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openplace.cli", "--log-level", "DEBUG", *args],
                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def exercise(url: str, secret: str) -> list[str]:
    """Good and bad requests, as a client and as an attacker; the tokens used."""
    http = httpx.Client(base_url=url, timeout=10)
    token = http.post("/api/session").json()["token"]
    forged = TokenSigner("not-" + secret).issue(Identity("u_forged"))
    good = {"Authorization": f"Bearer {token}"}
    http.get("/api/me", headers=good)
    http.post("/api/pixel", json={"x": 1, "y": 2, "color": 3}, headers=good)
    http.post("/api/pixel", json={"x": 2, "y": 2, "color": 3}, headers=good)  # cooling down
    for bad in (token + "=", forged, token.swapcase()):
        http.post("/api/pixel", json={"x": 1, "y": 1, "color": 1}, headers=auth(bad))
        http.get("/api/me", headers=auth(bad))
    twice = [("Authorization", f"Bearer {forged}"), ("Authorization", f"Bearer {token}")]
    http.get("/api/me", headers=twice)
    http.post("/api/pixel", content=b'{"x": 1, "y":', headers=good)
    http.post("/api/pixel", content=b"x" * 100_000, headers=good)
    http.get("/api/pixel", params={"x": "1_0", "y": "y"}, headers=good)
    http.get(f"/api/{token}", headers=good)  # a token in a path
    http.close()
    ws = url.replace("http", "ws", 1) + "/ws"
    with contextlib.suppress(Exception), connect(f"{ws}?since=1", additional_headers=good) as c:
        c.send('{"type": "ping", "id": [[[["' + token + '"]]]]}')
        c.send("not json " + token)
        c.send(b"\xff" * 64)
        c.recv(timeout=2)
    with contextlib.suppress(Exception), connect(f"{ws}?since={'9' * 5000}") as c:
        c.recv(timeout=2)
    return [token, forged, token + "="]


def assert_nothing_secret(text: str, secret_values: list[str], tokens: list[str]) -> None:
    assert '"level":"debug"' in text, "DEBUG logging was not on"
    for value in secret_values:
        assert value not in text, "a secret is in the log"
    for token in tokens:
        assert token not in text and token.rsplit(".", 1)[1] not in text, "a token is in the log"


def test_embedded_server_logs_no_secret_or_token(tmp_path: Path) -> None:
    secret = "s3cret-" + secrets.token_urlsafe(24)
    port = free_port()
    env = {"OPENPLACE_SECRET": secret, "OPENPLACE_DATA_DIR": str(tmp_path / "data"),
           "OPENPLACE_COOLDOWN_SECONDS": "300"}  # fmt: skip
    server = Proc(tmp_path / "serve.log", env, "serve", "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        tokens = exercise(f"http://127.0.0.1:{port}", secret)
    finally:
        server.stop()
    assert_nothing_secret(server.text(), [secret], tokens)


class PasswordRedis:
    """redis-server with ``requirepass``, in a temporary directory."""

    def __init__(self, password: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="op-redis-"))
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--requirepass", password],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def password_redis() -> Iterator[tuple[PasswordRedis, str]]:
    password = "redis-pw-" + secrets.token_hex(8)
    server = PasswordRedis(password)
    yield server, password
    server.stop()


async def test_distributed_processes_log_no_password_secret_or_token(
    tmp_path: Path, postgres: PostgresServer, password_redis: tuple[PasswordRedis, str]
) -> None:
    redis_server, redis_pw = password_redis
    pg_pw = "pg-pw-" + secrets.token_hex(8)  # PostgreSQL trusts loopback here: any password
    database = (await postgres.new_database()).replace("postgres@", f"postgres:{pg_pw}@", 1)
    secret = "s3cret-" + secrets.token_urlsafe(24)
    redis_url = f"redis://:{redis_pw}@127.0.0.1:{redis_server.port}/0"
    env = {"OPENPLACE_SECRET": secret, "OPENPLACE_REDIS_URL": redis_url,
           "OPENPLACE_DATABASE_URL": database, "OPENPLACE_ACK_TIMEOUT_SECONDS": "2"}  # fmt: skip
    port = free_port()
    persister = Proc(tmp_path / "persister.log", env, "persister")
    server = Proc(tmp_path / "serve.log", env, "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_http, url + "/healthz", 30)
        tokens = await asyncio.to_thread(exercise, url, secret)
        # Errors: a client with the wrong Redis password, then Redis gone (retries, 5xx).
        wrong = {**env, "OPENPLACE_REDIS_URL": redis_url.replace(redis_pw, redis_pw + "-wrong")}
        restore = Proc(tmp_path / "restore.log", wrong, "restore")
        await asyncio.to_thread(
            wait_for, lambda: restore.proc.poll() is not None or "error" in restore.text(),
            "the wrong password refused",
        )  # fmt: skip
        restore.stop()
        redis_server.proc.kill()
        redis_server.proc.wait()
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for request in (
                c.build_request("GET", "/api/me", headers=auth(tokens[0])),
                c.build_request("POST", "/api/pixel", json={"x": 5, "y": 5, "color": 1},
                                headers=auth(tokens[0])),
                c.build_request("GET", "/api/pixel", params={"x": 5, "y": 5}),
            ):  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):  # any answer, or none
                    await c.send(request)
        await asyncio.to_thread(
            wait_for, lambda: "redis unavailable" in persister.text(), "the persister's error"
        )
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(persister.stop)
    text = "".join(p.text() for p in (persister, server, restore))
    assert_nothing_secret(text, [secret, redis_pw, pg_pw], tokens)
