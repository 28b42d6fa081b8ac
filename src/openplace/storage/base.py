"""The storage interface every backend implements.

The API side uses :class:`Store`; the realtime fan-out reads committed placements
through :class:`Feed`. The embedded backend is both in one object; in distributed
mode the API processes hold a store and the realtime processes a feed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from openplace.core.audit import AuditEntry
from openplace.core.board import Geometry
from openplace.core.placement import BoardSnapshot, PixelInfo, Placement, UserState
from openplace.core.timeline import LogSlice

# Called with (first_seq, records) for each committed, contiguous run of placements.
Listener = Callable[[int, bytes], None]
# Called with (board_id, head) when the board was replaced (e.g. restored): clients resync.
ResetListener = Callable[[str, int], None]


class Store(Protocol):
    geometry: Geometry

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def place(self, user_id: str, index: int, color: int) -> Placement:
        """Atomically check the cooldown, assign the next seq and make it durable.

        Returns only once the placement is durable. Raises ``CooldownActive`` (nothing
        changed) or ``StoreUnavailable`` (nothing changed unless its ``maybe_placed``).
        """
        ...

    async def board(self) -> BoardSnapshot: ...
    async def pixel(self, index: int) -> PixelInfo: ...
    async def user(self, user_id: str) -> UserState: ...


class Feed(Protocol):
    """Committed placements, in seq order, for the realtime fan-out."""

    @property
    def board_id(self) -> str:
        """The board the placements belong to; a new one after a restore."""
        ...

    async def head(self) -> int:
        """Seq of the newest committed placement (0 if none)."""
        ...

    async def records(self, after: int, upto: int) -> bytes:
        """Encoded records for ``after+1 .. upto``; ``TooOld`` if not held."""
        ...

    async def refresh(self) -> None:
        """Catch up with the source now (e.g. a client showed a newer board id)."""
        ...

    def listen(self, listener: Listener, on_reset: ResetListener) -> Callable[[], None]:
        """Call ``listener`` for each new committed run, contiguous and in order, and
        ``on_reset`` when the board is replaced. Returns an unsubscribe."""
        ...


class Archive(Protocol):
    """The durable history: every committed placement and the keyframes, read-only.
    :mod:`openplace.history` builds boards, pictures and timelapses from it."""

    geometry: Geometry

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def committed(self) -> tuple[int, float | None]:
        """Seq and time of the newest durable placement (``(0, None)`` if none)."""
        ...

    async def keyframe_seqs(self) -> list[int]:
        """The seqs of all keyframes, in order."""
        ...

    async def keyframe(self, seq: int) -> tuple[int, bytes] | None:
        """The newest keyframe at or before ``seq``: ``(its seq, packed board)``, or
        ``None`` if there is none (start from the empty board at seq 0)."""
        ...

    async def log(self, after: int, upto: int, *, times: bool = False) -> LogSlice:
        """The placements ``after+1 .. upto`` (all of them: the log has no gaps)."""
        ...

    async def seq_at(self, ts: float) -> int:
        """The newest seq placed at or before unix time ``ts`` (0 if none)."""
        ...

    async def pixel_history(self, index: int, limit: int) -> list[PixelInfo]:
        """The newest ``limit`` placements on pixel ``index``, newest first."""
        ...


class Moderation(Protocol):
    """What moderation keeps durably: revoked moderators and the audit log. Read on
    every admin request, by every process (no cache: admin requests are few)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def revoked_at(self, name: str) -> float | None:
        """When moderator ``name``'s tokens were last revoked (``None``: never)."""
        ...

    async def revoke(self, name: str, at: float) -> None:
        """Refuse every token of ``name`` issued at or before ``at``."""
        ...

    async def record(self, entry: AuditEntry) -> int:
        """Store an admin action; returns its id."""
        ...

    async def audit(self, before: int | None, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries with an id below ``before``, newest first."""
        ...
