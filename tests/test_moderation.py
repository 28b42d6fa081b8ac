"""Moderation (issue 10): bans, rollback, fill, protected areas, the frozen canvas, in
both modes, as users and moderators meet them over HTTP and the websocket; every action
in the audit log. A rollback is checked against a replay of the log without the undone
placements."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import websockets
from harness.servers import PostgresServer, RedisServer

from openplace.auth.moderators import Moderator, ModeratorSigner
from openplace.config import Settings
from openplace.core.board import Board, Geometry
from openplace.core.timeline import decode_history
from openplace.core.wire import decode_frame
from openplace.distributed.cluster import Cluster
from tests.conftest import LiveServer, ServerFactory, auth, cluster_env, place, session

W, H = 100, 80
GEOMETRY = Geometry(W, H)


@dataclass
class Canvas:
    url: str
    api_urls: list[str]  # each API process, for checks across processes

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


def moderator_token(name: str = "mia") -> str:
    return ModeratorSigner("test-secret").issue(Moderator(name, time.time(), None))


@pytest.fixture(params=["embedded", "distributed"])
async def canvas(
    request: pytest.FixtureRequest, server_factory: ServerFactory, settings: Settings
) -> AsyncIterator[Canvas]:
    """A canvas with no cooldown (a vandal places fast), in each mode."""
    if request.param == "embedded":
        srv: LiveServer = await server_factory(settings.with_(cooldown_seconds=0))
        yield Canvas(srv.url, [srv.url])
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    redis: RedisServer = request.getfixturevalue("redis_server")
    env = cluster_env(redis.url, await postgres.new_database(), OPENPLACE_COOLDOWN_SECONDS="0")
    cluster = Cluster(Settings.from_env(env), api=2, realtime=1, env=env)
    await asyncio.to_thread(cluster.start)
    try:
        yield Canvas(cluster.url, [f"http://127.0.0.1:{p}" for p in cluster.api_ports])
    finally:
        await asyncio.to_thread(cluster.stop)


async def act(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/api/admin/{path}", json=body, headers=auth(moderator_token()))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def board(client: httpx.AsyncClient) -> Board:
    r = await client.get("/api/board")
    return Board(GEOMETRY, r.content)


async def wait_committed(client: httpx.AsyncClient, seq: int) -> None:
    """Until the board (and so the history) holds ``seq``."""
    for _ in range(200):
        if int((await client.get("/api/board")).headers["x-seq"]) >= seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"seq {seq} never arrived")


async def test_a_rollback_leaves_the_board_as_a_replay_without_the_undone_placements(
    canvas: Canvas,
) -> None:
    rng = random.Random(10)
    async with httpx.AsyncClient(base_url=canvas.url, timeout=30) as client:
        vandal_id, vandal = await session(client)
        others = [await session(client) for _ in range(3)]
        seqs: dict[int, str] = {}  # seq -> who

        async def burst(n: int) -> None:
            for _ in range(n):
                who_id, who = rng.choice([(vandal_id, vandal), *others])
                # a small area, so pixels are placed on again and again, by all of them
                r = await place(client, who, rng.randrange(12), rng.randrange(8), rng.randrange(16))
                assert r.status_code == 200, r.text
                seqs[r.json()["seq"]] = who_id

        await burst(150)  # before "since": the vandal's own earlier work stays
        cut = max(seqs)
        await asyncio.sleep(0.05)
        since = datetime.now(UTC).isoformat()
        await asyncio.sleep(0.05)
        await burst(300)
        await wait_committed(client, max(seqs))

        effect = await act(client, "rollback", {"users": [vandal_id], "since": since})
        first, last = effect["first_seq"], effect["last_seq"]
        assert isinstance(first, int) and isinstance(last, int)
        assert last - first + 1 == effect["pixels_changed"] > 0
        assert effect["placements_undone"] == sum(
            1 for s, who in seqs.items() if who == vandal_id and s > cut
        )
        await wait_committed(client, last)

        history = await client.get("/api/history", params={"from": 1, "to": last})
        log = decode_history(history.content)
        assert log.upto == last
        expected = Board(GEOMETRY)
        for offset, (i, c) in enumerate(zip(log.indexes, log.colors, strict=True)):
            seq = offset + 1
            if seq <= max(seqs) and not (seqs[seq] == vandal_id and seq > cut):
                expected.set(int(i), int(c))
        assert (await board(client)).snapshot() == expected.snapshot()
        # the undo is the moderator's, seen like any placement
        changed = [int(i) for i in log.indexes[first - 1 :]]
        x, y = GEOMETRY.xy(changed[0])
        info = (await client.get("/api/pixel", params={"x": x, "y": y})).json()
        assert info["user_id"] == "mod:mia" and info["seq"] == first

        entry = (await client.get("/api/admin/audit", headers=auth(moderator_token()))).json()
        top = entry["entries"][0]
        assert top["action"] == "rollback" and top["actor"] == "mia"
        assert top["effect"]["first_seq"] == first and top["args"]["users"] == [vandal_id]


async def test_bans_protected_areas_and_freezing_refuse_placements_in_every_process(
    canvas: Canvas,
) -> None:
    async with httpx.AsyncClient(base_url=canvas.url, timeout=30) as client:
        vandal_id, vandal = await session(client)
        _, friend = await session(client)
        assert (await place(client, vandal, 1, 1, 3)).status_code == 200

        banned = await act(client, "ban", {"user": vandal_id, "reason": "griefing",
                                           "expires_in": "2s"})  # fmt: skip
        assert banned["users_banned"] == [vandal_id]
        # at once, in every API process: the placement script checks the policy version
        for api in canvas.api_urls:
            async with httpx.AsyncClient(base_url=api, timeout=10) as direct:
                r = await place(direct, vandal, 2, 2, 3)
                assert r.status_code == 403, r.text
                body = r.json()
                assert body["error"] == "banned" and body["reason"] == "griefing"
                assert body["expires_at"].endswith("Z")
                assert (await place(direct, friend, 2, 2, 3)).status_code == 200
        listed = (await client.get("/api/admin/bans", headers=auth(moderator_token()))).json()
        assert [b["subject"] for b in listed["bans"]] == [vandal_id]
        await asyncio.sleep(2.1)  # the ban expires by itself
        assert (await place(client, vandal, 2, 3, 3)).status_code == 200

        area = (await act(client, "protect", {"rect": {"x": 10, "y": 10, "w": 5, "h": 5}}))["area"]
        assert isinstance(area, dict)
        refused = await place(client, friend, 12, 12, 1)
        assert refused.status_code == 403 and refused.json()["error"] == "protected"
        assert (await place(client, friend, 15, 12, 1)).status_code == 200  # just outside
        for api in canvas.api_urls:  # at once, from every process
            async with httpx.AsyncClient(base_url=api, timeout=10) as direct:
                policy = (await direct.get("/api/policy")).json()
                assert policy == {"frozen": False, "protected": [area]}
        assert (await act(client, "unprotect", {"id": area["id"]}))["removed"] is True
        assert (await place(client, friend, 12, 12, 1)).status_code == 200

        await act(client, "freeze", {})
        for api in canvas.api_urls:
            async with httpx.AsyncClient(base_url=api, timeout=10) as direct:
                r = await place(direct, friend, 3, 3, 1)
                assert r.status_code == 403 and r.json()["error"] == "frozen", r.text
        assert (await client.get("/api/policy")).json()["frozen"] is True
        await act(client, "unfreeze", {})
        assert (await place(client, friend, 3, 3, 1)).status_code == 200

        # a banned network can neither make sessions nor place
        await act(client, "ban", {"network": "127.0.0.0/8", "reason": "bots"})
        r = await client.post("/api/session")
        assert r.status_code == 403 and r.json()["error"] == "banned"
        assert (await place(client, friend, 4, 4, 1)).status_code == 403
        assert (await act(client, "unban", {"network": "127.0.0.0/8"}))["removed"] is True
        assert (await place(client, friend, 4, 4, 1)).status_code == 200

        actions = [e["action"] for e in (await client.get(
            "/api/admin/audit", headers=auth(moderator_token()))).json()["entries"]]  # fmt: skip
        assert actions == ["unban", "ban", "unfreeze", "freeze", "unprotect", "protect", "ban"]


async def test_fill_and_clear_are_placements_every_client_sees_live(canvas: Canvas) -> None:
    async with httpx.AsyncClient(base_url=canvas.url, timeout=30) as client, \
            websockets.connect(canvas.ws_url) as ws:  # fmt: skip
        hello = orjson.loads(await ws.recv())
        assert hello["type"] == "hello"
        effect = await act(client, "fill", {"rect": {"x": 2, "y": 3, "w": 4, "h": 5}, "color": 7})
        assert effect["pixels_changed"] == 20
        seen = Board(GEOMETRY)
        got: list[int] = []
        policy_messages = []
        while len(got) < 20:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, bytes):
                first, items = decode_frame(message)
                got += range(first, first + len(items))
                for i, c in items:
                    seen.set(i, c)
            else:
                policy_messages.append(orjson.loads(message))
        assert got == list(range(int(effect["first_seq"]), int(effect["last_seq"]) + 1))
        assert all(seen.get(GEOMETRY.index(x, y)) == 7 for x in range(2, 6) for y in range(3, 8))
        info = (await client.get("/api/pixel", params={"x": 2, "y": 3})).json()
        assert info["user_id"] == "mod:mia" and info["color"] == 7

        cleared = await act(client, "fill", {"rect": {"x": 2, "y": 3, "w": 2, "h": 1}})
        assert cleared["pixels_changed"] == 2  # no colour: 0, a clear
        again = await act(client, "fill", {"rect": {"x": 2, "y": 3, "w": 2, "h": 1}})
        assert again["pixels_changed"] == 0 and again["first_seq"] is None  # nothing to do

        # the policy reaches open pages, and pages that connect later
        await act(client, "freeze", {})
        while True:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str) and orjson.loads(message)["type"] == "policy":
                assert orjson.loads(message) == {"type": "policy", "frozen": True,
                                                 "protected": []}  # fmt: skip
                break
        async with websockets.connect(canvas.ws_url) as late:
            kinds = []
            while "policy" not in kinds:
                text = await asyncio.wait_for(late.recv(), 10)
                if isinstance(text, str):
                    kinds.append(orjson.loads(text)["type"])
            assert kinds[0] == "hello" and kinds[-1] == "policy"


async def test_admin_actions_refuse_bad_input_and_non_moderators(canvas: Canvas) -> None:
    async with httpx.AsyncClient(base_url=canvas.url, timeout=30) as client:
        _, user = await session(client)
        for path in ("ban", "rollback", "fill", "protect", "freeze"):
            assert (await client.post(f"/api/admin/{path}", json={})).status_code == 401
            r = await client.post(f"/api/admin/{path}", json={}, headers=user)
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
        mod = auth(moderator_token())
        bad = [
            ("ban", {"user": "u", "network": "1.2.3.4", "reason": "x"}, "bad_request"),
            ("ban", {"network": "1.2.3.999", "reason": "x"}, "bad_request"),
            ("ban", {"user": "u", "reason": ""}, "bad_request"),
            ("ban", {"user": "u", "reason": "x", "expires_in": "soon"}, "bad_request"),
            ("ban", {"user": "u", "reason": "x", "expires_in": "4000000d"}, "bad_request"),
            ("unprotect", {"id": 2**63}, "bad_request"),
            ("unprotect", {"id": 0}, "bad_request"),
            ("rollback", {"since": "1h"}, "bad_request"),
            ("rollback", {"users": ["u"], "since": "yesterday"}, "bad_request"),
            ("fill", {"rect": {"x": 95, "y": 0, "w": 10, "h": 1}}, "bad_rect"),
            ("fill", {"rect": {"x": 0, "y": 0, "w": 1, "h": 1}, "color": 16}, "bad_color"),
            ("protect", {"rect": {"x": 0, "y": 0, "w": 0, "h": 1}}, "bad_rect"),
            ("freeze", {"please": True}, "bad_request"),
        ]
        for path, body, code in bad:
            r = await client.post(f"/api/admin/{path}", json=body, headers=mod)
            assert r.status_code == 400 and r.json()["error"] == code, (path, body, r.text)
        audit = (await client.get("/api/admin/audit", headers=mod)).json()["entries"]
        assert audit == []  # nothing refused was done, nor recorded
