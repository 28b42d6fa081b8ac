"""Shared fixtures: a real openplace server (uvicorn) on a free loopback port."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from harness.servers import PostgresServer, RedisServer, free_port

from openplace.api.server import uvicorn_config
from openplace.app import create_app
from openplace.auth.tokens import Identity, TokenSigner
from openplace.config import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from starlette.applications import Starlette

    from openplace.distributed.cluster import Cluster

pytest_plugins = ["tests.leftovers"]  # the run leaves no folders or processes behind


class LiveServer:
    """An embedded openplace server running in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._app: Starlette | None = None

    @property
    def app(self) -> Starlette:
        """The app of the latest :meth:`start`."""
        assert self._app is not None, "the server was never started"
        return self._app

    async def start(self) -> LiveServer:
        self._app = create_app(self.settings)
        config = uvicorn_config(self._app, self.settings.with_(port=self.port))
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        secret="test-secret",
        width=100,
        height=80,
        cooldown_seconds=300,
        cooldown_by="user",  # many test users share 127.0.0.1 (test_abuse.py: "both")
        board_refresh_seconds=0,
        online_interval_seconds=0.05,
    )


ServerFactory = Callable[[Settings], Awaitable[LiveServer]]


@pytest.fixture
async def server_factory() -> AsyncIterator[ServerFactory]:
    servers: list[LiveServer] = []

    async def make(settings: Settings) -> LiveServer:
        srv = await LiveServer(settings).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def server(server_factory: ServerFactory, settings: Settings) -> LiveServer:
    return await server_factory(settings)


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


async def new_token(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/session")
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


_signer = TokenSigner("test-secret")
_minted = 0


def mint_token() -> str:
    """A fresh identity signed with the test secret, without a round trip."""
    global _minted
    _minted += 1
    return _signer.issue(Identity(f"u_test{_minted}"))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def session(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A new user: its id and its ``Authorization`` header."""
    r = await client.post("/api/session")
    assert r.status_code == 201, r.text
    return r.json()["user_id"], auth(r.json()["token"])


async def place(client: httpx.AsyncClient, who: dict[str, str], x: int, y: int,
                color: int) -> httpx.Response:  # fmt: skip
    """``POST /api/pixel`` as ``who``."""
    return await client.post("/api/pixel", json={"x": x, "y": y, "color": color}, headers=who)


# Browser tests save what the page showed here, and print the path.
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """``shot(page, step)`` saves a screenshot of ``page`` and prints where."""
    name = re.sub(r"[^\w.-]+", "_", request.node.name)

    def take(page: Page, step: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{step}.png"
        page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path

    return take


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the session; each test takes a new database."""
    pg = PostgresServer().start()
    yield pg
    pg.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throw-away Redis server for one test."""
    r = RedisServer().start()
    yield r
    r.stop()


def cluster_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """Environment for a distributed test cluster on a 100 x 80 board."""
    return {
        "OPENPLACE_REDIS_URL": redis_url,
        "OPENPLACE_DATABASE_URL": database_url,
        "OPENPLACE_SECRET": "test-secret",
        "OPENPLACE_WIDTH": "100",
        "OPENPLACE_HEIGHT": "80",
        "OPENPLACE_COOLDOWN_SECONDS": "300",
        "OPENPLACE_COOLDOWN_BY": "user",  # many test users share one address
        "OPENPLACE_DRAIN_SECONDS": "0.3",  # stopping a test cluster: no 3 s drain
        "OPENPLACE_BOARD_REFRESH_SECONDS": "0",
        "OPENPLACE_ONLINE_INTERVAL_SECONDS": "0.2",
        **extra,
    }


@pytest.fixture
async def cluster(postgres: PostgresServer, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    """A local stack: persister, 2 API and 2 realtime processes, nginx in front.

    ``cluster.settings.database_url`` is its database.
    """
    from openplace.distributed.cluster import Cluster

    db = await postgres.new_database()
    env = cluster_env(redis_server.url, db)
    c = Cluster(Settings.from_env(env), api=2, realtime=2, env=env)
    await asyncio.to_thread(c.start)
    yield c
    await asyncio.to_thread(c.stop)
