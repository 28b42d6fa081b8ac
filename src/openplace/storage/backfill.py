"""Keyframes for a history from before they were kept (only the newest snapshots were):
written from the log, oldest first, each from the one before, so every step reads at
most ``every`` log rows. Both backends run it in the background after opening."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from openplace.core.timeline import board_at, encode_keyframe
from openplace.storage.base import Archive
from openplace.storage.durability import keyframes_missing

log = logging.getLogger(__name__)

WriteKeyframe = Callable[[int, bytes], Awaitable[None]]


async def backfill_keyframes(
    archive: Archive, have: list[int], head: int, every: int, write: WriteKeyframe
) -> int:
    """Write the missing keyframes of ``0..head`` (``write(seq, encoded frame)``);
    returns how many were written."""
    targets = keyframes_missing(have, head, every)
    if targets:
        log.info("writing %d keyframes for the history before seq %d", len(targets), head)
    for done, target in enumerate(targets, start=1):
        keyframe = await archive.keyframe(target)
        base = keyframe[0] if keyframe is not None else 0
        piece = await archive.log(base, target)
        piece.check(target)
        await write(target, encode_keyframe(board_at(archive.geometry, keyframe, piece)))
        if done % 40 == 0 or done == len(targets):
            log.info("keyframes written: %d of %d", done, len(targets))
    return len(targets)
