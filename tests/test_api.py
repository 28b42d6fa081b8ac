"""Every HTTP endpoint and its errors, against a real embedded server."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest

from openplace.config import Settings
from openplace.core.palette import PALETTE
from tests.conftest import LiveServer, ServerFactory, auth, new_token


async def test_canvas_describes_the_board(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/canvas")
    assert r.status_code == 200
    assert r.json() == {
        "width": 100,
        "height": 80,
        "palette": list(PALETTE),
        "cooldown_seconds": 300,
    }


async def test_board_starts_white_with_seq_zero(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/board", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-seq"] == "0"
    assert r.content == bytes(100 * 80 // 2)
    assert "max-age" in r.headers["cache-control"]


async def test_place_pixel_shows_on_board_and_pixel_info(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    r = await client.post("/api/pixel", json={"x": 3, "y": 2, "color": 5}, headers=auth(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seq"] == 1 and body["next_at"].endswith("Z")
    board = await client.get("/api/board")
    assert board.headers["x-seq"] == "1"
    i = 2 * 100 + 3
    assert board.content[i // 2] >> 4 == 5 if i % 2 == 0 else board.content[i // 2] & 0xF == 5
    info = (await client.get("/api/pixel", params={"x": 3, "y": 2})).json()
    me = (await client.get("/api/me", headers=auth(token))).json()
    assert info["color"] == 5 and info["seq"] == 1 and info["user_id"] == me["user_id"]
    assert info["placed_at"] == me["last_placed_at"]
    assert me["next_at"] == body["next_at"]
    assert (await client.get("/api/board")).headers["x-board-id"]


async def test_never_placed_pixel_has_null_info(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/pixel", params={"x": 0, "y": 0})
    assert r.json() == {"x": 0, "y": 0, "color": 0, "user_id": None, "placed_at": None, "seq": None}


async def test_me_before_any_placement(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    me = (await client.get("/api/me", headers=auth(token))).json()
    assert me["last_placed_at"] is None and me["next_at"] is None


async def test_cooldown_refuses_second_placement_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    token = await new_token(client)
    assert (
        await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(token))
    ).status_code == 200
    r = await client.post("/api/pixel", json={"x": 1, "y": 0, "color": 2}, headers=auth(token))
    assert r.status_code == 429
    body = r.json()
    assert body["error"] == "cooldown" and 299 < body["retry_after"] <= 300
    assert int(r.headers["retry-after"]) == 300
    board = await client.get("/api/board")
    assert board.headers["x-seq"] == "1" and board.content[0] == 0x10  # (1,0) untouched


async def test_concurrent_placements_by_one_user_only_one_wins(
    client: httpx.AsyncClient,
) -> None:
    token = await new_token(client)
    rs = await asyncio.gather(
        *[
            client.post("/api/pixel", json={"x": i, "y": 1, "color": 3}, headers=auth(token))
            for i in range(20)
        ]
    )
    assert sorted(r.status_code for r in rs) == [200] + [429] * 19


async def test_many_users_get_gapless_sequence_numbers(client: httpx.AsyncClient) -> None:
    tokens = [await new_token(client) for _ in range(25)]
    rs = await asyncio.gather(
        *[
            client.post("/api/pixel", json={"x": i, "y": i, "color": i % 16}, headers=auth(t))
            for i, t in enumerate(tokens)
        ]
    )
    assert sorted(r.json()["seq"] for r in rs) == list(range(1, 26))


@pytest.mark.parametrize(
    "body,code",
    [
        ({"x": 100, "y": 0, "color": 1}, "bad_coordinates"),
        ({"x": 0, "y": 80, "color": 1}, "bad_coordinates"),
        ({"x": -1, "y": 0, "color": 1}, "bad_coordinates"),
        ({"x": 0, "y": 0, "color": 16}, "bad_color"),
        ({"x": 0, "y": 0, "color": -1}, "bad_color"),
        ({"x": 0, "y": 0}, "bad_request"),
        ({"x": "0", "y": 0, "color": 1}, "bad_request"),
        ({"x": 0.5, "y": 0, "color": 1}, "bad_request"),
        ({"x": True, "y": 0, "color": 1}, "bad_request"),
        ([1, 2, 3], "bad_request"),
    ],
)
async def test_bad_placements_are_refused_and_change_nothing(
    client: httpx.AsyncClient, body: object, code: str
) -> None:
    token = await new_token(client)
    r = await client.post("/api/pixel", json=body, headers=auth(token))
    assert r.status_code == 400
    assert r.json()["error"] == code and r.json()["message"]
    assert (await client.get("/api/board")).headers["x-seq"] == "0"
    # The refused request did not start a cooldown.
    ok = await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(token))
    assert ok.status_code == 200


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    r = await client.post("/api/pixel", content=b"{x: 1", headers=auth(token))
    assert r.status_code == 400 and r.json()["error"] == "bad_json"


async def test_oversized_body_is_a_413(client: httpx.AsyncClient) -> None:
    token = await new_token(client)
    big = b'{"x": 1, "y": 1, "color": 1, "pad": "' + b"a" * 5000 + b'"}'
    r = await client.post("/api/pixel", content=big, headers=auth(token))
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    # No Content-Length: the limit holds while streaming too.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 512

    r = await client.post("/api/pixel", content=chunks(), headers=auth(token))
    assert r.status_code == 413
    assert (await client.get("/api/board")).headers["x-seq"] == "0"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-token"},
    ],
)
async def test_missing_or_invalid_token_is_a_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert (await client.get("/api/me", headers=headers)).status_code == 401


async def test_forged_token_is_a_401(client: httpx.AsyncClient) -> None:
    from openplace.auth.tokens import Identity, TokenSigner

    forged = TokenSigner("someone-elses-secret").issue(Identity("u_victim"))
    r = await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(forged))
    assert r.status_code == 401
    # A tampered payload with our signature shape is refused too.
    token = await new_token(client)
    payload, sig = token.rsplit(".", 1)
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig
    assert (await client.get("/api/me", headers=auth(tampered))).status_code == 401


async def test_session_creation_is_rate_limited_per_ip(
    server_factory: ServerFactory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(sessions_per_ip_per_minute=3))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        codes = [(await c.post("/api/session")).status_code for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]


async def test_board_etag_and_gzip(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/board", headers={"Accept-Encoding": "identity"})
    etag = r.headers["etag"]
    again = await client.get(
        "/api/board", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert again.status_code == 304 and again.headers["x-seq"] == "0"
    refused = await client.get("/api/board", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    weak = await client.get("/api/board", headers={"If-None-Match": "W/" + etag,
                                                    "Accept-Encoding": "identity"})  # fmt: skip
    assert weak.status_code == 304
    raw = await client.get("/api/board", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["etag"] != etag
    assert len(raw.content) == 4000  # httpx decodes; the wire carried far fewer bytes
    token = await new_token(client)
    await client.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(token))
    changed = await client.get(
        "/api/board", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert changed.status_code == 200 and changed.headers["x-seq"] == "1"


async def test_gzip_board_is_small_on_the_wire(server: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url) as c,
        c.stream("GET", "/api/board", headers={"Accept-Encoding": "gzip"}) as r,
    ):
        wire = b"".join([chunk async for chunk in r.aiter_raw()])
    assert len(wire) < 200 and gzip.decompress(wire) == bytes(4000)


@pytest.mark.parametrize("query", ["", "?x=1", "?x=a&y=1", "?x=100&y=0", "?x=0&y=-1"])
async def test_pixel_info_bad_coordinates(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get("/api/pixel" + query)
    assert r.status_code == 400 and r.json()["error"] == "bad_coordinates"


async def test_unknown_routes_and_methods_answer_json_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.delete("/api/board")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = await client.get("/api/session")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = await client.put("/api/pixel")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


async def test_healthz_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    spec = (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/api/canvas",
        "/api/session",
        "/api/board",
        "/api/pixel",
        "/api/me",
        "/healthz",
    } <= set(spec["paths"])
    assert {"get", "post"} == set(spec["paths"]["/api/pixel"])


async def test_web_page_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]


async def test_me_says_may_place_now_once_the_cooldown_is_over(
    server_factory: ServerFactory, settings: Settings
) -> None:
    srv: LiveServer = await server_factory(settings.with_(cooldown_seconds=0.2))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        token = await new_token(c)
        await c.post("/api/pixel", json={"x": 0, "y": 0, "color": 1}, headers=auth(token))
        assert (await c.get("/api/me", headers=auth(token))).json()["next_at"] is not None
        await asyncio.sleep(0.25)
        me = (await c.get("/api/me", headers=auth(token))).json()
        assert me["next_at"] is None and me["last_placed_at"] is not None
        r = await c.post("/api/pixel", json={"x": 0, "y": 0, "color": 2}, headers=auth(token))
        assert r.status_code == 200


def test_configuration_errors_are_clear() -> None:
    from openplace.config import Settings

    with pytest.raises(ValueError, match="OPENPLACE_WIDTH"):
        Settings.from_env({"OPENPLACE_WIDTH": "0"})
    with pytest.raises(ValueError, match="OPENPLACE_COOLDOWN_SECONDS: expected a number"):
        Settings.from_env({"OPENPLACE_COOLDOWN_SECONDS": "soon"})
    with pytest.raises(ValueError, match="REPLAY_LIMIT"):
        Settings.from_env({"OPENPLACE_REPLAY_LIMIT": "0"})
    with pytest.raises(ValueError, match="both"):
        Settings.from_env({"OPENPLACE_REDIS_URL": "redis://x"})
    s = Settings.from_env({"OPENPLACE_COOLDOWN_SECONDS": "2.5", "OPENPLACE_SECRET": "hush"})
    assert s.cooldown_seconds == 2.5 and "hush" not in repr(s)


async def test_board_cache_reads_the_store_once_for_a_burst() -> None:
    from openplace.api.board_cache import BoardCache
    from openplace.core.placement import BoardSnapshot

    class SlowStore:
        calls = 0

        async def board(self) -> BoardSnapshot:
            SlowStore.calls += 1
            await asyncio.sleep(0.01)
            return BoardSnapshot(b"\0" * 8, 7, "b")

    cache = BoardCache(SlowStore(), refresh=0)  # type: ignore[arg-type]  # a Store fake: board() only
    got = await asyncio.gather(*[cache.get() for _ in range(50)])
    assert SlowStore.calls == 1 and {g.seq for g in got} == {7}


def test_settings_refuse_unknown_variables_and_malformed_values() -> None:
    from openplace.config import Settings

    with pytest.raises(ValueError, match="OPENPLACE_COOLDOWN_SECOND is not a setting "
                                         r"\(did you mean OPENPLACE_COOLDOWN_SECONDS\?\)"):
        Settings.from_env({"OPENPLACE_COOLDOWN_SECOND": "5"})
    # The tooling's own variables are not the program's.
    Settings.from_env({"OPENPLACE_VENV": "/x", "OPENPLACE_TEST_CASES": "9"})
    for name, raw in [("OPENPLACE_PORT", "80_80"), ("OPENPLACE_PORT", "\uff18\uff10"),
                      ("OPENPLACE_PORT", "1.5"), ("OPENPLACE_COOLDOWN_SECONDS", "nan"),
                      ("OPENPLACE_COOLDOWN_SECONDS", "1_0"), ("OPENPLACE_LOG_LEVEL", "LOUD")]:
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: raw})
    s = Settings.from_env({"OPENPLACE_PORT": " 9000 ", "OPENPLACE_DATA_DIR": "~/x",
                           "OPENPLACE_LOG_LEVEL": "debug", "OPENPLACE_REDIS_URL": ""})
    assert (s.port, s.data_dir.name, s.log_level, s.redis_url) == (9000, "x", "debug", None)


def test_every_setting_has_a_typed_parser() -> None:
    from typing import get_type_hints

    from openplace.config import PARSERS, Settings

    for name, hint in get_type_hints(Settings).items():
        assert hint in PARSERS, f"Settings.{name}: no parser for {hint}"


async def test_the_page_is_revalidated_and_its_files_kept_five_minutes(
    client: httpx.AsyncClient,
) -> None:
    """As the bundled nginx serves them: a new version's page arrives at once."""
    for path in ("/", "/index.html"):
        assert (await client.get(path)).headers["cache-control"] == "no-cache"
    for path in ("/app.js", "/history.js", "/style.css", "/favicon.svg"):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=300"
