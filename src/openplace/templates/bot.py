"""``openplace draw``: a bot that keeps a template on the board by the rules.

One user (its token kept in a file, so a restarted bot is the same user and its
cooldown still binds it), one placement per cooldown, the most damaged pixel first
(:func:`~openplace.templates.model.priorities`, ties spread by the user id), every
refusal obeyed. It reads the board from a :class:`~openplace.client.LiveBoard` and
places with an :class:`~openplace.client.AsyncCanvas`; see ``docs/client.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx

from openplace.client import (
    AsyncCanvas,
    Banned,
    CanvasError,
    Cooldown,
    Frozen,
    InvalidRequest,
    LiveBoard,
    Me,
    Placement,
    Policy,
    Protected,
    RateLimited,
    Snapshot,
    Unauthorized,
    Unavailable,
    Unconfirmed,
)
from openplace.client.live import RETRYABLE
from openplace.client.live import backoff as jittered
from openplace.templates.model import Fix, Template, TemplateError, diff, load, priorities

T = TypeVar("T")

MARGIN = 0.05  # seconds placed after next_at: the server sends times to the millisecond
FLOOR = 1.0  # the least wait after a 503 or a 429 rate_limited
BACKOFF = (0.5, 10.0)  # connection errors: 0.5 s doubling up to 10 s, with jitter
RECHECK = 30.0  # a complete template is re-read this often anyway (a resync reports no placements)
POLICY_WAIT = 5.0  # while frozen, the policy is asked again this often
CAUGHT_UP = 5.0  # after a placement, how long to wait for the live board to show it
EXIT_DONE, EXIT_STUCK, EXIT_USAGE = 0, 1, 2


class Exit(Exception):
    """Stop the bot: ``message`` goes to stderr, ``code`` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def say(message: str) -> None:
    """One line of progress on stdout, with the local time."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def default_token_file(image: Path) -> Path:
    """Where the token of a bot drawing ``image`` is kept by default: next to it."""
    return image.with_name(image.name + ".token")


def read_token(path: Path) -> str | None:
    """The token kept in ``path``; ``None`` if there is no such file."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Exit(EXIT_USAGE, f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise Exit(EXIT_USAGE, f"the token file {path} is empty: delete it to draw as a new user")
    return token


def write_token(path: Path, token: str) -> None:
    """Keep ``token`` in ``path``, readable by its owner only (0600), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def seed_of(user_id: str) -> int:
    """A stable seed from a user id: two bots on one template pick different pixels."""
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big")


def backoff(attempt: int) -> float:
    """The wait before retry ``attempt`` (0, 1, ...) after a connection error: the live
    board's, so bots that lost one server do not all come back in the same instant."""
    return jittered(attempt, *BACKOFF)


def transient(exc: BaseException) -> bool:
    """A failure worth retrying: the server is down, restarting or busy."""
    if isinstance(exc, httpx.HTTPError | OSError | Unavailable | RateLimited):
        return True
    return isinstance(exc, CanvasError) and (exc.status >= 500 or exc.status == 408)


def describe(exc: BaseException) -> str:
    """A short name for a failure, for a progress line."""
    if isinstance(exc, CanvasError):
        return f"{exc.status} {exc.code}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def clock(seconds: float) -> str:
    """The local time ``seconds`` from now."""
    return (datetime.now() + timedelta(seconds=seconds)).strftime("%H:%M:%S")


class Bot:
    """The draw loop: see the module's docstring. :meth:`run` returns the exit status
    (with ``once``, when the template is complete) or raises :class:`Exit`."""

    def __init__(
        self,
        url: str,
        image: Path,
        at: tuple[int, int],
        token_file: Path,
        *,
        once: bool = False,
        out: Callable[[str], None] = say,
    ) -> None:
        self.url = url
        self.image = image
        self.at = at
        self.token_file = token_file
        self.once = once
        self.say = out
        self.policy = Policy(False)
        self.refused: set[tuple[int, int]] = set()  # answered 403 protected under this policy
        self.ready: float | None = None  # when this user may place (monotonic; None: now)
        self.skew = 0.0  # the server's clock minus ours, as a cooldown refusal showed it
        self.cooldown_known = False  # False after an answer that may hide a placement
        self.uncertain = False  # a placement may have landed unseen: read the server's board
        self.ahead: Snapshot | None = None  # that board, until the live board catches up
        self.frozen_said = False  # the server said frozen: wait for the policy to say so too
        self.failures = 0
        self.seed = 0
        self.placed = 0
        self._live_policy: Policy | None = None
        self._reconnects = 0
        self._resyncs = 0

    # -- start --------------------------------------------------------------------------

    async def run(self) -> int:
        if not self.image.is_file():
            raise Exit(EXIT_USAGE, f"no such image: {self.image}")
        token = read_token(self.token_file)
        async with AsyncCanvas(self.url, token=token) as canvas:
            info = await self._retry("reading the canvas", canvas.info)
            try:
                template = load(self.image, self.at, info.palette, board=(info.width, info.height))
            except TemplateError as exc:
                raise Exit(EXIT_USAGE, f"{self.image}: {exc}") from None
            me = await self._identify(canvas, token)
            self.seed = seed_of(me.user_id)
            self._wait_until(me.next_at)
            self.policy = await self._retry("reading the policy", canvas.policy)
            live = await self._retry(
                "connecting to the live board", self._open_live, lambda e: isinstance(e, RETRYABLE)
            )
            try:
                self._summary(template, live, me)
                return await self._loop(canvas, live, template)
            finally:
                await live.aclose()

    async def _identify(self, canvas: AsyncCanvas, token: str | None) -> Me:
        """This bot's user: the kept token's, or a new session kept in the token file."""
        if token is None:
            session = await self._retry("making a session", canvas.session)
            try:
                write_token(self.token_file, session.token)
            except OSError as exc:
                raise Exit(
                    EXIT_USAGE,
                    f"cannot keep the token in {self.token_file} ({exc}): "
                    "choose another file with --token-file",
                ) from None
            self.say(f"new user {session.user_id}; its token is kept in {self.token_file}")
        return await self._me(canvas)

    async def _me(self, canvas: AsyncCanvas) -> Me:
        try:
            return await self._retry("reading this user", canvas.me)
        except Unauthorized:
            raise Exit(
                EXIT_STUCK,
                f"the canvas refused the token in {self.token_file} (its secret "
                "changed, or the token is another canvas's): delete the file to draw as a new "
                "user, or give another with --token-file",
            ) from None

    async def _open_live(self) -> LiveBoard:
        live = LiveBoard(self.url)
        await live.start()  # closes itself if it fails
        return live

    async def _retry(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        retryable: Callable[[Exception], bool] = transient,
    ) -> T:
        """``call()`` until it does not fail for a ``retryable`` reason, with backoff."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                if not retryable(exc):
                    raise
                wait = backoff(attempt)
                if isinstance(exc, Unavailable | RateLimited):
                    wait = max(wait, exc.retry_after, FLOOR)
                attempt += 1
                self.say(f"{what}: {describe(exc)}; retrying in {wait:.1f} s")
                await asyncio.sleep(wait)

    def _summary(self, template: Template, live: LiveBoard, me: Me) -> None:
        d = diff(template, live.colors)
        t = template
        off = (
            f" ({t.off_palette} not palette colours: drawn as the nearest)" if t.off_palette else ""
        )
        self.say(
            f"{self.image.name}: {t.width}x{t.height} at {t.x},{t.y}, {t.wanted} pixels set{off}"
        )
        done = 100.0 * d.correct / t.wanted if t.wanted else 100.0
        blocked = sum(1 for x, y, _, _ in d.pixels() if not self._may_place(x, y))
        note = f", {blocked} of them where placing is refused (skipped)" if blocked else ""
        self.say(
            f"board at #{live.seq}: {d.correct} right, {d.wrong} wrong ({done:.1f}% done){note}"
        )
        self.say(f"drawing as {me.user_id} (token in {self.token_file})")

    # -- the loop -----------------------------------------------------------------------

    async def _loop(self, canvas: AsyncCanvas, live: LiveBoard, template: Template) -> int:
        area = (template.x, template.y, template.x + template.width, template.y + template.height)
        touched = asyncio.Event()

        def watch(p: Placement) -> None:
            if area[0] <= p.x < area[2] and area[1] <= p.y < area[3]:
                touched.set()

        live.on_placement(watch)
        live.on_policy(lambda _: touched.set())  # a lifted area may be placed at once
        idle = ""  # why the bot waits with nothing to place: "pending", "refused", "complete"
        while True:
            await self._follow(canvas, live)
            if self.policy.frozen or self.frozen_said:
                await self._wait_unfrozen(canvas, live)
                continue
            if self.uncertain:  # a placement may have landed: the server's board may show it
                fresh = await self._retry("reading the board", lambda: canvas.board(fresh=True))
                self.ahead = fresh
                self.uncertain = False
            touched.clear()  # from here the board is read without awaiting: nothing is missed
            fixes, refused, pending = self._plan(template, live)
            if not fixes:
                if pending:
                    why, state = "pending", f"{pending} pixels placed but not shown yet: waiting"
                elif refused:
                    why, state = "refused", f"{refused} pixels left, all where placing is refused"
                else:
                    why, state = "complete", f"template complete at #{live.seq}"
                if self.once and why != "pending":
                    self.say(f"{state} ({self.placed} placed by this bot): stopping")
                    return EXIT_STUCK if refused else EXIT_DONE
                if why != idle:
                    self.say(state if pending else f"{state}; waiting for a placement in its area")
                    idle = why
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK):
                        await touched.wait()
                continue
            if idle:
                self.say(f"damaged: {len(fixes)} pixels to fix")
                idle = ""
            if not self.cooldown_known:
                self._wait_until((await self._me(canvas)).next_at)
            if self.ready is not None:
                wait = self.ready - time.monotonic() + MARGIN
                self.ready = None
                if wait > 0:
                    self.say(
                        f"cooldown: {len(fixes)} to fix, next placement at {clock(wait)} "
                        f"(in {wait:.1f} s)"
                    )
                    await asyncio.sleep(wait)
                    continue  # read the board again: it changed while we waited
            if not live.connected:
                await self._wait_connected(live)
                continue
            await self._place(canvas, live, template, fixes[0])

    def _seconds_to(self, when: datetime) -> float:
        """Seconds until the server's time ``when``, by our clock corrected by the skew."""
        return (when - datetime.now(UTC)).total_seconds() - self.skew

    def _wait_until(self, next_at: datetime | None) -> None:
        """This user may place at ``next_at`` (the server's time; ``None``: now)."""
        self.cooldown_known = True
        self.ready = None if next_at is None else time.monotonic() + self._seconds_to(next_at)

    def _plan(self, template: Template, live: LiveBoard) -> tuple[list[Fix], int, int]:
        """The pixels to fix, most damaged first; how many wrong pixels are refused by the
        policy; how many the server's board shows done but the live board not yet."""
        ahead = self.ahead
        if ahead is not None and (live.board_id != ahead.board_id or live.seq >= ahead.seq):
            self.ahead = ahead = None  # the live board caught up (or was replaced)
        fixes: list[Fix] = []
        refused = pending = 0
        for fix in priorities(template, live.colors, seed=self.seed):
            if ahead is not None and ahead[fix.x, fix.y] == fix.want:
                pending += 1
            elif not self._may_place(fix.x, fix.y):
                refused += 1
            else:
                fixes.append(fix)
        return fixes, refused, pending

    def _may_place(self, x: int, y: int) -> bool:
        return (x, y) not in self.refused and not any((x, y) in a for a in self.policy.protected)

    async def _follow(self, canvas: AsyncCanvas, live: LiveBoard) -> None:
        """Take up the live board's policy; after it reconnected, ask for the policy (a
        server with no policy sends none, so a lifted one would go unnoticed)."""
        if live.policy is not None and live.policy is not self._live_policy:
            self._live_policy = live.policy
            self._set_policy(live.policy)
        if live.reconnects != self._reconnects or live.resyncs != self._resyncs:
            self.say(f"live board back at #{live.seq}")
            self._reconnects, self._resyncs = live.reconnects, live.resyncs
            await self._fetch_policy(canvas)

    async def _fetch_policy(self, canvas: AsyncCanvas) -> None:
        try:
            self._set_policy(await canvas.policy())
        except Exception as exc:
            if not transient(exc):
                raise
            self.say(f"reading the policy: {describe(exc)}; keeping the one known")

    def _set_policy(self, policy: Policy) -> None:
        if policy == self.policy:
            return
        self.refused.clear()  # a new policy: what it refused may be allowed now
        if not policy.frozen:
            self.frozen_said = False
        areas = len(policy.protected)
        self.say(f"policy: {'frozen' if policy.frozen else 'not frozen'}, {areas} protected areas")
        self.policy = policy

    async def _wait_unfrozen(self, canvas: AsyncCanvas, live: LiveBoard) -> None:
        self.say(f"the canvas is frozen: asking again every {POLICY_WAIT:.0f} s")
        while self.policy.frozen or self.frozen_said:
            seen = live.policy
            deadline = time.monotonic() + POLICY_WAIT
            while live.policy is seen and time.monotonic() < deadline:
                await asyncio.sleep(0.25)  # a local check: the live board tells of a change
            self.frozen_said = False
            await self._fetch_policy(canvas)
            await self._follow(canvas, live)
        self.say("the canvas is not frozen any more")

    async def _wait_connected(self, live: LiveBoard) -> None:
        self.say("waiting for the live board to reconnect")
        while not live.connected:
            if live.closed:
                raise Exit(EXIT_STUCK, "the live board stopped")
            await asyncio.sleep(0.2)  # a local check: LiveBoard reconnects by itself

    async def _place(
        self, canvas: AsyncCanvas, live: LiveBoard, template: Template, fix: Fix
    ) -> None:
        x, y, want = fix.x, fix.y, fix.want
        where = f"({x}, {y})"
        try:
            placed = await canvas.place(x, y, want)
        except Cooldown as e:
            if e.next_at is not None:  # early by our clock: learn by how much
                self.skew = (e.next_at - datetime.now(UTC)).total_seconds() - e.retry_after
            self.ready = time.monotonic() + e.retry_after
            self.say(f"{where}: refused, cooldown for {e.retry_after:.1f} s more")
        except Unconfirmed as e:  # it may still land: read the board and the cooldown again
            self.cooldown_known, self.uncertain = False, True
            wait = max(e.retry_after, FLOOR)
            self.say(f"{where}: unconfirmed, it may still appear; looking again in {wait:.1f} s")
            await asyncio.sleep(wait)
        except (Unavailable, RateLimited) as e:
            wait = max(e.retry_after, FLOOR, backoff(self.failures))
            self.failures += 1
            self.say(f"{where}: {describe(e)}, nothing placed; retrying in {wait:.1f} s")
            await asyncio.sleep(wait)
        except Protected:
            self.say(f"{where}: protected, skipped")
            await self._fetch_policy(canvas)  # a new policy forgets the pixels refused before
            self.refused.add((x, y))  # skipped until the policy changes, whatever it says
        except Frozen:
            self.frozen_said = True
            self.say(f"{where}: refused, the canvas is frozen")
            await self._fetch_policy(canvas)
        except Banned as e:
            reason = e.reason or "no reason given"
            if e.expires_at is None:
                raise Exit(EXIT_STUCK, f"this user is banned ({reason}), until lifted") from None
            wait = max(self._seconds_to(e.expires_at) + MARGIN, FLOOR)
            self.say(f"banned ({reason}) until {e.expires_at:%Y-%m-%d %H:%M:%S} UTC: waiting")
            await asyncio.sleep(wait)
        except Unauthorized:
            raise Exit(
                EXIT_STUCK,
                f"the canvas no longer accepts the token in {self.token_file} (its "
                "secret changed?): delete the file to draw as a new user",
            ) from None
        except InvalidRequest as e:
            raise Exit(EXIT_STUCK, f"{where} colour {want} refused: {e}") from None
        except (httpx.HTTPError, OSError, CanvasError) as e:
            self.cooldown_known, self.uncertain = False, True  # it may have been placed
            wait = backoff(self.failures)
            self.failures += 1
            self.say(f"{where}: {describe(e)}; retrying in {wait:.1f} s")
            await asyncio.sleep(wait)
        else:
            self.failures = 0
            self.placed += 1
            self._wait_until(placed.next_at)
            with contextlib.suppress(TimeoutError):
                await live.wait_for(placed.seq, timeout=CAUGHT_UP)
            left = diff(template, live.colors).wrong
            self.say(f"placed {where} colour {want} over {fix.have} as #{placed.seq} "
                     f"(damage {fix.damage}); {left} wrong left")  # fmt: skip


async def draw(bot: Bot) -> int:
    """Run ``bot`` until it is done, fails, or gets SIGINT/SIGTERM (then exit 0)."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(bot.run())
    signals: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        signals.append(sig)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if not signals:
            raise
        bot.say(f"stopped ({signals[0].name}) after {bot.placed} placements")
        return EXIT_DONE
    except Exit as e:
        print(f"openplace draw: {e.message}", file=sys.stderr, flush=True)
        return e.code
    except CanvasError as e:  # an answer the bot has no rule for
        print(f"openplace draw: the canvas answered {e}", file=sys.stderr, flush=True)
        return EXIT_STUCK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
