"""Liveness and readiness, the same shape in every role.

``GET /livez`` answers 200 while the process runs its event loop. ``GET /readyz``
answers 200 only when the process can serve: its dependencies answer and it holds a
current board. Otherwise 503, with what is not ready::

    {"status": "ready"}
    {"status": "not ready", "not_ready": {"redis": "ConnectionError: ...", "board": "..."}}

What "ready" means per role is the role's: a store or feed that has more to check than
reading the board implements :class:`Checked`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol, runtime_checkable

import orjson

from openplace.observe import metrics

Problems = dict[str, str]

# How long one dependency may take to answer a check.
CHECK_TIMEOUT = 2.0

LIVE = orjson.dumps({"status": "live"})


class Drain:
    """Whether the process is stopping: it finishes what is in progress and is not ready
    (an HTTP server answers still, closing every connection after its answer, so that a
    proxy moves to the other servers: ``api/server.py: DrainingServer``)."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time the drain began

    @property
    def active(self) -> bool:
        return self.since is not None


@runtime_checkable
class Checked(Protocol):
    """A store or feed that can tell what keeps it from serving."""

    async def health(self) -> Problems:
        """What is not ready, by name (empty: ready)."""
        ...


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g} s"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def check(name: str, waiting: Awaitable[object], problems: Problems,
                timeout: float = CHECK_TIMEOUT) -> bool:  # fmt: skip
    """Await ``waiting`` within ``timeout``; on failure, record it under ``name``."""
    try:
        await asyncio.wait_for(waiting, timeout)
    except Exception as exc:
        problems[name] = describe(exc)
        return False
    return True


async def dependency(name: str, waiting: Awaitable[object], problems: Problems) -> bool:
    """:func:`check` of a server (``redis``, ``postgresql``), reported as a metric too."""
    up = await check(name, waiting, problems)
    metrics.dependency(name, up)
    return up


def record(problems: Problems) -> None:
    """Readiness as the ``openplace_ready`` gauge."""
    metrics.READY.set(0 if problems else 1)


def answer(problems: Problems) -> tuple[int, bytes]:
    """The status and JSON body of ``/readyz`` (and the ``openplace_ready`` gauge)."""
    record(problems)
    if problems:
        return 503, orjson.dumps({"status": "not ready", "not_ready": problems})
    return 200, orjson.dumps({"status": "ready"})
