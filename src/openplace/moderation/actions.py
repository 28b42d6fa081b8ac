"""What moderators do: each action changes the canvas or its policy through the store,
and is recorded in the audit log with its effect.

The admin API (:mod:`openplace.api.admin`) validates a request and calls one of these;
``openplace admin`` calls the admin API. An action that writes pixels (rollback, fill)
writes them as placements by ``mod:<name>``, one contiguous run of seqs, so every client
sees it live and the history holds it like any other placement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from openplace.core.audit import AuditEntry
from openplace.core.placement import Run, StaleRun
from openplace.core.policy import Ban, Policy, Rect
from openplace.core.timeline import unpack
from openplace.storage.base import Archive, Moderation, Store

PLAN_ATTEMPTS = 3


class TooManyPixels(ValueError):
    """An action would write more pixels than ``admin_max_pixels`` allows."""


@dataclass(frozen=True, slots=True)
class Moderators:
    """What the actions work on, and the limit on pixels one action may write."""

    store: Store
    archive: Archive
    moderation: Moderation
    max_pixels: int

    async def _audit(self, actor: str, action: str, args: dict[str, Any],
                     effect: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        entry_id = await self.moderation.record(
            AuditEntry(time.time(), actor, action, args, effect)
        )
        return {"audit_id": entry_id, **effect}

    async def _policy(self, policy: Policy) -> None:
        await self.store.apply_policy(policy)

    # -- bans ----------------------------------------------------------------------

    async def ban(self, actor: str, ban: Ban) -> dict[str, Any]:
        await self._policy(await self.moderation.ban(ban))
        args = {"kind": ban.kind, "subject": ban.subject, "reason": ban.reason,
                "expires_at": ban.expires_at}  # fmt: skip
        key = "users_banned" if ban.kind == "user" else "networks_banned"
        return await self._audit(actor, "ban", args, {key: [ban.subject]})

    async def unban(self, actor: str, kind: str, subject: str) -> dict[str, Any]:
        removed, policy = await self.moderation.unban(kind, subject)
        await self._policy(policy)
        args = {"kind": kind, "subject": subject}
        return await self._audit(actor, "unban", args, {"removed": removed})

    # -- pixels --------------------------------------------------------------------

    async def rollback(
        self, actor: str, users: list[str], network: str | None, since: float, rect: Rect | None
    ) -> dict[str, Any]:
        """Undo ``users``' placements (and those of sessions made from ``network``) made
        after ``since``, inside ``rect`` if given."""
        targets = sorted(set(users) | set(await self._network_users(network)))
        after = await self.archive.seq_at(since)
        undone, run = 0, Run(None, 0)
        for attempt in range(PLAN_ATTEMPTS):
            head, changes, undone = await self.archive.undo_plan(targets, after, rect)
            self._check_size(len(changes))
            try:
                run = await self.store.write_run(_author(actor), changes, head)
                break
            except StaleRun:
                if attempt == PLAN_ATTEMPTS - 1:
                    raise
        args = {"users": users, "network": network, "since": since, "rect": _rect_args(rect)}
        effect = _run_effect(run) | {"placements_undone": undone, "users": len(targets)}
        return await self._audit(actor, "rollback", args, effect)

    async def fill(self, actor: str, rect: Rect, color: int) -> dict[str, Any]:
        """Set every pixel of ``rect`` to ``color`` (those placed on meanwhile excepted)."""
        self._check_size(rect.pixels)
        geometry = self.store.geometry
        for attempt in range(PLAN_ATTEMPTS):
            board = await self.store.board()
            area = unpack(board.data, geometry)[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]
            ys, xs = np.nonzero(area != color)
            indexes = (ys + rect.y) * geometry.width + (xs + rect.x)
            changes = [(int(i), color) for i in indexes]
            try:
                run = await self.store.write_run(_author(actor), changes, board.seq)
                break
            except StaleRun:
                if attempt == PLAN_ATTEMPTS - 1:
                    raise
        args = {"rect": _rect_args(rect), "color": color}
        return await self._audit(actor, "fill", args, _run_effect(run))

    # -- areas and the canvas ------------------------------------------------------

    async def protect(self, actor: str, rect: Rect) -> dict[str, Any]:
        area, policy = await self.moderation.protect(rect, actor, time.time())
        await self._policy(policy)
        return await self._audit(actor, "protect", {"rect": _rect_args(rect)},
                                 {"area": area.public()})  # fmt: skip

    async def unprotect(self, actor: str, area_id: int) -> dict[str, Any]:
        removed, policy = await self.moderation.unprotect(area_id)
        await self._policy(policy)
        return await self._audit(actor, "unprotect", {"id": area_id}, {"removed": removed})

    async def freeze(self, actor: str, frozen: bool) -> dict[str, Any]:
        await self._policy(await self.moderation.freeze(frozen))
        return await self._audit(actor, "freeze" if frozen else "unfreeze", {},
                                 {"frozen": frozen})  # fmt: skip

    # -- helpers -------------------------------------------------------------------

    async def _network_users(self, network: str | None) -> list[str]:
        return [] if network is None else await self.moderation.session_users(network)

    def _check_size(self, pixels: int) -> None:
        if pixels > self.max_pixels:
            raise TooManyPixels(
                f"this would write {pixels} pixels; one action may write at most "
                f"{self.max_pixels} (OPENPLACE_ADMIN_MAX_PIXELS): split it"
            )


def _author(actor: str) -> str:
    """The user id a moderator's placements are made by."""
    return f"mod:{actor}"


def _rect_args(rect: Rect | None) -> dict[str, int] | None:
    return None if rect is None else {"x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h}


def _run_effect(run: Run) -> dict[str, Any]:
    return {"first_seq": run.first, "last_seq": run.last, "pixels_changed": run.count,
            "pixels_left": run.skipped}  # fmt: skip
