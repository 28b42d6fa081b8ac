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
from openplace.core.placement import BoardSnapshot, PixelInfo, Placement, Run, UserState
from openplace.core.policy import Area, Ban, Policy, Rect
from openplace.core.timeline import LogSlice

# Called with (first_seq, records) for each committed, contiguous run of placements.
Listener = Callable[[int, bytes], None]
# Called with (board_id, head) when the board was replaced (e.g. restored): clients resync.
ResetListener = Callable[[str, int], None]


class Store(Protocol):
    geometry: Geometry

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def place(self, user_id: str, index: int, color: int, address: str) -> Placement:
        """Atomically check the policy and the cooldowns (the user's, the address's),
        assign the next seq and make it durable.

        Returns only once the placement is durable. Raises ``PlacementRefused`` or
        ``CooldownActive`` (nothing changed) or ``StoreUnavailable`` (nothing changed
        unless its ``maybe_placed``).
        """
        ...

    async def write_run(self, user_id: str, changes: list[tuple[int, int]], after: int) -> Run:
        """A moderator's placements ``(index, color)``, as one contiguous run of seqs, with
        no cooldown or policy check; a change to a pixel that anyone placed on after seq
        ``after`` is left out. Returns once the run is durable."""
        ...

    async def apply_policy(self, policy: Policy) -> None:
        """Refuse placements by ``policy`` (or a newer one) from now on, in every process."""
        ...

    @property
    def policy(self) -> Policy:
        """The policy this process holds now (in distributed mode, up to a second old)."""
        ...

    async def current_policy(self) -> Policy:
        """The policy in force now, in every process (checked against Redis)."""
        ...

    async def admit_session(self, user_id: str, address: str) -> float | None:
        """Count a new session from ``address`` against the per-address caps: ``None``
        if admitted, else the seconds until one would be."""
        ...

    async def board(self) -> BoardSnapshot: ...
    async def pixel(self, index: int) -> PixelInfo: ...
    async def user(self, user_id: str, address: str) -> UserState: ...


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

    async def undo_plan(
        self, users: list[str], after: int, rect: Rect | None
    ) -> tuple[int, list[tuple[int, int]], int]:
        """What undoing ``users``' placements after seq ``after`` (inside ``rect``) takes:
        ``(head, changes, undone)``, the changes ``(index, color)`` that make the board
        as of the committed ``head`` what it would be without those placements, and how
        many placements they undo. Read in one consistent view of the log."""
        ...


class Moderation(Protocol):
    """What moderation keeps durably: revoked moderators, the audit log, the policy
    (bans, protected areas, the frozen flag) and the sessions' addresses. Each change of
    the policy increments its version in the same transaction."""

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

    async def policy(self) -> Policy:
        """The current policy: version, frozen flag, protected areas, unexpired bans."""
        ...

    async def ban(self, ban: Ban) -> Policy:
        """Ban (or re-ban, replacing reason and expiry) a user or a network."""
        ...

    async def unban(self, kind: str, subject: str) -> tuple[bool, Policy]:
        """Lift a ban; ``False`` if there was none."""
        ...

    async def protect(self, rect: Rect, by: str, at: float) -> tuple[Area, Policy]: ...

    async def unprotect(self, area_id: int) -> tuple[bool, Policy]: ...

    async def freeze(self, frozen: bool) -> Policy: ...

    async def record_session(self, user_id: str, address: str, at: float) -> None:
        """Remember the address a session was made from (rollbacks by address)."""
        ...

    async def session_users(self, network: str) -> list[str]:
        """The users whose sessions were made from an address in ``network`` (CIDR)."""
        ...
