"""Placements and the facts the API reports about pixels and users."""

from __future__ import annotations

from dataclasses import dataclass

from openplace.core.policy import Refusal


@dataclass(frozen=True, slots=True)
class Placement:
    """An accepted placement: the ``seq``-th change to the board."""

    seq: int
    index: int
    color: int
    user_id: str
    ts: float  # unix seconds


@dataclass(frozen=True, slots=True)
class PixelInfo:
    """Who last placed a pixel, and when (all ``None`` for a never-placed pixel)."""

    index: int
    color: int
    user_id: str | None = None
    ts: float | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    last_placed: float | None
    next_at: float | None  # None: may place now


@dataclass(frozen=True, slots=True)
class BoardSnapshot:
    """Packed board bytes and the seq of the last placement they contain."""

    data: bytes
    seq: int
    board_id: str  # changes when the board is recreated or restored (resync)


@dataclass(frozen=True, slots=True)
class Run:
    """A moderator's contiguous run of placements: seqs ``first .. first+count-1``."""

    first: int | None  # None: nothing to write
    count: int
    skipped: int = 0  # changes left out: someone placed on the pixel meanwhile

    @property
    def last(self) -> int | None:
        return None if self.first is None else self.first + self.count - 1


class StaleRun(Exception):
    """A moderator's run could not be checked against what was placed after the seq it
    was planned at (no longer held where the store can see it): plan it again."""


class PlacementRefused(Exception):
    """The policy refuses this placement (frozen, banned, protected); nothing changed."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class CooldownActive(Exception):
    """The user placed too recently."""

    def __init__(self, next_at: float, now: float) -> None:
        super().__init__(f"cooldown until {next_at}")
        self.next_at = next_at
        self.retry_after = max(0.0, next_at - now)


class StoreUnavailable(Exception):
    """The store could not confirm a placement durable.

    Nothing changed, unless ``maybe_placed``: then it was accepted but not confirmed in
    time, and may yet appear (the user's cooldown has started).
    """

    def __init__(self, message: str, *, maybe_placed: bool = False) -> None:
        super().__init__(message)
        self.maybe_placed = maybe_placed


def next_allowed(cooldown: float, now: float, *last_placed: float | None) -> float | None:
    """When someone whose cooldowns began at ``last_placed`` (a user's last placement, an
    address's; ``None``: not counted) may place again (``None``: now)."""
    end = None
    for last in last_placed:
        if last is not None and last + cooldown > now and (end is None or last + cooldown > end):
            end = last + cooldown
    return end
