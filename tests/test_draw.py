"""``openplace draw`` (issue 13, point 3): bots in subprocesses keep a template on a real
embedded server, against a griefer, through a bot's SIGKILL and a server restart, and
every placement in the history obeys the rules."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness.servers import PostgresServer, RedisServer
from PIL import Image

from openplace.auth.moderators import Moderator, ModeratorSigner
from openplace.client import AsyncCanvas, Cooldown, Unavailable
from openplace.config import Settings
from openplace.core.palette import PALETTE
from openplace.distributed.cluster import Cluster
from openplace.templates import Template, diff, load, priorities
from openplace.templates import bot as bot_module
from openplace.templates.bot import Bot as DrawBot
from openplace.templates.bot import default_token_file, read_token, seed_of, write_token
from tests.conftest import LiveServer, ServerFactory, cluster_env, mint_token

DEADLINE = 60.0  # generous: a wait that ends early is a pass, never a timing assertion


def save_template(path: Path, rows: list[list[int | None]]) -> None:
    """A PNG of palette indices; ``None`` is transparent."""
    rgba = np.zeros((len(rows), len(rows[0]), 4), np.uint8)
    for j, row in enumerate(rows):
        for i, color in enumerate(row):
            if color is not None:
                rgba[j, i, :3] = [int(PALETTE[color][k : k + 2], 16) for k in (1, 3, 5)]
                rgba[j, i, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)


def moderator() -> dict[str, str]:
    token = ModeratorSigner("test-secret").issue(Moderator("mia", time.time(), None))
    return {"Authorization": f"Bearer {token}"}


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds (polled every 0.1 s), failing after :data:`DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.1)


@dataclass
class Bot:
    """One ``openplace draw`` process; its stdout and stderr go to ``log``."""

    proc: asyncio.subprocess.Process
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def placed(self) -> int:
        return self.text().count(" placed (")

    def user(self) -> str:
        found = re.search(r"drawing as (\S+)", self.text())
        assert found, self.text()
        return found.group(1)


class Bots:
    """Starts bots against ``url`` and stops whatever is left at the end."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.started: list[Bot] = []

    async def start(self, image: Path, at: tuple[int, int], name: str, *extra: str) -> Bot:
        log = self.tmp / f"{name}-{len(self.started)}.log"
        env = {**os.environ, "XDG_DATA_HOME": str(self.tmp / "xdg")}
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "openplace", "draw", str(image),
                "--at", f"{at[0]},{at[1]}", "--url", self.url, *extra,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
        bot = Bot(proc, log)
        self.started.append(bot)
        return bot

    async def stop(self, bot: Bot, sig: signal.Signals = signal.SIGTERM) -> int:
        if bot.proc.returncode is None:
            bot.proc.send_signal(sig)
        return await asyncio.wait_for(bot.proc.wait(), DEADLINE)

    async def close(self) -> None:
        for bot in self.started:
            if bot.proc.returncode is None:
                bot.proc.kill()
                await bot.proc.wait()


@pytest.fixture
async def fast(server_factory: ServerFactory, settings: Settings) -> LiveServer:
    """An embedded server with a 1 s cooldown per user (every test user is 127.0.0.1)."""
    return await server_factory(settings.with_(cooldown_seconds=1.0, cooldown_by="user"))


@pytest.fixture
async def bots(tmp_path: Path, fast: LiveServer) -> AsyncIterator[Bots]:
    b = Bots(tmp_path, fast.url)
    yield b
    await b.close()


async def place_as_new_users(url: str, pixels: list[tuple[int, int, int]]) -> None:
    """Each pixel placed by a fresh user (no cooldown between them)."""
    for x, y, color in pixels:
        async with AsyncCanvas(url, token=mint_token()) as other:
            await other.place(x, y, color)


async def griefer(url: str, pixels: list[tuple[int, int, int]]) -> None:
    """One user placing ``pixels`` one after the other, waiting out its cooldown as told
    and the server's restart as any client would."""
    async with AsyncCanvas(url) as canvas:
        for x, y, color in pixels:
            while True:
                try:
                    placed = await canvas.place(x, y, color)
                except Cooldown as e:
                    await asyncio.sleep(e.retry_after + 0.01)
                    continue
                except (Unavailable, httpx.HTTPError):
                    await asyncio.sleep(0.2)
                    continue
                if placed.next_at is not None:
                    await asyncio.sleep((placed.next_at.timestamp() - time.time()) + 0.01)
                break


@dataclass(frozen=True)
class Record:
    seq: int
    x: int
    y: int
    color: int
    at: float
    user: str


async def history_with_users(url: str) -> list[Record]:
    """Every placement of the history with its user: ``GET /api/history`` gives the
    placements, ``GET /api/pixel/history`` of each pixel touched gives who placed them."""
    async with AsyncCanvas(url) as canvas:
        placements = await canvas.history()
    users: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as raw:
        for x, y in sorted({(p.x, p.y) for p in placements}):
            r = await raw.get("/api/pixel/history", params={"x": x, "y": y, "limit": 1000})
            assert r.status_code == 200, r.text
            users.update({e["seq"]: e["user_id"] for e in r.json()["placements"]})
    out = []
    for p in placements:
        assert p.at is not None and p.seq in users, p
        out.append(Record(p.seq, p.x, p.y, p.color, p.at.timestamp(), users[p.seq]))
    return out


def assert_cooldowns_kept(records: list[Record], cooldown: float) -> None:
    """No user placed twice within the cooldown."""
    last: dict[str, Record] = {}
    for r in records:
        before = last.get(r.user)
        if before is not None:
            assert r.at - before.at >= cooldown - 1e-3, (before, r)
        last[r.user] = r


def assert_inside_template(records: list[Record], template: Template) -> None:
    """Each placement was in the template's opaque pixels, in the template's colour."""
    for r in records:
        i, j = r.x - template.x, r.y - template.y
        assert 0 <= i < template.width and 0 <= j < template.height, r
        assert template.mask[j, i] and r.color == template.colors[j, i], r


async def board_shows(url: str, template: Template) -> bool:
    async with AsyncCanvas(url) as canvas:
        return diff(template, (await canvas.board(fresh=True)).colors).complete


# -- the token file ---------------------------------------------------------------------


def test_the_token_file_is_private_and_read_back(tmp_path: Path) -> None:
    path = default_token_file(tmp_path / "castle.png")
    assert path == tmp_path / "castle.png.token" and read_token(path) is None
    write_token(path, "eyJ.secret")
    assert read_token(path) == "eyJ.secret" and path.stat().st_mode & 0o777 == 0o600
    write_token(path, "eyJ.other")  # replaced atomically, still private
    assert read_token(path) == "eyJ.other" and path.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [path]
    assert seed_of("u_a") == seed_of("u_a") != seed_of("u_b")


# -- two bots, a griefer, a SIGKILL and a server restart --------------------------------

# 8x6, one transparent pixel, colours 1..8 (none is the empty board's 0).
ROWS: list[list[int | None]] = [[1 + (i + 2 * j) % 8 for i in range(8)] for j in range(6)]
ROWS[0][0] = None
AT = (20, 30)


async def test_two_bots_keep_a_template_against_a_griefer_through_restarts(
    tmp_path: Path, fast: LiveServer, bots: Bots
) -> None:
    image = tmp_path / "castle.png"
    save_template(image, ROWS)
    template = load(image, AT, PALETTE)
    wanted = [(AT[0] + i, AT[1] + j, c) for j, row in enumerate(ROWS)
              for i, c in enumerate(row) if c is not None]  # fmt: skip
    assert len(wanted) == 47
    # Others drew most of it already; 10 pixels are missing, 6 of them together.
    missing = {(20, 31), (21, 31), (20, 32), (21, 32), (20, 33), (21, 33), (27, 30), (25, 35),
               (24, 32), (27, 35)}  # fmt: skip
    await place_as_new_users(fast.url, [p for p in wanted if p[:2] not in missing])

    a_token, b_token = tmp_path / "a.token", tmp_path / "b.token"
    a = await bots.start(image, AT, "a", "--token-file", str(a_token))
    b = await bots.start(image, AT, "b", "--token-file", str(b_token))

    async def both_placed() -> bool:
        return a.placed() >= 2 and b.placed() >= 1

    await eventually(both_placed, "both bots placed")
    # Two griefers, 4 wrong colours each inside the template (one on its transparent pixel).
    grief = asyncio.gather(
        griefer(fast.url, [(22, 31, 0), (23, 31, 0), (22, 32, 0), (20, 30, 9)]),
        griefer(fast.url, [(26, 34, 12), (27, 34, 12), (26, 35, 12), (27, 33, 12)]),
    )

    # Bot a is killed (no goodbye) and restarted with its token file: the same user.
    assert await bots.stop(a, signal.SIGKILL) == -signal.SIGKILL
    async with AsyncCanvas(fast.url) as c:
        killed_at = (await c.board(fresh=True)).seq
    a2 = await bots.start(image, AT, "a", "--token-file", str(a_token))

    async def a2_placed() -> bool:
        return a2.placed() >= 1

    await eventually(a2_placed, "the restarted bot placed")
    assert a2.user() == a.user() != b.user()

    # The server restarts; then more damage, which only a bot placing after it repairs.
    await fast.restart()
    async with AsyncCanvas(fast.url) as c:
        restarted_at = (await c.board(fresh=True)).seq
    await place_as_new_users(fast.url, [(24, 33, 0), (25, 33, 0), (24, 34, 0)])
    await grief

    async def converged() -> bool:
        return await board_shows(fast.url, template)

    await eventually(converged, "the template is on the board")
    for bot, sig in ((a2, signal.SIGTERM), (b, signal.SIGINT)):  # both end cleanly
        assert await bots.stop(bot, sig) == 0, bot.text()
        assert f"stopped ({sig.name})" in bot.text()

    records = await history_with_users(fast.url)
    assert_cooldowns_kept(records, 1.0)
    mine = [r for r in records if r.user in (a.user(), b.user())]
    assert_inside_template(mine, template)
    a_seqs = [r.seq for r in mine if r.user == a.user()]
    assert min(a_seqs) <= killed_at < max(a_seqs), "a placed before its kill and after"
    assert any(r.seq > restarted_at for r in mine), "the bots carried on after the restart"
    assert {r.user for r in records if r.seq > killed_at} >= {a.user(), b.user()}
    for bot in (a, a2, b):  # the bots waited for their cooldowns: never refused
        assert "refused" not in bot.text() and "Traceback" not in bot.text(), bot.text()
    assert a_token.stat().st_mode & 0o777 == 0o600
    token = read_token(a_token)
    assert token is not None and all(token not in bot.text() for bot in (a, a2, b))


async def test_a_restarted_bot_waits_out_its_cooldown(
    tmp_path: Path, server_factory: ServerFactory, settings: Settings
) -> None:
    """A bot killed just after it placed comes back as the same user, asks for its
    cooldown and waits it out instead of being refused."""
    # Long enough that the kill and the restart (several seconds on a slow, busy machine)
    # come within it: the restarted bot must find its cooldown still running.
    server = await server_factory(settings.with_(cooldown_seconds=15.0))
    bots = Bots(tmp_path, server.url)
    try:
        image = tmp_path / "two.png"
        save_template(image, [[3, 4]])
        first = await bots.start(image, (0, 0), "one")  # the default token file

        async def placed_once() -> bool:
            return first.placed() == 1

        await eventually(placed_once, "the first placement")
        await bots.stop(first, signal.SIGKILL)
        assert (tmp_path / "two.png.token").exists()
        again = await bots.start(image, (0, 0), "one", "--once")
        assert await asyncio.wait_for(again.proc.wait(), DEADLINE) == 0, again.text()
        assert again.user() == first.user()
        assert "cooldown:" in again.text() and "refused" not in again.text(), again.text()
        records = await history_with_users(server.url)
        assert [r.user for r in records] == [first.user()] * 2
        assert_cooldowns_kept(records, 15.0)
    finally:
        await bots.close()


async def test_a_cooldown_refusal_is_waited_out_once(
    tmp_path: Path, server_factory: ServerFactory, settings: Settings
) -> None:
    """With the address's cooldown, a neighbour placing between the bot's ``me()`` and
    its placement makes the bot early: it is refused once and waits as told. The bot
    runs in a thread of this process, so the neighbour can place from its output."""
    server = await server_factory(settings.with_(cooldown_seconds=2.0, cooldown_by="both"))
    image = tmp_path / "dot.png"
    save_template(image, [[7]])
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("drawing as"):  # the bot places next
            r = httpx.post(server.url + "/api/pixel", json={"x": 50, "y": 50, "color": 1},
                           headers={"Authorization": f"Bearer {mint_token()}"})  # fmt: skip
            assert r.status_code == 200, r.text

    bot = DrawBot(server.url, image, (0, 0), tmp_path / "dot.token", once=True, out=out)
    assert await asyncio.to_thread(asyncio.run, bot.run()) == 0
    text = "\n".join(lines)
    assert text.count("refused, cooldown") == 1 and text.count("placed (0, 0)") == 1, text
    records = await history_with_users(server.url)
    assert len(records) == 2 and records[1].at - records[0].at >= 2.0 - 1e-3


async def test_a_bot_started_before_its_server_waits_for_it(
    tmp_path: Path, settings: Settings
) -> None:
    server = LiveServer(settings.with_(cooldown_seconds=0.2))
    bots = Bots(tmp_path, server.url)
    try:
        image = tmp_path / "dots.png"
        save_template(image, [[1, None, 3]])
        bot = await bots.start(image, (5, 5), "early", "--once")

        async def retrying() -> bool:
            return "retrying in" in bot.text()

        await eventually(retrying, "the bot waits for the server")
        await server.start()
        assert await asyncio.wait_for(bot.proc.wait(), DEADLINE) == 0, bot.text()
        assert ": ConnectError" in bot.text() and bot.placed() == 2
    finally:
        await bots.close()
        await server.stop()


# -- refusals ---------------------------------------------------------------------------


async def test_a_bot_skips_protected_pixels_and_waits_while_frozen(
    tmp_path: Path, fast: LiveServer, bots: Bots
) -> None:
    image = tmp_path / "flag.png"
    rows: list[list[int | None]] = [[5, 5, 6, 6, 7], [5, 5, 6, 6, 7], [5, 5, 6, 6, 7]]
    save_template(image, rows)
    at = (40, 40)
    template = load(image, at, PALETTE)
    admin = fast.url + "/api/admin/"
    async with httpx.AsyncClient(headers=moderator(), timeout=10) as mod:
        r = await mod.post(admin + "protect", json={"rect": {"x": 38, "y": 39, "w": 4, "h": 3}})
        assert r.status_code == 200, r.text  # covers x 40..41 of the template's first 2 rows
        assert (await mod.post(admin + "freeze", json={})).status_code == 200
        bot = await bots.start(image, at, "flag", "--once")

        async def says_frozen() -> bool:
            return "frozen" in bot.text()

        await eventually(says_frozen, "the bot noticed the freeze")
        assert bot.placed() == 0
        assert (await mod.post(admin + "unfreeze", json={})).status_code == 200
        # --once: it stops when only protected pixels are left, with status 1.
        assert await asyncio.wait_for(bot.proc.wait(), DEADLINE) == 1, bot.text()
    text = bot.text()
    assert "4 pixels left, all where placing is refused" in text, text
    assert "protected, skipped" not in text and "refused" not in text.replace(
        "where placing is refused", ""
    ), text  # it never tried a protected pixel
    records = await history_with_users(fast.url)
    assert len(records) == 15 - 4
    assert_inside_template(records, template)
    assert not any(38 <= r.x < 42 and 39 <= r.y < 42 for r in records)
    assert_cooldowns_kept(records, 1.0)
    # The most damaged pixel first: the first placement had the highest damage there was.
    empty = np.zeros((80, 100), np.uint8)
    allowed = [f for f in priorities(template, empty) if not (f.x < 42 and f.y < 42)]
    first = re.search(r"placed \((\d+), (\d+)\) .*\(damage (\d+)\)", text)
    assert first is not None and int(first.group(3)) == allowed[0].damage
    async with AsyncCanvas(fast.url) as canvas:
        board = await canvas.board()
    assert diff(template, board.colors).wrong == 4


async def test_a_pixel_refused_as_protected_is_tried_once(
    tmp_path: Path, fast: LiveServer
) -> None:
    """An area protected between the bot's last look at the policy and its placement: the
    placement is refused once, then the bot reads the policy and skips the area. The bot
    runs in a thread of this process, so the area is made from its output."""
    image = tmp_path / "bar.png"
    save_template(image, [[4] * 5])  # the middle pixel is the most damaged: tried first
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("drawing as"):  # the bot places next
            r = httpx.post(fast.url + "/api/admin/protect", headers=moderator(),
                           json={"rect": {"x": 70, "y": 10, "w": 4, "h": 1}})  # fmt: skip
            assert r.status_code == 200, r.text

    bot = DrawBot(fast.url, image, (70, 10), tmp_path / "bar.token", once=True, out=out)
    assert await asyncio.to_thread(asyncio.run, bot.run()) == 1
    text = "\n".join(lines)
    refused = re.findall(r"\((\d+), 10\): protected, skipped", text)
    assert refused == ["72"], text
    assert "4 pixels left, all where placing is refused" in text, text
    records = await history_with_users(fast.url)
    assert [(r.x, r.y, r.color) for r in records] == [(74, 10, 4)]


async def test_an_idle_bot_places_as_soon_as_a_protected_area_is_lifted(
    tmp_path: Path, fast: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only protected pixels left, the bot waits; the area lifted, the websocket's policy
    message wakes it (its look every RECHECK seconds is made an hour here, so only the
    message can)."""
    monkeypatch.setattr(bot_module, "RECHECK", 3600.0)
    image = tmp_path / "bar.png"
    save_template(image, [[3] * 4])
    async with httpx.AsyncClient(headers=moderator(), timeout=10) as mod:
        r = await mod.post(fast.url + "/api/admin/protect",
                           json={"rect": {"x": 60, "y": 20, "w": 2, "h": 1}})  # fmt: skip
    assert r.status_code == 200, r.text
    area = r.json()["area"]["id"]
    lines: list[str] = []
    lifting: list[asyncio.Task[httpx.Response]] = []

    async def unprotect() -> httpx.Response:
        async with httpx.AsyncClient(headers=moderator(), timeout=10) as mod:
            return await mod.post(fast.url + "/api/admin/unprotect", json={"id": area})

    def out(line: str) -> None:
        lines.append(line)
        if "all where placing is refused" in line and not lifting:
            lifting.append(asyncio.create_task(unprotect()))
        if line.startswith("template complete"):
            raise bot_module.Exit(0, "done")

    # In this event loop, beside the server: a bot that never wakes is cancelled.
    bot = DrawBot(fast.url, image, (60, 20), tmp_path / "bar.token", out=out)
    with pytest.raises(bot_module.Exit):  # raised by out() once the template is complete
        await asyncio.wait_for(bot.run(), DEADLINE)
    assert lifting and (await lifting[0]).json()["removed"] is True, "\n".join(lines)
    records = await history_with_users(fast.url)
    assert sorted((r.x, r.y, r.color) for r in records) == [(x, 20, 3) for x in range(60, 64)]
    assert_cooldowns_kept(records, 1.0)


async def test_a_bot_stops_on_a_refused_token_and_on_a_ban_until_lifted(
    tmp_path: Path, fast: LiveServer, bots: Bots
) -> None:
    image = tmp_path / "line.png"
    save_template(image, [[2] * 30])
    forged = tmp_path / "forged.token"
    forged.write_text("eyJ1IjoidV9mb3JnZWQifQ.not-a-signature-at-all\n")
    bot = await bots.start(image, (0, 5), "forged", "--token-file", str(forged))
    assert await asyncio.wait_for(bot.proc.wait(), DEADLINE) == 1
    assert "refused the token" in bot.text() and "eyJ1" not in bot.text(), bot.text()

    bot = await bots.start(image, (0, 5), "banned")

    async def placed() -> bool:
        return bot.placed() >= 1

    await eventually(placed, "the bot placed")
    ban = fast.url + "/api/admin/ban"
    async with httpx.AsyncClient(headers=moderator(), timeout=10) as mod:
        # A ban with an end is waited out...
        timed = {"user": bot.user(), "reason": "slow down", "expires_in": "2s"}
        r = await mod.post(ban, json=timed)
        assert r.status_code == 200, r.text
        before = bot.placed()

        async def placed_after_the_ban() -> bool:
            return "banned (slow down) until" in bot.text() and bot.placed() > before

        await eventually(placed_after_the_ban, "the bot waited out its ban")
        # ...one until lifted stops the bot.
        r = await mod.post(ban, json={"user": bot.user(), "reason": "botting"})
        assert r.status_code == 200, r.text
    assert await asyncio.wait_for(bot.proc.wait(), DEADLINE) == 1, bot.text()
    assert "banned (botting), until lifted" in bot.text()


# -- distributed mode -------------------------------------------------------------------


@pytest.fixture
async def stack(postgres: PostgresServer, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    """One API and one realtime process behind nginx; a 1 s cooldown, and placements
    answered ``unconfirmed`` after 1 s without the persister's ack."""
    fast = {"OPENPLACE_COOLDOWN_SECONDS": "1", "OPENPLACE_ACK_TIMEOUT_SECONDS": "1"}
    env = cluster_env(redis_server.url, await postgres.new_database(), **fast)
    c = Cluster(Settings.from_env(env), api=1, realtime=1, env=env)
    await asyncio.to_thread(c.start)
    yield c
    await asyncio.to_thread(c.stop)


async def test_a_bot_on_a_cluster_never_places_twice_what_was_unconfirmed(
    tmp_path: Path, stack: Cluster
) -> None:
    """The persister stops: placements are answered ``unconfirmed`` but are in Redis,
    and land once the persister is back. The bot reads the server's board before it goes
    on, so it never places such a pixel again; the API process restarts too."""
    image = tmp_path / "bar.png"
    rows: list[list[int | None]] = [[10, 11, 12, 13], [13, 12, 11, 10]]
    save_template(image, rows)
    at = (60, 60)
    template = load(image, at, PALETTE)
    bots = Bots(tmp_path, stack.url)
    try:
        bot = await bots.start(image, at, "c", "--once")

        async def placed() -> bool:
            return bot.placed() >= 1

        await eventually(placed, "the bot placed")
        persister = stack.procs["persister"]
        os.kill(persister.pid, signal.SIGSTOP)
        try:

            async def unconfirmed_twice() -> bool:
                return bot.text().count("unconfirmed") >= 2

            # The second try is another pixel: the first is on the server's board already.
            await eventually(unconfirmed_twice, "two placements were unconfirmed")
        finally:
            os.kill(persister.pid, signal.SIGCONT)
        tried = re.findall(r"(\(\d+, \d+\)): unconfirmed", bot.text())
        assert len(tried) == len(set(tried)) == 2, bot.text()
        await asyncio.to_thread(stack.restart, "api1")
        assert await asyncio.wait_for(bot.proc.wait(), DEADLINE) == 0, bot.text()
    finally:
        await bots.close()
    text = bot.text()
    assert "Traceback" not in text and "refused" not in text, text
    records = await history_with_users(stack.url)
    mine = [r for r in records if r.user == bot.user()]
    assert sorted((r.x, r.y) for r in mine) == sorted(
        (at[0] + i, at[1] + j) for j in range(2) for i in range(4)
    ), "each pixel placed once"
    assert_inside_template(mine, template)
    assert_cooldowns_kept(records, 1.0)
