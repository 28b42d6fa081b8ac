"""``openplace admin ban|unban|bans|rollback|fill|protect|unprotect|freeze|unfreeze``:
the command line calls the running canvas's admin API, in both modes, as a moderator
(``cli``, or ``--as``) that the audit log names; its failures are one clear line and
exit code 1."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
from harness.servers import free_port

from openplace.config import Settings
from openplace.core.board import Board, Geometry
from openplace.distributed.cluster import Cluster
from tests.conftest import ServerFactory, mint_token, place, session

GEOMETRY = Geometry(100, 80)


async def admin(
    env: dict[str, str], *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """``openplace admin ...`` in a subprocess (in a thread: the embedded server runs in
    this event loop)."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "openplace.cli", "admin", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if ok:
        assert done.returncode == 0, done.stderr
    return done


async def until_board(client: httpx.AsyncClient, pixels: dict[tuple[int, int], int]) -> None:
    """Until ``GET /api/board`` shows these colours (the board follows the commits)."""
    for _ in range(200):
        board = Board(GEOMETRY, (await client.get("/api/board")).content)
        if all(board.get(GEOMETRY.index(x, y)) == c for (x, y), c in pixels.items()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the board never showed {pixels}")


async def until_policy(client: httpx.AsyncClient, policy: dict[str, object]) -> None:
    """Until ``GET /api/policy`` answers ``policy`` (in distributed mode, an API process
    other than the one that acted learns of a change within about a second)."""
    for _ in range(60):
        if (await client.get("/api/policy")).json() == policy:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"GET /api/policy never answered {policy}")


async def moderate(url: str, env: dict[str, str], where: list[str]) -> None:
    """A vandal, healed, banned; the canvas frozen and opened; an area protected and
    lifted; a fill; all in the audit log."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        _, friend = await session(client)
        vandal_id, vandal = await session(client)
        assert (await place(client, friend, 1, 1, 2)).status_code == 200
        assert (await place(client, vandal, 1, 1, 5)).status_code == 200
        await until_board(client, {(1, 1): 5})

        out = (await admin(env, "rollback", *where, "--user", vandal_id, "--since", "1h")).stdout
        assert out.startswith("rolled back 1 placement of 1 user: 1 pixel changed, seqs 3..3")
        await until_board(client, {(1, 1): 2})  # the friend's pixel again
        info = (await client.get("/api/pixel", params={"x": 1, "y": 1})).json()
        assert info["user_id"] == "mod:cli" and info["color"] == 2

        out = (await admin(env, "ban", *where, "--user", vandal_id, "--reason", "griefing",
                           "--expires", "1d")).stdout  # fmt: skip
        assert out.startswith(f"banned user {vandal_id} until 20") and "griefing" in out
        r = await place(client, vandal, 2, 2, 5)
        assert r.status_code == 403 and r.json()["error"] == "banned", r.text
        assert r.json()["reason"] == "griefing"
        listed = (await admin(env, "bans", *where)).stdout
        assert listed.startswith(f"user\t{vandal_id}\tuntil 20") and "by cli\tgriefing" in listed
        out = (await admin(env, "unban", *where, "--user", vandal_id, "--as", "mia")).stdout
        assert out.startswith("ban lifted")
        assert (await admin(env, "bans", *where)).stdout == "no bans in force\n"

        assert (await admin(env, "freeze", *where)).stdout.startswith("the canvas is frozen")
        _, late = await session(client)
        r = await place(client, late, 3, 3, 1)
        assert r.status_code == 403 and r.json()["error"] == "frozen", r.text
        await admin(env, "unfreeze", *where)
        assert (await place(client, late, 3, 3, 1)).status_code == 200

        out = (await admin(env, "protect", *where, "--rect", "10,10,5,5")).stdout
        area_id = int(out.split()[2])
        assert out.startswith(f"protected area {area_id} at 10,10,5,5")
        area = {"id": area_id, "x": 10, "y": 10, "w": 5, "h": 5}
        await until_policy(client, {"frozen": False, "protected": [area]})
        _, other = await session(client)
        r = await place(client, other, 12, 12, 1)
        assert r.status_code == 403 and r.json()["error"] == "protected", r.text
        assert (await admin(env, "unprotect", *where, str(area_id))).stdout.startswith(
            "protected area lifted"
        )
        await until_policy(client, {"frozen": False, "protected": []})

        out = (await admin(env, "fill", *where, "--rect", "20,20,4,4", "--color", "7")).stdout
        assert out.startswith("filled: 16 pixels changed, seqs ")
        await until_board(client, {(20, 20): 7, (23, 23): 7})

    lines = (await admin(env, "audit")).stdout.splitlines()
    assert [tuple(line.split("\t")[2:4]) for line in lines] == [
        ("cli", "fill"), ("cli", "unprotect"), ("cli", "protect"), ("cli", "unfreeze"),
        ("cli", "freeze"), ("mia", "unban"), ("cli", "ban"), ("cli", "rollback"),
    ]  # fmt: skip


async def test_the_cli_moderates_an_embedded_canvas(
    server_factory: ServerFactory, settings: Settings
) -> None:
    srv = await server_factory(settings)
    # no --url: this host at OPENPLACE_PORT
    env = {"OPENPLACE_DATA_DIR": str(settings.data_dir), "OPENPLACE_SECRET": "test-secret",
           "OPENPLACE_PORT": str(srv.port)}  # fmt: skip
    await moderate(srv.url, env, [])

    # what goes wrong is one line, and exit code 1
    for args, message in [
        (["fill", "--rect", "1,2,3"], "--rect '1,2,3': expected X,Y,W,H"),
        (["protect", "--rect", "a,b,c,d"], "expected X,Y,W,H"),
        (["fill", "--rect", "95,0,10,1"], "is not inside the board (100x80)"),  # the server's
        (["rollback", "--since", "1h"], "give --user (one or more) or --network"),
        (["rollback", "--user", "u", "--since", "yesterday"], "'since' must be an ISO 8601"),
        (["freeze", "--token", mint_token()], "a user's token cannot moderate"),
        (["freeze", "--as", "no spaces"], "--as: a moderator's name is"),
    ]:
        done = await admin(env, *args, ok=False)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("openplace: ") and message in done.stderr, done.stderr
        assert done.stdout == ""


async def test_the_cli_says_where_it_looked_when_the_canvas_is_not_running() -> None:
    port = free_port()
    env = {"OPENPLACE_SECRET": "test-secret", "OPENPLACE_PORT": str(port)}
    for extra in ([], ["--url", f"http://127.0.0.1:{port}/"]):
        done = await admin(env, "freeze", *extra, ok=False)
        assert done.returncode == 1
        assert done.stderr.startswith(f"openplace: cannot connect to the canvas at "
                                      f"http://127.0.0.1:{port} ")  # fmt: skip
        assert "is it running?" in done.stderr and "--url" in done.stderr
        assert len(done.stderr.splitlines()) == 1


async def test_the_cli_moderates_a_distributed_canvas(cluster: Cluster) -> None:
    env = {"OPENPLACE_REDIS_URL": cluster.settings.redis_url or "",
           "OPENPLACE_DATABASE_URL": cluster.settings.database_url or "",
           "OPENPLACE_SECRET": "test-secret"}  # fmt: skip
    await moderate(cluster.url, env, ["--url", cluster.url])
