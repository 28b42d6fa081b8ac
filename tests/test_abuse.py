"""Abuse limits (issue 10, point 5): a bot that makes a new session for every placement
gets no more placements than the cooldown of its address allows, and no more sessions
than the per-address caps, counted across all API processes; a forged
``X-Forwarded-For`` from an untrusted peer changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from harness.servers import PostgresServer, RedisServer

from openplace.config import Settings
from openplace.core.policy import client_key
from openplace.core.quota import SessionQuota
from openplace.distributed.cluster import Cluster
from tests.conftest import ServerFactory, auth, cluster_env, mint_token

Start = Callable[..., AbstractAsyncContextManager[list[str]]]


@pytest.fixture(params=["embedded", "distributed"])
def start(
    request: pytest.FixtureRequest, server_factory: ServerFactory, settings: Settings
) -> Start:
    """Start a canvas with these settings (``OPENPLACE_*`` names, lower case, without
    the prefix); yields the URLs of its API processes (embedded: one)."""

    @asynccontextmanager
    async def embedded(**changes: str) -> AsyncIterator[list[str]]:
        typed = {k: float(v) if "." in v else int(v) for k, v in changes.items()}
        srv = await server_factory(settings.with_(cooldown_by="both", **typed))
        yield [srv.url]

    @asynccontextmanager
    async def distributed(**changes: str) -> AsyncIterator[list[str]]:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        redis = RedisServer().start()  # each canvas its own
        extra = {f"OPENPLACE_{k.upper()}": v for k, v in changes.items()}
        env = cluster_env(redis.url, await postgres.new_database(), **extra)
        env["OPENPLACE_COOLDOWN_BY"] = "both"
        cluster = Cluster(Settings.from_env(env), api=2, realtime=1, env=env)
        try:
            await asyncio.to_thread(cluster.start)
            yield [f"http://127.0.0.1:{p}" for p in cluster.api_ports]
        finally:
            await asyncio.to_thread(cluster.stop)
            redis.stop()

    return embedded if request.param == "embedded" else distributed


async def test_a_session_farming_bot_is_held_to_its_address_cooldown(start: Start) -> None:
    cooldown = 1.0
    async with start(cooldown_seconds=str(cooldown)) as apis:
        clients = [httpx.AsyncClient(base_url=u, timeout=10) for u in apis]
        placed = refused = 0
        began = time.monotonic()
        try:
            k = 0
            while time.monotonic() - began < 2.5:  # as fast as it can, over every process
                c = clients[k % len(clients)]
                k += 1
                s = await c.post("/api/session")
                if s.status_code != 201:
                    continue
                r = await c.post("/api/pixel", json={"x": k % 100, "y": 1, "color": 2},
                                 headers=auth(s.json()["token"]))  # fmt: skip
                if r.status_code == 200:
                    placed += 1
                else:
                    assert r.status_code == 429 and r.json()["error"] == "cooldown", r.text
                    refused += 1
            elapsed = time.monotonic() - began
        finally:
            for c in clients:
                await c.aclose()
    # one placement per cooldown of its address, however many sessions it makes
    assert 1 <= placed <= int(elapsed / cooldown) + 1, (placed, elapsed)
    assert refused > placed


async def test_new_sessions_are_capped_per_address_per_minute_and_per_day(start: Start) -> None:
    async with start(sessions_per_ip_per_minute="3", cooldown_seconds="0") as apis:
        codes = []
        for k in range(5):  # spread over the API processes: the count is shared
            async with httpx.AsyncClient(base_url=apis[k % len(apis)], timeout=10) as c:
                codes.append((await c.post("/api/session")).status_code)
                if codes[-1] == 429:
                    r = await c.post("/api/session")
                    assert r.json()["error"] == "rate_limited"
                    assert 1 <= int(r.headers["retry-after"]) <= 60
        assert codes == [201, 201, 201, 429, 429]
    caps = {"sessions_per_ip_per_minute": "100", "sessions_per_address_per_day": "2"}
    async with start(**caps) as apis, httpx.AsyncClient(base_url=apis[-1], timeout=10) as c:
        codes = [(await c.post("/api/session")).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        r = await c.post("/api/session")
        assert 1 <= int(r.headers["retry-after"]) <= 86_400  # until the day is over


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(start: Start) -> None:
    async with start(cooldown_seconds="300") as apis:
        # 127.0.0.2 is no trusted proxy (only 127.0.0.1 is, by default)
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=apis[0], transport=transport, timeout=10) as c:
            answers = []
            for forged in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
                token = (await c.post("/api/session")).json()["token"]
                headers = {**auth(token), "X-Forwarded-For": forged}
                r = await c.post("/api/pixel", json={"x": 5, "y": 5, "color": 1}, headers=headers)
                answers.append(r.status_code)
            assert answers == [200, 429, 429]
            me = await c.get(
                "/api/me", headers=auth((await c.post("/api/session")).json()["token"])
            )
            assert me.json()["next_at"] is not None  # a new session of this address waits too


def test_sessions_are_counted_in_fixed_minute_and_day_windows() -> None:
    quota = SessionQuota(per_minute=2, per_day=3)
    t = 1_700_000_000.0 - 1_700_000_000.0 % 86_400  # midnight UTC
    assert quota.admit("a", t) is None and quota.admit("a", t + 1) is None
    assert quota.admit("a", t + 2) == pytest.approx(58)  # the minute's cap
    assert quota.admit("b", t + 2) is None  # per address
    assert quota.admit("a", t + 61) is None  # a new minute
    assert quota.admit("a", t + 122) == pytest.approx(86_400 - 122)  # the day's cap
    assert quota.admit("a", t + 86_400) is None  # a new day


def test_addresses_are_counted_as_a_subscriber_has_them() -> None:
    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    # an IPv6 subscriber has a /64: all of it is one address for the limits
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")


async def test_the_forwarded_client_is_the_one_the_trusted_proxy_names(
    server_factory: ServerFactory, settings: Settings
) -> None:
    """Behind a trusted proxy (127.0.0.1 here), the address cooldown is the client's:
    the one hop nginx forwards, or in a chain the last address nginx did not trust."""
    srv = await server_factory(settings.with_(cooldown_by="both"))
    client = httpx.AsyncClient(base_url=srv.url, timeout=10)

    async def place(forwarded: str | None) -> int:
        headers = {**auth(mint_token())}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        r = await client.post("/api/pixel", json={"x": 1, "y": 1, "color": 2}, headers=headers)
        return r.status_code

    assert await place("198.51.100.7") == 200
    assert await place("198.51.100.7") == 429  # a new user, the same address
    assert await place("203.0.113.1, 198.51.100.7") == 429  # a chain ending in it
    assert await place("198.51.100.7, 203.0.113.1") == 200  # one ending in another
    assert await place("198.51.100.8") == 200
    assert await place(None) == 200  # the proxy's own request: its own address
    assert await place(None) == 429
    await client.aclose()
